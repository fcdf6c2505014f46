"""Renormalization after the optimizer step: project (rPGD) or absorb (Liu's re-parametrization).

For every tensor polarized with ``mode="project"`` or ``"absorb"``, with ``a = max(‖V‖, eps)``
per slice (norm in float32 or better):

- ``"project"`` (Wu et al. 2020, seed 002, rPGD):   ``V ← V/a``            (``W`` changes)
- ``"absorb"``  (Liu, seed 001, "re-parametrization"): ``V ← V/a, s ← a·s`` (``W`` unchanged)

then the optimizer state is handled by the policy of :mod:`polaropt.transport`.

Two implementations, which tests hold bitwise equal on CPU (on CUDA a stacked norm may split its
sum over threads differently from a lone one, so the last bit may differ; ``benchmarks/gpu_smoke.py``
prints the difference):

- ``_renormalize_reference``: a plain loop over tensors, the ground truth.
- ``_renormalize_grouped`` (the default): tensors that share device, dtype,
  shape, reduced dims, ``eps`` and mode form a group, stacked into one batch: one norm, one clamp,
  one division and one multi-tensor copy back per *group*, so the number of kernel launches grows
  with the number of distinct shapes (a transformer has a handful), not with the number of tensors.
  Stacking copies ``V`` twice more, so it is used where launches (or, on CPU, per-op dispatch), not
  memory, are the cost: for tensors up to :data:`STACK_MAX_NUMEL` entries (on CPU, 256×256 tensors
  measured ×1.08–1.2 the time stacked, ``benchmarks/renorm.py``).
  Unstacked and lone tensors are divided in place by one multi-tensor op (``torch._foreach_div_``: on
  CPU a C++ loop, so no Python dispatch per tensor), FSDP2 shards (DTensors) one by one.

Neither loops over slices. The NaN/Inf check raises before anything is modified (one host sync;
:func:`renormalize_`), or is skipped for :func:`polaropt.attach`'s lazy check, which reads the
parameters themselves later (a NaN in ``s`` or ``V`` stays there: ``V/NaN``, ``s·NaN``).
"""

from __future__ import annotations

import torch
from torch import nn

from . import guard
from .guard import RENORMALIZED
from .polar import PolarTensor, polar_tensors
from .slices import any_nonfinite, nonfinite, slice_norm, slice_norms
from .transport import check_state_policy, moment_orders


def _targets(model: nn.Module) -> list[PolarTensor]:
    return [t for t in polar_tensors(model) if t.polar.mode in RENORMALIZED]


def _raise_nonfinite(names: list[str]) -> None:
    raise FloatingPointError(
        f"renormalize_ found NaN or Inf in the scale or direction of {', '.join(names)} and changed nothing; "
        "the values were already there (written by the optimizer step, or set directly). "
        "Lower the learning rate, or check the loss and inputs."
    )


def _check_now(targets: list[PolarTensor], norms: list[torch.Tensor]) -> None:
    """Raise, naming the tensors, if a norm or a scale holds NaN/Inf: one host sync per device."""
    # norms then scales: indices i and len(targets) + i both belong to target i
    bad_at = {i % len(targets) for i in nonfinite(norms + [t.scale for t in targets])}
    if bad_at:
        _raise_nonfinite([t.qualname for i, t in enumerate(targets) if i in bad_at])


def _slice_norms(targets: list[PolarTensor]) -> list[torch.Tensor]:
    """``a`` per slice for every target, after checking that no ``V`` or ``s`` holds NaN or Inf.

    The check happens before any tensor is modified, so a failure leaves the model as it was.
    """
    norms = [slice_norm(t.direction, t.polar.dims) for t in targets]
    _check_now(targets, norms)
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


def _local_inplace(x: torch.Tensor, f: torch.Tensor, op: str) -> bool:
    """``x *= f`` or ``x /= f`` (``op``: ``"mul_"``, ``"div_"``) for an FSDP2 shard ``x`` of a tensor
    whose sharded dim has size 1 (a tensor or column scale, or its moments; ``V`` of a layer with one
    output, a value head) and a replicated ``f``: DTensor has no in-place rule for that layout, but on
    the local shard it is exact (the ranks holding an empty shard change nothing). Returns False,
    doing nothing, for every other pair."""
    fp, xp = getattr(f, "placements", None), getattr(x, "placements", None)
    if xp is None or fp is None or not all(p.is_replicate() for p in fp) or all(p.is_replicate() for p in xp):
        return False
    if any(p.is_shard() and x.shape[p.dim] != 1 for p in xp):
        return False  # not the size-1 case: leave it to DTensor
    getattr(x.to_local(), op)(f.to_local())
    return True


