"""What every benchmark record carries (versions, machine, config), and how it is written."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

from polaropt.experiments.records import write_text_atomic
from polaropt.experiments.timing import time_interleaved

__all__ = ["new_record", "time_interleaved", "write_record"]  # the scripts take the timer from here


def new_record(name: str, config: dict, device: str = "cpu") -> dict:
    return {"benchmark": name, "config": config, "torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "threads": torch.get_num_threads(), "device": device, "results": {}}


def write_record(record: dict, path: str | None) -> None:
    """Write ``record`` as JSON to ``path`` atomically (a temp file then a rename); no-op for None."""
    if not path:
        return
    write_text_atomic(Path(path), json.dumps(record, indent=1))
