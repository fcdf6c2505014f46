"""Optimizer param groups that tell scales from directions, with weight decay where it means what it means
for ``W``, and the step-size schedules the seeds use.

``param_groups(model, scale={...}, direction={...}, rest={...}, weight_decay=λ)`` returns ordinary
torch param groups, each tagged with ``"polar_role"`` (``"scale"``, ``"direction"`` or ``"rest"``)
and, for polar groups, ``"polar_decay"`` (whether the group carries ``W``'s weight decay), so any
``torch.optim`` optimizer takes them and the schedules below can find the scale groups.

Weight decay. Decoupled weight decay (AdamW, ``SGD`` without momentum) shrinks a plain weight by
``(1 − lr·λ)`` per step. For ``W = s ⊙ Ŵ`` exactly one factor must carry it, or ``W`` shrinks twice
(or not at all):

==============  ================  ================================================================
mode            decay goes on     why
==============  ================  ================================================================
``free``        ``V``             ``s ⊙ (cV) = c·W`` for every granularity (learnable multipliers
                                  decay the matrix, not the multipliers)
``absorb``      ``V``             the shrink of ``V`` is absorbed into ``s`` at renormalization:
                                  ``a = (1 − lr·λ)``, ``s ← a·s``, so ``W ← (1 − lr·λ)·W``; works
                                  with a fixed scale too (absorb multiplies it anyway)
``normalize``   ``s``             ``W`` does not see ``‖V‖``: decay on ``V`` would do nothing
``project``     ``s``             the projection throws ``V``'s shrink away
==============  ================  ================================================================

The other factor's group gets ``weight_decay=0`` explicitly, so an optimizer default
(``AdamW(..., weight_decay=λ)``, whose default is 0.01) also lands on one factor only. ``W`` then
shrinks by ``(1 − lr·λ)`` with the ``lr`` of the carrying group. A ``normalize``/``project`` weight
with a fixed scale has a fixed norm ``‖W‖ = s``: there is nothing for decay to act on, and none is
applied. For optimizers whose ``weight_decay`` is an L2 term added to the gradient (``Adam``,
``SGD`` with momentum), the term is placed the same way.

Schedules (both are ``torch.optim.lr_scheduler.LRScheduler``: call ``.step()`` after
``optimizer.step()``, save them with ``state_dict()``). They act as *step-time multipliers*: just
before each optimizer step they multiply the scale groups' current lr (whatever other schedulers
set it to) and just after it they put it back (:mod:`polaropt.steps`). So they compose with any
torch scheduler (``CosineAnnealingLR``, ``LinearLR`` warm-up, ``OneCycleLR``, ...) in either order,
and ``optimizer.param_groups[i]["lr"]`` read between steps is the other schedulers' lr.

- :class:`TwoStageLR` (Wu et al. 2020, seed 002, Theorem 3.2): the scales are frozen (lr × 0) for
  the first ``freeze_steps`` steps, then released.
- :class:`RadiusSquaredLR` (Chou et al. 2023, seed 003, Sec. 3.4): ``(η_r, η_u) = (r², 1)``, i.e. the
  scale group's lr is multiplied by ``r(t)²`` and the direction's is left alone.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Mapping

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from .polar import polar_tensors
from .steps import check_sharding, control, refuse_orphans

ROLES = ("scale", "direction", "rest")
DECAY_ON = {"free": "direction", "absorb": "direction", "normalize": "scale", "project": "scale"}


def _options(role: str, options) -> dict:
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(f"{role}= takes a dict of optimizer options such as {{'lr': 1e-3}}, got {options!r}")
    for key in ("params", "polar_role", "polar_decay"):
        if key in options:
            raise ValueError(f"{role}= sets optimizer options; {key!r} is filled in by param_groups")
    if role != "rest" and "weight_decay" in options:
        raise ValueError(
            f"{role}={{'weight_decay': ...}} is refused: param_groups(weight_decay=λ) places W's decay on the one "
            "factor that carries it for each mode (see polaropt.groups); the other factor must get none")
    return dict(options)


def _no_decay(model: nn.Module, no_decay) -> "Callable[[str, torch.Tensor], bool]":
    """``(name, tensor) -> bool``: whether a parameter (a polar tensor by its plain name) is kept from decay."""
    if no_decay is None:
        return lambda name, tensor: False
    if callable(no_decay):
        return no_decay
    if no_decay != "auto":
        from fnmatch import fnmatchcase

        patterns = [no_decay] if isinstance(no_decay, str) else list(no_decay)
        if not all(isinstance(pat, str) for pat in patterns):
            raise TypeError(f"no_decay takes 'auto', None, glob patterns or a callable (name, tensor) -> bool, got "
                            f"{no_decay!r}")
        return lambda name, tensor: any(fnmatchcase(name, pat) for pat in patterns)
    named = set()
    for prefix, module in model.named_modules():  # timm's convention: a model names its own (pos_embed, cls_token)
        own = getattr(module, "no_weight_decay", None)
        if callable(own):
            named.update(f"{prefix}.{n}" if prefix else n for n in own())
    # some build that set from named_parameters(), which after polarizing gives the leaves' names
    # ("parametrizations.pos_embed.original1"): read them as the plain name they stand for
    named |= {re.sub(r"(^|\.)parametrizations\.([^.]+)\.original[01]$", r"\1\2", n) for n in named}
    return lambda name, tensor: tensor.ndim <= 1 or name in named


def kept_from_decay(model: nn.Module, exempt) -> set[int]:
    """The ids of the parameters ``exempt(name, tensor)`` keeps from decay under any of their names (a tied
    parameter is named once per owner)."""
    return {id(p) for name, p in model.named_parameters(remove_duplicate=False) if exempt(name, p)}


def param_groups(model: nn.Module, *, scale: Mapping | None = None, direction: Mapping | None = None,
                 rest: Mapping | None = None, weight_decay: float | None = None,
                 split_scales: bool = False, no_decay="auto") -> list[dict]:
    """Torch param groups: polar scales, polar directions, and every other trainable parameter.

    Args:
        scale, direction, rest: optimizer options for each group (e.g. ``{"lr": 1e-3}``); options
            not given fall back to the optimizer's defaults. With ``lr_scale = c · lr_direction``
            this sets Wu's step-size ratio ``c`` (seed 002) or Chou's ``η_r/η_u`` (seed 003).
            ``weight_decay`` may be set for ``rest`` only (e.g. ``rest={"weight_decay": 0}`` to
            keep biases and norm gains undecayed).
        weight_decay: λ for ``W`` of every polar tensor (placed per mode, see the module docs) and
            for ``rest``; None leaves the carrying groups to the optimizer's default.
        split_scales: one group per scale tensor (``RadiusSquaredLR`` then uses each tensor's own r).
        no_decay: parameters kept from weight decay: ``"auto"`` (the usual conventions of timm, Hugging
            Face and nanoGPT: 1-D parameters, i.e. biases and norm gains, and the names a module's own
            ``no_weight_decay()`` returns, such as a ViT's ``pos_embed`` and ``cls_token``), glob patterns
            on the qualified name, a callable ``(name, tensor) -> bool``, or None (decay everything). A
            polar tensor is matched by its plain name (``"pos_embed"``, ``"blocks.0.fc.weight"``); kept
            from decay, neither of its factors decays.

    Frozen scales (``trainable_scale=False``) and other parameters with ``requires_grad=False`` are
    left out. Empty groups are omitted. A shared (tied) weight appears once.

    Raises:
        ValueError: a weight tied to a polarized one that was not polarized itself (the tie would
            be cut), or ``weight_decay`` in ``scale=``/``direction=``.
    """
    scale, direction, rest = _options("scale", scale), _options("direction", direction), _options("rest", rest)
    if weight_decay is not None and not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a non-negative number, got {weight_decay!r}")
    refuse_orphans(model)
    check_sharding(model)
    decay = {} if weight_decay is None else {"weight_decay": weight_decay}
    exempt = _no_decay(model, no_decay)
    scales = {True: [], False: []}
    directions = {True: [], False: []}
    seen = set()
    for t in polar_tensors(model):
        seen.update((id(t.scale), id(t.direction)))
        on = DECAY_ON[t.polar.mode]
        kept = any(exempt(path, t.direction) for path in t.paths)
        if t.scale.requires_grad:
            scales[on == "scale" and not kept].append(t.scale)
        directions[on == "direction" and not kept].append(t.direction)
    others = {True: [], False: []}
    kept = kept_from_decay(model, exempt)
    for p in dict.fromkeys(model.parameters()):
        if id(p) not in seen and p.requires_grad:
            others[id(p) not in kept].append(p)

    def group(params, role, carries, options):
        return {"params": params, "polar_role": role, "polar_decay": carries,
                **(decay if carries else {"weight_decay": 0.0}), **options}

    groups = []
    for carries in (False, True):
        lists = [[s] for s in scales[carries]] if split_scales else [scales[carries]]
        groups += [group(ps, "scale", carries, scale) for ps in lists]
    groups += [group(directions[True], "direction", True, direction),
               group(directions[False], "direction", False, direction),
               {"params": others[True], "polar_role": "rest", **decay, **rest},
               {"params": others[False], "polar_role": "rest", "weight_decay": 0.0, **rest}]
    return [g for g in groups if g["params"]]


def _scale_groups(optimizer: torch.optim.Optimizer) -> tuple[int, ...]:
    idx = tuple(i for i, g in enumerate(optimizer.param_groups) if g.get("polar_role") == "scale")
    if not idx:
        raise ValueError(
            "the optimizer has no param group with polar_role='scale'; build it from "
            "polaropt.param_groups(model, ...) (frozen scales have no group)"
        )
    return idx


class _StepMultiplier(LRScheduler):
    """An ``LRScheduler`` whose effect is a factor on some groups' lr during each optimizer step.

    ``get_lr`` returns the groups' current lr (the chainable identity), so stepping it never
    changes what other schedulers set; ``factors`` is applied by :mod:`polaropt.steps` around the
    step. The optimizer's controller holds it weakly: a schedule that is garbage stops acting.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, last_epoch: int = -1):
        self._scale_idx = _scale_groups(optimizer)
        super().__init__(optimizer, last_epoch)
        control(optimizer).multipliers.append(weakref.WeakMethod(self.factors))

    def get_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def factors(self, optimizer) -> dict[int, float]:
        raise NotImplementedError


class TwoStageLR(_StepMultiplier):
    """Freeze the scales for ``freeze_steps`` optimizer steps, then release them (Wu et al. 2020, Thm 3.2).

    During the first stage the scale groups step with lr × 0; the other groups, and every group
    after the first stage, step with the lr they have. With plain gradient descent this is
    exactly "g frozen"; with a stateful optimizer (Adam) the scales' moments still accumulate
    gradients while frozen. Composes with any torch scheduler in either order (see the module docs).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, freeze_steps: int, last_epoch: int = -1):
        if not isinstance(freeze_steps, int) or isinstance(freeze_steps, bool) or freeze_steps < 0:
            raise ValueError(f"freeze_steps must be a non-negative int, got {freeze_steps!r}")
        self.freeze_steps = freeze_steps
        super().__init__(optimizer, last_epoch)

    def factors(self, optimizer) -> dict[int, float]:
        return {i: 0.0 for i in self._scale_idx} if self.last_epoch < self.freeze_steps else {}


class RadiusSquaredLR(_StepMultiplier):
    """Chou et al.'s time-dependent step sizes ``(η_r, η_u) = (r², 1)`` (seed 003, Sec. 3.4).

    At each optimizer step every scale group's lr is multiplied by ``mean(s²)`` over its scale
    entries, taken from the current scales; with one scalar scale per group (``param_groups(...,
    split_scales=True)`` and ``scale="tensor"``) this is exactly ``lr · r²``. Other groups keep
    their lr. Composes with any torch scheduler in either order (see the module docs).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, last_epoch: int = -1):
        super().__init__(optimizer, last_epoch)
        stuck = [i for i, f in self.factors(optimizer).items() if f == 0.0]
        if stuck:
            import warnings

            warnings.warn(f"RadiusSquaredLR: the scales of param group(s) {stuck} are all 0 (a zero-initialized weight "
                          "polarizes to s = 0), so their lr × r² is 0 and they never move; initialize those weights, "
                          "or train their scales with another schedule", stacklevel=2)

    @torch.no_grad()
    def factors(self, optimizer) -> dict[int, float]:
        out = {}
        for i in self._scale_idx:
            params = optimizer.param_groups[i]["params"]
            out[i] = float(torch.cat([p.detach().reshape(-1).double() for p in params]).square().mean())
        return out
