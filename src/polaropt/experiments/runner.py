"""Run experiments into run directories, and the whole suite (``reproduce``)."""

from __future__ import annotations

import functools
import shutil
import time
from pathlib import Path

from tqdm.auto import tqdm

from . import records as rec
from .framework import EXPERIMENTS, Experiment, make_config


def progress_factory(quiet: bool):
    return functools.partial(tqdm, disable=quiet, leave=False, dynamic_ncols=True)


def run_experiment(exp: Experiment, config, out_root: Path, *, quick: bool = False, quiet: bool = False) -> Path:
    """Run ``exp`` with ``config`` and write ``out_root/NAME/`` atomically; return that folder."""
    from ..report import experiment_report

    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    tmp = rec.partial_dir(out_root, exp.name)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        t0 = time.perf_counter()
        records = exp.run(config, progress_factory(quiet))
        wall = time.perf_counter() - t0
        claims = exp.claims(records, config)
        meta = rec.meta(exp.name, config, wall, quick)
        rec.write_json(tmp / "config.json", rec.config_dict(config))
        rec.write_records(tmp / "records.jsonl", records)
        rec.write_json(tmp / "claims.json", [c.to_dict() for c in claims])
        figures = exp.figures(records, config, tmp)
        (tmp / "report.md").write_text(experiment_report(exp, config, claims, figures, meta,
                                                         exp.notes(records, config)))
        rec.write_json(tmp / "meta.json", meta)  # last: its presence marks a complete run
        final = out_root / exp.name
        rec.commit_dir(tmp, final)
        return final
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def reproduce(out_root: Path, *, quick: bool = False, resume: bool = False, quiet: bool = False,
              names: list[str] | None = None, log=print) -> Path:
    """Run every registered experiment (skipping finished ones with ``resume``), then the index."""
    from ..report import write_index

    out_root = Path(out_root)
    t0 = time.perf_counter()
    for name in names or list(EXPERIMENTS):
        exp = EXPERIMENTS[name]
        config = make_config(exp, quick=quick)
        if resume and rec.is_complete(out_root / name, config, quick):
            log(f"{name}: finished earlier, skipped (--resume)")
            continue
        t = time.perf_counter()
        run_experiment(exp, config, out_root, quick=quick, quiet=quiet)
        log(f"{name}: done in {time.perf_counter() - t:.1f} s")
    index = write_index(out_root)
    log(f"suite done in {time.perf_counter() - t0:.1f} s: {index}")
    return index
