"""The repo's one interleaved timer: ``polaropt bench`` and the scripts in ``benchmarks/`` use it."""

from __future__ import annotations

import time
from typing import Callable


def time_interleaved(variants: dict, *, repeats: int, calls: int, sync: Callable[[], None] = lambda: None,
                     rotate: bool = False, progress: Callable | None = None) -> dict[str, list[float]]:
    """Seconds per call of every ``variants[name]()``, round-robin over ``repeats`` rounds of ``calls`` calls.

    Interleaving puts every variant in every round, so a machine that drifts (shared, noisy) slows all
    of them alike; ``sync`` (e.g. ``torch.cuda.synchronize``) closes each timed block on a device.
    ``rotate`` starts round r at the r-th variant, so no variant always runs first (or right after the
    same neighbour); ``progress`` wraps the rounds (tqdm-like).
    """
    times = {name: [] for name in variants}
    names = list(variants)
    rounds = range(repeats) if progress is None else progress(range(repeats))
    for r in rounds:
        k = r % len(names) if rotate else 0
        for name in names[k:] + names[:k]:
            fn = variants[name]
            sync()
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            sync()
            times[name].append((time.perf_counter() - t0) / calls)
    return times
