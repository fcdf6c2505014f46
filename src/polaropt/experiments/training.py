"""The one training loop the experiments share.

Every experiment that trains evaluates its loss at steps 0, 1, …, ``steps`` and updates between them:
``loss_at(t)`` computes (and records whatever it wants of) the state after ``t`` updates and returns
the scalar to differentiate; the loop does the rest in torch's order (zero the gradients, backward,
``optimizer.step()``, then ``scheduler.step()``). Several methods trained "side by side" are one
summed loss over independent parameters: every torch optimizer treats parameters independently, so
that is the same arithmetic as separate runs, with one loop instead of several.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch


def train(loss_at: Callable[[int], torch.Tensor | None], optimizers, steps: int, *, schedulers: Iterable = (),
          stop: Callable[[int], bool] | None = None, progress: Callable | None = None, desc: str = "") -> int:
    """Evaluate ``loss_at(t)`` for t = 0 … ``steps`` and take one optimizer step between evaluations.

    ``optimizers`` (one or a list) are all zeroed and stepped on the summed loss's gradients, then
    ``schedulers`` are stepped. The loop ends after evaluating ``t = steps`` (that state is never
    updated) or, earlier, after the evaluation at which ``stop(t)`` is true. ``progress`` wraps the
    step range (tqdm-like). Returns the last ``t`` evaluated.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    optimizers = list(optimizers) if isinstance(optimizers, (list, tuple)) else [optimizers]
    schedulers = list(schedulers)
    ts = range(steps + 1)
    if progress is not None:
        ts = progress(ts, desc=desc, mininterval=1.0)
    t = 0
    for t in ts:
        loss = loss_at(t)
        if t == steps or (stop is not None and stop(t)):
            break
        for opt in optimizers:
            opt.zero_grad()
        loss.backward()
        for opt in optimizers:
            opt.step()
        for sched in schedulers:
            sched.step()
    return t
