"""What every benchmark record carries (versions, machine, config), and how it is written."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

from polaropt.experiments.records import write_text_atomic


def new_record(name: str, config: dict, device: str = "cpu") -> dict:
    return {"benchmark": name, "config": config, "torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "threads": torch.get_num_threads(), "device": device, "results": {}}


def write_record(record: dict, path: str | None) -> None:
    """Write ``record`` as JSON to ``path`` atomically (a temp file then a rename); no-op for None."""
    if not path:
        return
    write_text_atomic(Path(path), json.dumps(record, indent=1))


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
