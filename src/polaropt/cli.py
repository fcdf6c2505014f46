"""Command line: ``polaropt`` (also ``python -m polaropt``): ``list``, ``run``, ``reproduce``, ``report``."""

from __future__ import annotations

import argparse
import json
import os
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
    run = sub.add_parser("run", help="run one experiment into OUT/NAME/ (`polaropt run NAME --help` lists its config)",
                         add_help=False)
    run.add_argument("name", nargs="?", help="an experiment name (see `polaropt list`)")
    run.add_argument("-h", "--help", action="store_true", help="show this help, and NAME's config fields")
    run.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config field (repeatable); lists are comma-separated, e.g. --set seeds=5")
    run.add_argument("--quick", action="store_true", help="reduced settings (the experiment's QUICK config)")
    run.add_argument("--resume", action="store_true",
                     help="skip the run if it finished in OUT with the same config and the same code")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    rep = sub.add_parser("reproduce", help="run every experiment, then OUT/index.md and OUT/index.html")
    rep.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    rep.add_argument("--quick", action="store_true", help="reduced settings, for tests")
    rep.add_argument("--resume", action="store_true",
                     help="skip experiments finished in OUT with the same config and the same code")
    rep.add_argument("--quiet", action="store_true", help="no progress bars")
    bench = sub.add_parser("bench", help="the real-model benchmark: the recipes on every task, each at its own best lr "
                                         "(searched on seeds never reported), compared with tuned AdamW and Muon "
                                         "over paired seeds, into OUT/bench/ (a recommendation per task, tables, "
                                         "figures, claims) and OUT/index.html")
    bench.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    bench.add_argument("--tasks", default=None, metavar="T1,T2",
                       help="comma-separated tasks (default: all of fmnist-mlp, fmnist-cnn, charlm)")
    bench.add_argument("--recipes", default=None, metavar="R1,R2",
                       help="comma-separated recipes (default: the config's; adamw is always added, every "
                            "comparison is against it); `polaropt run bench-charlm --help` lists the valid ones")
    bench.add_argument("--device", default=None, help="torch device for the runs (default: cpu); with cuda, also "
                                                      "--set preset=gpu for the larger sizes")
    bench.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field of every task that has it (repeatable), e.g. --set "
                            "preset=gpu; `polaropt run bench-fmnist-mlp --help` lists them (data_dir: the "
                            "Fashion-MNIST tasks only)")
    bench.add_argument("--quick", action="store_true", help="reduced settings, for tests (about a minute)")
    bench.add_argument("--resume", action="store_true",
                       help="skip tasks finished in OUT with the same config and the same code")
    bench.add_argument("--quiet", action="store_true", help="no progress bars")
    rb = sub.add_parser("report", help="rebuild every claims.json, figure, report.md and the index in DIR from "
                                       "its records alone (no re-running)")
    rb.add_argument("dir", help="an output folder of `polaropt reproduce` or `polaropt run`")
    parser.run_parser = run  # `polaropt run --help` prints it with the experiment's config fields
    return parser


def config_help(exp) -> str:
    """The config fields of ``exp``: name, type, default and meaning, as `polaropt run NAME --help` prints them."""
    from .experiments.framework import field_help

    rows = [(n, t, d if len(d) <= 40 else d[:37] + "...", m) for n, t, d, m in field_help(exp.config)]
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{exp.name}: {exp.description}", "", "config fields (override with --set KEY=VALUE):"]
    lines += [f"  {n:<{w[0]}}  {t:<{w[1]}}  default {d:<{w[2]}}  {m}" for n, t, d, m in rows]
    return "\n".join(lines)


