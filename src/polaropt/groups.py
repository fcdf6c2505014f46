"""Optimizer param groups that tell scales from directions, and the step-size schedules the seeds use.

``param_groups(model, scale={...}, direction={...}, rest={...})`` returns ordinary torch param
groups, each tagged with a ``"polar_role"`` key (``"scale"``, ``"direction"`` or ``"rest"``), so
any ``torch.optim`` optimizer takes them and the schedules below can find the scale groups.

Schedules (both are ``torch.optim.lr_scheduler.LRScheduler``: call ``.step()`` after
``optimizer.step()``, save them with ``state_dict()``):

- :class:`TwoStageLR` (Wu et al. 2020, seed 002, Theorem 3.2): the scales are frozen (lr 0) for
  the first ``freeze_steps`` steps, then released to their own lr.
- :class:`RadiusSquaredLR` (Chou et al. 2023, seed 003, Sec. 3.4): ``(η_r, η_u) = (r², 1)``, i.e. the
  scale group's lr is ``base_lr · r(t)²`` and the direction's stays ``base_lr``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from .polar import polar_tensors

ROLES = ("scale", "direction", "rest")


def _options(role: str, options) -> dict:
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(f"{role}= takes a dict of optimizer options such as {{'lr': 1e-3}}, got {options!r}")
    if "params" in options or "polar_role" in options:
        raise ValueError(f"{role}= sets optimizer options; 'params' and 'polar_role' are filled in by param_groups")
    return dict(options)


def param_groups(model: nn.Module, *, scale: Mapping | None = None, direction: Mapping | None = None,
                 rest: Mapping | None = None, split_scales: bool = False) -> list[dict]:
    """Torch param groups: polar scales, polar directions, and every other trainable parameter.

    Args:
        scale, direction, rest: optimizer options for each group (e.g. ``{"lr": 1e-3}``); options
            not given fall back to the optimizer's defaults. With ``lr_scale = c · lr_direction``
            this sets Wu's step-size ratio ``c`` (seed 002) or Chou's ``η_r/η_u`` (seed 003).
        split_scales: one group per scale tensor (``RadiusSquaredLR`` then uses each tensor's own r).

    Frozen scales (``trainable_scale=False``) and other parameters with ``requires_grad=False`` are
    left out. Empty groups are omitted. Each group carries ``"polar_role"``.
    """
    scale, direction, rest = _options("scale", scale), _options("direction", direction), _options("rest", rest)
    scales, directions, seen = [], [], set()
    for t in polar_tensors(model):
        seen.update((id(t.scale), id(t.direction)))
        if t.scale.requires_grad:
            scales.append(t.scale)
        directions.append(t.direction)
    others = [p for p in model.parameters() if id(p) not in seen and p.requires_grad]
    scale_lists = [[s] for s in scales] if split_scales else [scales]
    groups = [{"params": ps, "polar_role": "scale", **scale} for ps in scale_lists]
    groups += [{"params": directions, "polar_role": "direction", **direction},
               {"params": others, "polar_role": "rest", **rest}]
    return [g for g in groups if g["params"]]


def _scale_groups(optimizer: torch.optim.Optimizer) -> list[int]:
    idx = [i for i, g in enumerate(optimizer.param_groups) if g.get("polar_role") == "scale"]
    if not idx:
        raise ValueError(
            "the optimizer has no param group with polar_role='scale'; build it from "
            "polaropt.param_groups(model, ...) (frozen scales have no group)"
        )
    return idx


class TwoStageLR(LRScheduler):
    """Freeze the scales for ``freeze_steps`` optimizer steps, then release them (Wu et al. 2020, Thm 3.2).

    During the first stage the scale groups' lr is 0, the others keep their base lr. With plain
    gradient descent this is exactly "g frozen"; with a stateful optimizer (Adam) the scales'
    moments still accumulate gradients while frozen.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, freeze_steps: int, last_epoch: int = -1):
        if not isinstance(freeze_steps, int) or isinstance(freeze_steps, bool) or freeze_steps < 0:
            raise ValueError(f"freeze_steps must be a non-negative int, got {freeze_steps!r}")
        self.freeze_steps = freeze_steps
        self._scale_idx = set(_scale_groups(optimizer))
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        frozen = self.last_epoch < self.freeze_steps
        return [0.0 if (frozen and i in self._scale_idx) else base for i, base in enumerate(self.base_lrs)]


class RadiusSquaredLR(LRScheduler):
    """Chou et al.'s time-dependent step sizes ``(η_r, η_u) = (r², 1)`` (seed 003, Sec. 3.4).

    Each scale group's lr is ``base_lr · mean(s²)`` over its scale entries, recomputed from the
    current scales at every ``step()``; with one scalar scale per group (``param_groups(...,
    split_scales=True)`` and ``scale="tensor"``) this is exactly ``base_lr · r²``. Other groups keep
    their base lr.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, last_epoch: int = -1):
        self._scale_idx = set(_scale_groups(optimizer))
        super().__init__(optimizer, last_epoch)

    @torch.no_grad()
    def get_lr(self) -> list[float]:
        out = []
        for i, (group, base) in enumerate(zip(self.optimizer.param_groups, self.base_lrs)):
            if i in self._scale_idx:
                r2 = torch.cat([p.detach().reshape(-1).double() for p in group["params"]]).square().mean()
                out.append(base * float(r2))
            else:
                out.append(base)
        return out