def _mul_(x: torch.Tensor, f: torch.Tensor) -> None:
    if not _local_inplace(x, f, "mul_"):
        x.mul_(f)


def _div_(x: torch.Tensor, f: torch.Tensor) -> None:
    if not _local_inplace(x, f, "div_"):
        x.div_(f)


def _transport(optimizer, plan, norms, state: str) -> None:
    """Apply the state policy; ``"rescale"`` multiplies V's moments by a^k and s's by a^-k."""
    for i, param, sign, moments in plan:
        if state == "reset":
            del optimizer.state[param]
        for moment, order in moments:
            _mul_(moment, norms[i].pow(sign * order).to(moment.dtype))


@torch.no_grad()
def _renormalize_one(t: PolarTensor, a: torch.Tensor) -> None:
    """``V ← V/a`` in place, and ``s ← a·s`` for absorb."""
    _div_(t.direction, a)
    if t.polar.mode == "absorb":
        _mul_(t.scale, a)


def _renormalize_reference(targets: list[PolarTensor]) -> list[torch.Tensor]:
    norms = _slice_norms(targets)
    for t, a in zip(targets, norms):
        _renormalize_one(t, a)
    return norms


# the largest tensor (entries) stacked, per device type (None: any other device): on a GPU a launch
# costs about as much as moving 4M entries; on CPU an op's dispatch about as much as 16K
STACK_MAX_NUMEL = {"cpu": 1 << 14, None: 1 << 22}


def _stack_limit(device: torch.device) -> int:
    return STACK_MAX_NUMEL.get(device.type, STACK_MAX_NUMEL[None])


class Plan:
    """A model's renormalization targets and their groups, built once and reused while it is valid:
    nothing the optimizer holds polarized, unpolarized or loaded since (:func:`polaropt.guard.signature`), the
    optimizer's groups the same size (a module added to the model and to the optimizer), and every
    ``s`` and ``V`` the same tensor object (``load_state_dict(assign=True)``, ``fully_shard``,
    hand-replaced leaves) with the same dtype and device (a ``.to()`` of part of the model). Building
    one walks the model; checking one does not."""

    def __init__(self, model: nn.Module, optimizer=None):
        self.signature = guard.signature(optimizer)
        self.targets = _targets(model)
        self.leaves = [(t.module.parametrizations[t.name]._parameters, t.scale, t.direction, t.direction.dtype,
                        t.direction.device) for t in self.targets]
        self.groups = _groups(self.targets)

    def valid(self, optimizer=None) -> bool:
        return self.signature == guard.signature(optimizer) and all(
            p.get("original0") is s and p.get("original1") is v and v.dtype == dtype and v.device == device
            for p, s, v, dtype, device in self.leaves)


def _groups(targets: list[PolarTensor]) -> list[list[int]]:
    groups: dict = {}
    for i, t in enumerate(targets):
        groups.setdefault(_group_key(t), []).append(i)
    return list(groups.values())


def _group_key(t: PolarTensor):
    """Targets with equal keys renormalize as one stacked batch; a DTensor (an FSDP2 shard) gets a key
    of its own, since stacking shards would move the sharded dim."""
    v = t.direction
    if hasattr(v, "placements"):
        return ("alone", id(v))
    return (v.device, v.dtype, tuple(v.shape), t.polar.dims, t.polar.eps, t.polar.mode)


