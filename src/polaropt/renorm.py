"""Renormalization after the optimizer step: project (rPGD) or absorb (Liu's re-parametrization).

For every tensor polarized with ``mode="project"`` or ``"absorb"``, with ``a = max(‖V‖, eps)``
per slice (norm in float32 or better):

- ``"project"`` (Wu et al. 2020, seed 002, rPGD):   ``V ← V/a``            (``W`` changes)
- ``"absorb"``  (Liu, seed 001, "re-parametrization"): ``V ← V/a, s ← a·s`` (``W`` unchanged)

then the optimizer state is handled by the policy of :mod:`polaropt.transport`.

Two implementations: ``_renormalize_reference`` (a plain loop over tensors, the ground truth) and
``_renormalize_foreach`` (``torch._foreach_*`` over all tensors of a dtype/device at once); tests
hold them equal. Neither loops over slices.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from . import guard
from .guard import RENORMALIZED
from .polar import PolarTensor, polar_tensors
from .slices import nonfinite, slice_norm
from .transport import check_state_policy, moment_orders


def _targets(model: nn.Module) -> list[PolarTensor]:
    return [t for t in polar_tensors(model) if t.polar.mode in RENORMALIZED]


def _slice_norms(targets: list[PolarTensor]) -> list[torch.Tensor]:
    """``a`` per slice for every target, after checking that no ``V`` or ``s`` holds NaN or Inf.

    The check happens before any tensor is modified, so a failure leaves the model as it was.
    """
    norms = [slice_norm(t.direction, t.polar.dims) for t in targets]
    # norms then scales: indices i and len(targets) + i both belong to target i; one host sync
    bad_at = {i % len(targets) for i in nonfinite(norms + [t.scale for t in targets])}
    bad = [t.qualname for i, t in enumerate(targets) if i in bad_at]
    if bad:
        raise FloatingPointError(
            f"renormalize_ found NaN or Inf in the scale or direction of {', '.join(bad)} and changed nothing; "
            "the values were already there (written by the optimizer step, or set directly). "
            "Lower the learning rate, or check the loss and inputs."
        )
    return [n.clamp_min_(t.polar.eps) for t, n in zip(targets, norms)]


def _plan_transport(optimizer, targets, state: str) -> list[tuple[int, torch.Tensor, int, list]]:
    """What the state policy will touch: ``(target index, param, sign, [(moment, order)])``.

    Built before anything is modified, so a policy that cannot be carried out (an unknown state
    key; ``s`` and ``V`` of an ``"absorb"`` tensor in different optimizers) raises while the model
    and the optimizer are still as they were.
    """
    if optimizer is None or state == "keep":
        return []
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    plan = []
    for i, t in enumerate(targets):
        absorb = t.polar.mode == "absorb"
        if absorb and t.scale.requires_grad and (id(t.direction) in held) != (id(t.scale) in held):
            inside, outside = ("V", "s") if id(t.direction) in held else ("s", "V")
            raise ValueError(
                f"state={state!r} changes the optimizer state of both s and V of {t.qualname} at every "
                f"renormalization, but only {inside} is in this optimizer ({outside} is in another one or none), "
                f"so the moments of {outside} would stay in the old coordinates. Put s and V in one optimizer "
                "(param groups may give them different lr), make the scale fixed (trainable_scale=False), "
                "or use state='keep'"
            )
        sides = [(t.direction, 1)] + ([(t.scale, -1)] if absorb else [])
        for param, sign in sides:
            if param in optimizer.state:
                moments = moment_orders(optimizer.state[param], t.qualname) if state == "rescale" else []
                plan.append((i, param, sign, moments))
    return plan


def _local_mul(x: torch.Tensor, f: torch.Tensor) -> bool:
    """``x *= f`` for an FSDP2 shard ``x`` of a tensor whose sharded dim has size 1 (a tensor or column
    scale, or its moments) times a replicated ``f``: DTensor has no in-place rule for that layout,
    but on the local shard it is exact (the ranks holding an empty shard multiply nothing).
    Returns False, doing nothing, for every other pair."""
    fp, xp = getattr(f, "placements", None), getattr(x, "placements", None)
    if xp is None or fp is None or not all(p.is_replicate() for p in fp) or all(p.is_replicate() for p in xp):
        return False
    if any(p.is_shard() and x.shape[p.dim] != 1 for p in xp):
        return False  # not the size-1 case: leave it to DTensor
    x.to_local().mul_(f.to_local())
    return True


def _mul_(x: torch.Tensor, f: torch.Tensor) -> None:
    if not _local_mul(x, f):
        x.mul_(f)


def _transport(optimizer, plan, norms, state: str) -> None:
    """Apply the state policy; ``"rescale"`` multiplies V's moments by a^k and s's by a^-k."""
    for i, param, sign, moments in plan:
        if state == "reset":
            del optimizer.state[param]
        for moment, order in moments:
            _mul_(moment, norms[i].pow(sign * order).to(moment.dtype))


@torch.no_grad()
def _renormalize_reference(targets: list[PolarTensor]) -> list[torch.Tensor]:
    norms = _slice_norms(targets)
    for t, a in zip(targets, norms):
        t.direction.div_(a)
        if t.polar.mode == "absorb":
            _mul_(t.scale, a)
    return norms


@torch.no_grad()
def _renormalize_foreach(targets: list[PolarTensor]) -> list[torch.Tensor]:
    norms = _slice_norms(targets)
    groups = defaultdict(lambda: ([], [], [], []))  # (device, dtype) -> V's, a's for V, s's, a's for s
    for t, a in zip(targets, norms):
        vs, avs, ss, ass = groups[(t.direction.device, t.direction.dtype)]
        vs.append(t.direction)
        avs.append(a.expand_as(t.direction))  # foreach ops need equal shapes: broadcast as a view
        if t.polar.mode == "absorb" and not _local_mul(t.scale, a):  # (done here if it was a shard)
            ss.append(t.scale)
            ass.append(a)
    for vs, avs, ss, ass in groups.values():
        torch._foreach_div_(vs, avs)
        if ss:
            torch._foreach_mul_(ss, ass)
    return norms


def renormalize_(model: nn.Module, *, optimizer: torch.optim.Optimizer | None = None, state: str = "keep",
                 foreach: bool = True) -> None:
    """Renormalize every ``"project"``/``"absorb"`` tensor of ``model`` in place.

    Args:
        optimizer: the optimizer holding ``s`` and ``V``; needed for ``state="reset"``/``"rescale"``.
        state: ``"keep"``, ``"reset"`` or ``"rescale"`` (see :mod:`polaropt.transport`).
        foreach: use the vectorized path (default) or the plain per-tensor reference loop.

    Raises:
        FloatingPointError: a NaN/Inf in a direction or scale; names the tensors and modifies none.
        ValueError: a state policy this optimizer cannot carry out; modifies nothing.
    """
    check_state_policy(state, optimizer)
    targets = _targets(model)
    if not targets:
        return
    plan = _plan_transport(optimizer, targets, state)
    norms = (_renormalize_foreach if foreach else _renormalize_reference)(targets)
    with torch.no_grad():
        _transport(optimizer, plan, norms, state)
    for t in targets:
        guard.mark_clean(t.polar)
