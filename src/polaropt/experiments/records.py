"""Records and run directories: the query helpers every experiment uses, every file written
atomically, and the run folder's schema.

``OUT/NAME/`` holds ``config.json``, ``records.jsonl`` (one JSON record a line), ``meta.json``
(versions, git commit, wall time, quick flag), ``claims.json``, figures (PNG and SVG) and
``report.md``. Everything is first written to a hidden ``OUT/.NAME.partial-*`` folder that is
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
from contextlib import contextmanager
from pathlib import Path

from .framework import KINDS, RECORD_KINDS

# ---- querying records ----------------------------------------------------------------------------

def _matches(record: dict, match: dict) -> bool:
    return all(record.get(k) == v for k, v in match.items())


def select(records: list[dict], kind: str | None = None, **match) -> list[dict]:
    """The records of ``kind`` whose fields equal ``match`` (e.g. ``select(rs, "curve", metric="loss")``)."""
    if kind is not None and kind not in RECORD_KINDS:
        raise ValueError(f"unknown record kind {kind!r}; valid kinds are {', '.join(RECORD_KINDS)}")
    if kind is not None:
        match = {"kind": kind, **match}
    return [r for r in records if _matches(r, match)]


def one(records: list[dict], kind: str | None = None, **match) -> dict:
    """The single record that ``select`` finds; an error naming the query when there are none or several."""
    found = select(records, kind, **match)
    if len(found) != 1:
        raise LookupError(f"expected one {kind or ''} record with {match}, found {len(found)}")
    return found[0]


def by(records: list[dict], key: str | tuple[str, ...], field: str = "value", kind: str | None = None,
       **match) -> dict:
    """``{record[key]: record[field]}`` over the selected records (a tuple ``key`` gives tuple keys).

    A repeated key is an error, not a silent overwrite: the query was not specific enough.
    """
    out = {}
    for r in select(records, kind, **match):
        k = tuple(r[x] for x in key) if isinstance(key, tuple) else r[key]
        if k in out:
            raise LookupError(f"records with {match} repeat the key {k!r}; narrow the query")
        out[k] = r[field]
    return out


# ---- run folders ---------------------------------------------------------------------------------

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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic(final: Path, *, directory: bool = False):
    """Yield a hidden temporary path beside ``final`` (a file, or an empty folder with ``directory``);
    when the block succeeds, rename it onto ``final`` (replacing an older one); when it fails, remove
    it. Readers see the old ``final`` or the complete new one, never half of it (a folder is swapped in
    two renames; if the second fails, the old folder is put back). The repo's one atomic writer: run
    folders, reports, the index and benchmark records all go through it. The result gets the usual
    permissions (0666/0777 less the umask), not tempfile's private 0600/0700.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.partial-"))
    else:
        fd, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, (0o777 if directory else 0o666) & ~_umask())
        if directory and final.exists():
            old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.old-"))
            os.replace(final, old / final.name)
            try:
                os.replace(tmp, final)
            except BaseException:
                os.replace(old / final.name, final)  # put the old result back
                os.rmdir(old)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        if directory:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file and a rename: readers never see half a file."""
    with atomic(path) as tmp:
        tmp.write_text(text)


def write_records(path: Path, records: list[dict]) -> None:
    with open(path, "w") as f:
        for rec in records:
            f.write(json.dumps(rec, allow_nan=True) + "\n")


def read_records(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def code_version(exp) -> dict:
    """What ``--resume`` compares: the package version and a hash of the code the experiment depends on (the git
    commit is kept for the reader; it changes with every commit, so it is not compared)."""
    from .. import __version__

    return {"polaropt": __version__, "experiment_hash": exp.code_hash(), "git_commit": git_commit()}


def meta(exp, config, wall_time_s: float, quick: bool) -> dict:
    code = code_version(exp)
    return {"experiment": exp.name, "complete": True, "quick": quick, "config": config_dict(config),
            "versions": versions(), "code": code, "git_commit": code["git_commit"],
            "wall_time_s": wall_time_s, "created": now()}


def why_stale(run_dir: Path, exp, config, quick: bool) -> str | None:
    """Why ``run_dir`` is not a finished run of exactly this config and code (None when it is: what
    ``--resume`` skips)."""
    try:
        m = json.loads((run_dir / "meta.json").read_text())
    except OSError:
        return "no finished run"
    except ValueError:
        return "its meta.json is unreadable"
    if not isinstance(m, dict):
        return "its meta.json is not a run's"
    try:
        json.loads((run_dir / "claims.json").read_text())
    except (OSError, ValueError):
        return "its claims.json is missing or unreadable"
    if m.get("complete") is not True or not all((run_dir / f).exists() for f in REQUIRED_FILES):
        return "the run is incomplete"
    if m.get("quick") != quick:
        return f"it was run with quick={m.get('quick')}"
    if m.get("config") != config_dict(config):
        return "its config differs"
    code, now_code = m.get("code") or {}, code_version(exp)
    for key in ("polaropt", "experiment_hash"):
        if code.get(key) != now_code[key]:
            return f"its code changed ({key} {code.get(key)} -> {now_code[key]})"
    return None


def validate_run_dir(run_dir: Path) -> list[str]:
    """Schema problems of a run directory (an empty list when it is valid)."""
    problems = [f"missing {f}" for f in REQUIRED_FILES if not (run_dir / f).exists()]
    if problems:
        return problems
    m = json.loads((run_dir / "meta.json").read_text())
    for key in ("experiment", "complete", "quick", "config", "versions", "code", "git_commit", "wall_time_s", "created"):
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
            if c.get("kind", "source") not in KINDS:  # runs written before kinds existed are source claims
                problems.append(f"claim {c.get('id')!r} has kind {c.get('kind')!r}, not one of {', '.join(KINDS)}")
    if not list(run_dir.glob("*.png")):
        problems.append("no PNG figure")
    return problems
