"""What every benchmark record carries (versions, machine, config), and how it is written."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path

import torch


def new_record(name: str, config: dict, device: str = "cpu") -> dict:
    return {"benchmark": name, "config": config, "torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "threads": torch.get_num_threads(), "device": device, "results": {}}


def write_record(record: dict, path: str | None) -> None:
    """Write ``record`` as JSON to ``path`` atomically (a temp file then a rename); no-op for None."""
    if not path:
        return
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(record, f, indent=1)
    os.replace(tmp, out)


def time_interleaved(variants: dict, *, repeats: int, calls: int, sync=lambda: None) -> dict[str, list[float]]:
    """Seconds per call of every ``variants[name]()``, round-robin over ``repeats`` rounds of ``calls`` calls.

    Interleaving puts every variant in every round, so a machine that drifts (shared, noisy) slows all
    of them alike; ``sync`` (e.g. ``torch.cuda.synchronize``) closes each timed block on a device.
    """
    import time

    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            sync()
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            sync()
            times[name].append((time.perf_counter() - t0) / calls)
    return times