def bench_configs(benchmarks: dict, tasks: list[str] | None, overrides: dict[str, str], quick: bool) -> dict:
    """{experiment name: config} of the benchmark tasks asked for, each validated with ``overrides``."""
    names = {e.name.removeprefix("bench-"): e for e in benchmarks.values()}
    tasks = list(names) if tasks is None else tasks
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"--tasks names a task twice: {','.join(tasks)}; give each once")
    unknown = [t for t in tasks if t not in names]
    if unknown or not tasks:
        raise ValueError(f"unknown task {', '.join(map(repr, unknown)) or '(none given)'}; valid tasks are "
                         f"{', '.join(names)}")
    known = {k for e in names.values() for k in e.config.__dataclass_fields__}
    unknown_keys = [k for k in overrides if k not in known]
    if unknown_keys:
        raise ValueError(f"unknown config key {unknown_keys[0]!r} for the benchmark; valid keys are "
                         f"{', '.join(sorted(known))}")
    out = {}
    for t in tasks:
        exp = names[t]
        # a field only some tasks have (data_dir) is applied to those that have it
        own = {k: v for k, v in overrides.items() if k in exp.config.__dataclass_fields__}
        out[exp.name] = exp.make_config(quick=quick, overrides=own)
    return out


def _check_out(parser, out: str) -> None:
    """Refuse an output folder that is a file or cannot be written, before anything runs."""
    import tempfile

    path = Path(out)
    if path.exists() and not path.is_dir():
        parser.exit(2, f"polaropt: error: --out {out} is a file, not a folder; name a folder (it is created if needed)\n")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        parser.exit(2, f"polaropt: error: cannot write to --out {out}: {e.strerror or e}\n")


def _suite(parser):
    """The experiment registry, or a clear exit when the ``experiments`` extra is not installed."""
    try:
        from .experiments import registry
    except ImportError as e:
        parser.exit(2, f"polaropt: error: {e}\n")
    return registry


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    import torch

    threads = torch.get_num_threads()  # the suite's thread policy below lasts for this command only
    try:
        return _main(parser, args)
    except KeyboardInterrupt:
        # every run folder is written whole or not at all (a partial one is removed), so nothing is half-written
        again = {"run": "run it again (with --resume it is skipped once finished)",
                 "report": "run `polaropt report DIR` again"}.get(
            args.command, f"`polaropt {args.command} --resume` continues with what is left")
        print(f"\npolaropt: interrupted; the finished runs are kept and nothing is half-written: {again}",
              file=sys.stderr)
        return 130
    finally:
        torch.set_num_threads(threads)


