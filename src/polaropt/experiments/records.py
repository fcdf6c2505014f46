"""Run directories: every file an experiment writes, written atomically, and their schema.

``OUT/NAME/`` holds ``config.json``, ``records.jsonl`` (one JSON record a line), ``meta.json``
(versions, git commit, wall time, quick flag), ``claims.json``, figures (PNG and SVG) and
``report.md``. Everything is first written to a hidden ``OUT/.NAME.partial-PID`` folder that is
renamed into place only when complete, so an interrupted run never leaves a half-written result.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from .framework import RECORD_KINDS

REQUIRED_FILES = ("config.json", "records.jsonl", "meta.json", "claims.json", "report.md")
CLAIM_KEYS = ("id", "source", "statement", "expected", "measured", "passed")


def versions() -> dict:
    import numpy
    import scipy
    import torch

    from .. import __version__

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "scipy": scipy.__version__, "polaropt": __version__}


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def config_dict(config) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config)))  # tuples become lists, as on disk


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, allow_nan=True) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file and a rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_records(path: Path, records: list[dict]) -> None:
    with open(path, "w") as f:
        for rec in records:
            f.write(json.dumps(rec, allow_nan=True) + "\n")


def read_records(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def partial_dir(out_root: Path, name: str) -> Path:
    return out_root / f".{name}.partial-{os.getpid()}"


def commit_dir(tmp: Path, final: Path) -> None:
    """Move a complete ``tmp`` folder to ``final``, replacing an older ``final`` if there is one."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def meta(name: str, config, wall_time_s: float, quick: bool) -> dict:
    return {"experiment": name, "complete": True, "quick": quick, "config": config_dict(config),
            "versions": versions(), "git_commit": git_commit(), "wall_time_s": wall_time_s,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def is_complete(run_dir: Path, config, quick: bool) -> bool:
    """True if ``run_dir`` holds a finished run of exactly this config (what ``--resume`` skips)."""
    try:
        m = json.loads((run_dir / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return (m.get("complete") is True and m.get("quick") == quick and m.get("config") == config_dict(config)
            and all((run_dir / f).exists() for f in REQUIRED_FILES))


def validate_run_dir(run_dir: Path) -> list[str]:
    """Schema problems of a run directory (an empty list when it is valid)."""
    problems = [f"missing {f}" for f in REQUIRED_FILES if not (run_dir / f).exists()]
    if problems:
        return problems
    m = json.loads((run_dir / "meta.json").read_text())
    for key in ("experiment", "complete", "quick", "config", "versions", "git_commit", "wall_time_s", "created"):
        if key not in m:
            problems.append(f"meta.json lacks {key!r}")
    if not isinstance(m.get("wall_time_s"), (int, float)) or m.get("wall_time_s", -1) < 0:
        problems.append("meta.json wall_time_s is not a non-negative number")
    for key in ("python", "torch", "numpy", "polaropt"):
        if key not in m.get("versions", {}):
            problems.append(f"meta.json versions lack {key!r}")
    config = json.loads((run_dir / "config.json").read_text())
    if config != m.get("config"):
        problems.append("config.json differs from meta.json's config")
    records = read_records(run_dir / "records.jsonl")
    if not records:
        problems.append("records.jsonl is empty")
    for i, rec in enumerate(records):
        if rec.get("kind") not in RECORD_KINDS:
            problems.append(f"record {i} has kind {rec.get('kind')!r}; valid kinds are {', '.join(RECORD_KINDS)}")
            break
        if rec["kind"] == "curve" and not (isinstance(rec.get("step"), list) and len(rec["step"]) == len(rec.get("value", []))):
            problems.append(f"curve record {i} needs equal-length 'step' and 'value' lists")
            break
    claims = json.loads((run_dir / "claims.json").read_text())
    if not isinstance(claims, list) or not claims:
        problems.append("claims.json must be a non-empty list")
    else:
        for c in claims:
            missing = [k for k in CLAIM_KEYS if k not in c]
            if missing or not isinstance(c.get("passed"), bool):
                problems.append(f"claim {c.get('id')!r} lacks {missing or ['a bool passed']}")
    if not list(run_dir.glob("*.png")):
        problems.append("no PNG figure")
    return problems