@torch.no_grad()
def _renormalize_grouped(targets: list[PolarTensor], check: bool = True, stack_max: int | None = None,
                         groups: list[list[int]] | None = None) -> list[torch.Tensor]:
    """The batched renormalization; ``check=False`` skips the NaN/Inf check (the lazy check reads the
    parameters later, so nothing syncs here); ``stack_max`` overrides :data:`STACK_MAX_NUMEL` (tests force
    stacking on CPU with it); ``groups`` is :func:`_groups` of ``targets`` when the caller keeps it
    (a :class:`Plan`). Returns ``a`` per target (views into the group's batch)."""
    norms: list = [None] * len(targets)
    batches = []  # (indices, stacked V or None, a)
    checked = []  # what the NaN/Inf check reads: each batch's a, and its scales (stacked when grouped)
    shards = [i for i, t in enumerate(targets) if hasattr(t.direction, "placements")]
    if shards:  # FSDP2: the norms that span the shards finished by one all-reduce, not one per tensor
        for i, n in zip(shards, slice_norms([targets[i].direction for i in shards],
                                             [targets[i].polar.dims for i in shards])):
            norms[i] = n
    for idx in _groups(targets) if groups is None else groups:
        v0 = targets[idx[0]].direction
        limit = _stack_limit(v0.device) if stack_max is None else stack_max
        if len(idx) == 1 or hasattr(v0, "placements") or v0.numel() > limit:
            for i in idx:
                t = targets[i]
                if norms[i] is None:
                    norms[i] = slice_norm(t.direction, t.polar.dims)
                batches.append(([i], None, norms[i]))
                if check:
                    checked += [norms[i], t.scale]
            continue
        t0 = targets[idx[0]]
        stacked = torch.stack([targets[i].direction for i in idx])
        a = slice_norm(stacked, tuple(d + 1 for d in t0.polar.dims))
        for i, n in zip(idx, a.unbind(0)):
            norms[i] = n
        batches.append((idx, stacked, a))
        if check:
            checked += [a, torch.stack([targets[i].scale for i in idx])]
    if check and any_nonfinite(checked):  # one sync per (device, dtype)
        _check_now(targets, norms)  # names the tensors; raises before anything is written
    # every ``a`` clamped at once, then one division per stacked group and one multi-tensor division for
    # the tensors alone; the scales of every absorb tensor multiplied at once (a C++ loop, not Python's)
    torch._foreach_clamp_min_([a for _, _, a in batches], [targets[idx[0]].polar.eps for idx, _, _ in batches])
    vs, quotients, alone, alone_a, ss, factors = [], [], [], [], [], []
    for idx, stacked, a in batches:
        t0 = targets[idx[0]]
        if stacked is None:  # one tensor: in place, exactly as the reference loop
            if hasattr(t0.direction, "placements"):  # an FSDP2 shard: DTensor's own in-place rules
                _renormalize_one(t0, a)
                continue
            alone.append(t0.direction)
            alone_a.append(a)
            if t0.polar.mode == "absorb":
                ss.append(t0.scale)
                factors.append(a)
            continue
        vs += [targets[i].direction for i in idx]
        quotients += stacked.div_(a).unbind(0)  # V's dtype, divided in a's: as the reference's V.div_(a)
        if t0.polar.mode == "absorb":
            ss += [targets[i].scale for i in idx]
            factors += a.unbind(0)
    if alone:
        torch._foreach_div_(alone, alone_a)
    if vs:
        torch._foreach_copy_(vs, quotients)
    if ss:
        torch._foreach_mul_(ss, factors)
    return norms


def renormalize_(model: nn.Module, *, optimizer: torch.optim.Optimizer | None = None, state: str = "keep",
                 foreach: bool = True) -> None:
    """Renormalize every ``"project"``/``"absorb"`` tensor of ``model`` in place.

    Args:
        optimizer: the optimizer holding ``s`` and ``V``; needed for ``state="reset"``/``"rescale"``.
        state: ``"keep"``, ``"reset"`` or ``"rescale"`` (see :mod:`polaropt.transport`).
        foreach: the batched path (default: one set of kernels per group of same-shaped tensors) or
            the plain per-tensor reference loop.

    Checks for NaN/Inf first, with one host sync (:func:`polaropt.attach` offers a lazy check
    without it).

    Raises:
        FloatingPointError: a NaN/Inf in a direction or scale; names the tensors and modifies none.
        ValueError: a state policy this optimizer cannot carry out; modifies nothing.
    """
    check_state_policy(state, optimizer)
    renormalize_targets(_targets(model), optimizer=optimizer, state=state, foreach=foreach)


def renormalize_targets(targets: list[PolarTensor], *, optimizer=None, state: str = "keep", foreach: bool = True,
                        check: bool = True, groups=None) -> None:
    """:func:`renormalize_` of given targets (and their :func:`_groups`, if kept); ``check=False``
    skips the NaN/Inf check (the lazy check's case: no host sync)."""
    if not targets:
        return
    plan = _plan_transport(optimizer, targets, state)
    norms = _renormalize_grouped(targets, check, groups=groups) if foreach else _renormalize_reference(targets)
    with torch.no_grad():
        _transport(optimizer, plan, norms, state)
    for t in targets:
        guard.mark_clean(t.polar)