def _main(parser, args) -> int:
    registry = _suite(parser)
    experiments, get_experiment = registry.ALL, registry.get_experiment
    suite_run = args.command == "reproduce" or (args.command == "run" and args.name in registry.EXPERIMENTS)
    if suite_run and "OMP_NUM_THREADS" not in os.environ:  # not the benchmark: its step times are measured as set
        # the suite's tensors are small: one thread is as fast on an idle machine and degrades gracefully on a
        # busy one, where threads that wait for each other are what slows a run (docs/benchmarks.md)
        import torch

        torch.set_num_threads(1)
    from .experiments.framework import parse_set
    from .experiments.bench.summary import write_summary
    from .experiments.report import write_index
    from .experiments.runner import reproduce, report, run_experiment

    if args.command == "list":
        width = max(map(len, experiments))
        for title, group in (("reproduction suite (polaropt reproduce)", registry.EXPERIMENTS),
                             ("benchmark (polaropt bench)", registry.BENCHMARKS)):
            print(f"{title}:")
            for name, exp in group.items():
                print(f"  {name:<{width}}  {exp.description}")
        return 0
    if args.command == "run":
        if args.name is None and not args.help:
            parser.run_parser.print_usage(sys.stderr)
            parser.exit(2, f"polaropt run: error: name an experiment; valid choices are {', '.join(experiments)}\n")
        if args.help:
            try:
                text = config_help(get_experiment(args.name)) if args.name else "experiments: " + ", ".join(experiments)
            except ValueError as e:
                parser.exit(2, f"polaropt: error: {e}\n")
            parser.run_parser.print_help()
            print("\n" + text)
            return 0
        try:  # only the user's input is refused here; an error inside a run is a bug and keeps its traceback
            exp = get_experiment(args.name)
            config = exp.make_config(quick=args.quick, overrides=parse_set(args.overrides))
            if exp.name in registry.BENCHMARKS:
                from .experiments.bench.common import require_data

                require_data(exp.name.removeprefix("bench-"), config)
        except (ValueError, FileNotFoundError) as e:  # FileNotFoundError: bench data.DataMissing, naming the install
            parser.exit(2, f"polaropt: error: {e}\n")
        _check_out(parser, args.out)  # after the other checks: a refused command creates no folder
        from .experiments import records

        stale = records.why_stale(Path(args.out) / exp.path, exp, config, args.quick) if args.resume else "no --resume"
        if stale is None:
            out = Path(args.out) / exp.path
            print(f"{exp.name}: finished earlier in {out} with this config and code, skipped (--resume)", file=sys.stderr)
        else:
            if args.resume:
                print(f"{exp.name}: run ({stale})", file=sys.stderr)
            out = run_experiment(exp, config, Path(args.out), quick=args.quick, quiet=args.quiet)
        claims = json.loads((out / "claims.json").read_text())
        for c in claims:
            print(f"{'reproduced    ' if c['passed'] else 'NOT reproduced'}  {c['id']}: {c['measured']}")
        print(f"{sum(c['passed'] for c in claims)}/{len(claims)} claims reproduced; report: {out / 'report.md'}")
        return 0
    quiet = getattr(args, "quiet", False)

    def log(*parts):
        if not quiet:
            print(*parts, file=sys.stderr)

    if args.command == "reproduce":
        _check_out(parser, args.out)
    if args.command == "bench":
        try:
            overrides = parse_set(args.overrides)
            if args.device is not None:
                overrides["device"] = args.device
            if args.recipes is not None:
                chosen = [r.strip() for r in args.recipes.split(",") if r.strip()]
                overrides["recipes"] = ",".join(dict.fromkeys(["adamw", *chosen]))
            tasks = None if args.tasks is None else [t.strip() for t in args.tasks.split(",") if t.strip()]
            configs = bench_configs(registry.BENCHMARKS, tasks, overrides, args.quick)
        except ValueError as e:
            parser.exit(2, f"polaropt: error: {e}\n")
        from .experiments.bench.common import require_data
        from .experiments.bench.data import DataMissing

        try:  # every task's data is read before anything runs: a missing dataset names its install command
            for name, config in configs.items():
                require_data(name.removeprefix("bench-"), config)
        except (DataMissing, ValueError) as e:
            parser.exit(2, f"polaropt: error: {e}\n")
        _check_out(parser, args.out)
        reproduce(Path(args.out), registry.BENCHMARKS, names=list(configs), configs=configs, quick=args.quick,
                  resume=args.resume, quiet=args.quiet, log=log, index_of=experiments)
        summary = write_summary(Path(args.out), registry.BENCHMARKS)
        index = write_index(Path(args.out), experiments)  # again: it now links the summary
        print(summary.read_text())
        print(f"summary: {summary} · index: {index.with_suffix('.html')}")
        return 0
    if args.command == "report":
        if not Path(args.dir).is_dir():
            parser.exit(2, f"polaropt: error: {args.dir} is not a folder; name the --out folder of `polaropt reproduce` "
                           "or `polaropt run`\n")
        try:
            index = report(Path(args.dir), experiments, log=log)
            if write_summary(Path(args.dir), registry.BENCHMARKS, missing_ok=True) is not None:
                index = write_index(Path(args.dir), experiments)  # again: it now links the summary
        except (ValueError, OSError) as e:
            parser.exit(2, f"polaropt: error: {e}\n")
    else:
        index = reproduce(Path(args.out), registry.EXPERIMENTS, quick=args.quick, resume=args.resume,
                          quiet=args.quiet, log=log, index_of=experiments)
    print(index.read_text().split("\n## Not reproduced")[0])
    print(f"the report, each experiment with its figures, claims and notes: {index.with_suffix('.html')} (Markdown: {index})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
