"""Command line: ``polaropt`` (also ``python -m polaropt``): ``list``, ``run``, ``reproduce``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__

DEFAULT_OUT = "results"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polaropt",
        description="Polar (scale × direction) weights for PyTorch, and a suite that reproduces the sources' claims.",
    )
    parser.add_argument("--version", action="version", version=f"polaropt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("list", help="list the experiments, one line each")
    run = sub.add_parser("run", help="run one experiment into OUT/NAME/")
    run.add_argument("name", help="an experiment name (see `polaropt list`)")
    run.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config field (repeatable); lists are comma-separated")
    run.add_argument("--seeds", type=int, default=None, help="number of seeds (experiments that have seeds)")
    run.add_argument("--quick", action="store_true", help="reduced settings, for tests")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    rep = sub.add_parser("reproduce", help="run every experiment, then OUT/index.md and OUT/index.html")
    rep.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    rep.add_argument("--quick", action="store_true", help="reduced settings, for tests")
    rep.add_argument("--resume", action="store_true", help="skip experiments already finished in OUT with the same config")
    rep.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from .experiments import EXPERIMENTS, get_experiment, make_config, reproduce, run_experiment
    from .experiments.framework import parse_set

    if args.command == "list":
        width = max(map(len, EXPERIMENTS))
        for name, exp in EXPERIMENTS.items():
            print(f"{name:<{width}}  {exp.description}")
        return 0
    if args.command == "run":
        try:  # only the user's input is refused here; an error inside a run is a bug and keeps its traceback
            exp = get_experiment(args.name)
            config = make_config(exp, quick=args.quick, seeds=args.seeds, overrides=parse_set(args.overrides))
        except ValueError as e:
            parser.exit(2, f"polaropt: error: {e}\n")
        out = run_experiment(exp, config, Path(args.out), quick=args.quick, quiet=args.quiet)
        claims = json.loads((out / "claims.json").read_text())
        for c in claims:
            print(f"{'reproduced    ' if c['passed'] else 'NOT reproduced'}  {c['id']}: {c['measured']}")
        print(f"{sum(c['passed'] for c in claims)}/{len(claims)} claims reproduced; report: {out / 'report.md'}")
        return 0
    log = (lambda *a, **k: None) if args.quiet else (lambda *a, **k: print(*a, **k, file=sys.stderr))
    index = reproduce(Path(args.out), quick=args.quick, resume=args.resume, quiet=args.quiet, log=log)
    print(index.read_text().split("\n## All claims")[0])
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
