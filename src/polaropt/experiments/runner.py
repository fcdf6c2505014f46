"""Run experiments into run folders, rebuild a run's outputs from its records, and the whole suite.

One path builds every output: ``build_outputs(exp, records, config, meta, folder)`` writes claims.json,
the figures and report.md from the records and the config alone. ``run_experiment`` calls it on fresh
records; ``rebuild`` (``polaropt report DIR``) calls it on the records on disk, without re-running.
"""

from __future__ import annotations

import functools
import json
import shutil
import time
from pathlib import Path

from . import records as rec
from .framework import Experiment, config_from_dict
from .report import experiment_report, write_index


def progress_factory(quiet: bool):
    from tqdm.auto import tqdm

    return functools.partial(tqdm, disable=quiet, leave=False, dynamic_ncols=True)


def build_outputs(exp: Experiment, records: list[dict], config, meta: dict, folder: Path) -> None:
    """Write claims.json, the figures and report.md into ``folder`` from ``records`` and ``config``."""
    claims = exp.claims(records, config)
    rec.write_json(folder / "claims.json", [c.to_dict() for c in claims])
    figures = exp.figures(records, config, folder)
    (folder / "report.md").write_text(experiment_report(exp, config, claims, figures, meta,
                                                        exp.notes_text(records, config)))


def run_experiment(exp: Experiment, config, out_root: Path, *, quick: bool = False, quiet: bool = False) -> Path:
    """Run ``exp`` with ``config`` and write ``out_root/NAME/`` atomically; return that folder."""
    final = Path(out_root) / exp.path
    final.parent.mkdir(parents=True, exist_ok=True)
    with rec.atomic(final, directory=True) as tmp:
        t0 = time.perf_counter()
        records = exp.run(config, progress_factory(quiet))
        meta = rec.meta(exp, config, time.perf_counter() - t0, quick)
        rec.write_json(tmp / "config.json", rec.config_dict(config))
        rec.write_records(tmp / "records.jsonl", records)
        build_outputs(exp, records, config, meta, tmp)
        rec.write_json(tmp / "meta.json", meta)  # last: its presence marks a complete run
    return final


def rebuild(run_dir: Path, experiments: dict[str, Experiment]) -> Path:
    """Rebuild claims.json, figures and report.md of one finished run from its records and config alone.

    The new files replace the old ones atomically (the folder is rebuilt beside it and renamed in).
    The experiment's code version at the time of the run stays in meta.json; the rebuild adds when it
    happened and with which code.
    """
    run_dir = Path(run_dir)
    meta = json.loads((run_dir / "meta.json").read_text())
    name = meta.get("experiment")
    if name not in experiments:
        raise ValueError(f"{run_dir}: meta.json names experiment {name!r}; valid choices are "
                         f"{', '.join(experiments)}")
    exp = experiments[name]
    config = config_from_dict(exp.config, json.loads((run_dir / "config.json").read_text()))
    records = rec.read_records(run_dir / "records.jsonl")
    with rec.atomic(run_dir, directory=True) as tmp:
        for f in ("config.json", "records.jsonl"):
            shutil.copy2(run_dir / f, tmp / f)
        meta = {**meta, "rebuilt": rec.now(), "rebuilt_code": rec.code_version(exp)}
        build_outputs(exp, records, config, meta, tmp)
        rec.write_json(tmp / "meta.json", meta)
    return run_dir


def report(out_root: Path, experiments: dict[str, Experiment], log=print) -> Path:
    """``polaropt report DIR``: rebuild every finished run in ``out_root`` from its records, then the index.

    A run that cannot be rebuilt (a corrupt or hand-edited file) keeps its old outputs; the others are
    rebuilt and the index written, then a ValueError lists what failed, with each folder's path.
    """
    out_root = Path(out_root)
    found = [out_root / e.path for e in experiments.values() if (out_root / e.path / "meta.json").exists()]
    if not found:
        raise ValueError(f"{out_root} holds no finished run of any experiment ({', '.join(experiments)}); "
                         "run `polaropt reproduce --out DIR` first")
    failed = []
    for d in found:
        try:
            rebuild(d, experiments)
        except Exception as e:  # noqa: BLE001 - reported below with its folder, the others still rebuilt
            failed.append(f"{d}: {type(e).__name__}: {e}")
            continue
        log(f"{d.name}: rebuilt from {d / 'records.jsonl'}")
    index = write_index(out_root, experiments)
    if failed:
        raise ValueError("could not rebuild (old outputs kept):\n  " + "\n  ".join(failed))
    return index


def reproduce(out_root: Path, experiments: dict[str, Experiment], *, quick: bool = False, resume: bool = False,
              quiet: bool = False, names: list[str] | None = None, log=print, configs: dict | None = None,
              index_of: dict[str, Experiment] | None = None) -> Path:
    """Run every experiment (with ``resume``, skip those finished with the same config and code), then
    the index of every finished run of ``index_of`` (default: ``experiments``) in ``out_root``.

    ``configs`` ({name: config}) replaces the default configs of those it names (``polaropt bench``'s
    ``--set`` and ``--device``).
    """
    out_root = Path(out_root)
    t0 = time.perf_counter()
    configs = configs or {}
    for name in names or list(experiments):
        exp = experiments[name]
        config = configs.get(name) or exp.make_config(quick=quick)
        if resume:
            stale = rec.why_stale(out_root / exp.path, exp, config, quick)
            if stale is None:
                log(f"{name}: finished earlier with this config and code, skipped (--resume)")
                continue
            log(f"{name}: rerun ({stale})")
        t = time.perf_counter()
        run_experiment(exp, config, out_root, quick=quick, quiet=quiet)
        log(f"{name}: done in {time.perf_counter() - t:.1f} s")
    index = write_index(out_root, index_of or experiments)
    log(f"done in {time.perf_counter() - t0:.1f} s: {index}")
    return index
