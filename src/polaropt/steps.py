"""What polaropt does around ``optimizer.step()``: one controller per optimizer, hooks in a fixed order.

Before the step (``register_step_pre_hook``):

1. **NaN/Inf check** (:mod:`polaropt.nancheck`): with ``check="step"``, the gradients the step uses
   (a closure's as it returns); with ``check="lazy"`` (the default), a read only when a load or a
   param group added or grown happened since the last one; ``"off"``: nothing.
2. **Step-time lr multipliers** (:class:`polaropt.TwoStageLR`, :class:`polaropt.RadiusSquaredLR`):
   each multiplies its groups' *current* lr, whatever other schedulers set it to, for the duration
   of this step.

After the step (``register_step_post_hook``, in this order):

3. The multiplied lrs are put back, so chained torch schedulers (``CosineAnnealingLR``,
   ``LinearLR``, ``OneCycleLR``, ...) always read and write the lr they set, in any order.
4. **Renormalization** (with :func:`attach`): every ``every``-th step, :func:`polaropt.renormalize_`
   with the chosen state policy; on the other steps the moved directions are recorded as
   deliberately left until later (so :mod:`polaropt.guard` does not raise). The step count lives in
   ``optimizer.param_groups[0]["polar_steps"]``, so it is saved and restored with the optimizer's
   ``state_dict``.
5. **Lazy check** (``check="lazy"``): every ``check_every``-th eager step, the parameters and their state
   are read.

Under ``torch.compile`` (the hooks are traced with ``opt.step()``), nothing here reads a value that
changes from step to step, so the compiled step is neither broken nor recompiled: the Python step
counts (``polar_steps`` and the lazy check's) only advance in eager steps, except with ``every > 1``,
whose decision needs the count: there it is kept in one eager function (one graph break).

All of this sits in one pre-hook and one post-hook per optimizer, whatever the order in which
``attach`` and the schedules were created. (Separately, :mod:`polaropt.guard` keeps torch's global
optimizer step hooks, which watch every optimizer for replaced parameters and stale directions.)
"""

from __future__ import annotations

import warnings
import weakref

import torch
from torch import nn

from . import guard
from .nancheck import LazyCheck, check_gradients, check_mode, checked_closure
from .polar import _is_fsdp_module, polar_tensors
from .renorm import Plan, _plan_transport, _targets, renormalize_targets
from .transport import check_state_policy

_controls = weakref.WeakKeyDictionary()  # optimizer -> _Control


class _Control:
    """polaropt's hooks on one optimizer; removed from torch when nothing uses them any more."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = weakref.ref(optimizer)
        self.attached: list[dict] = []     # {"model", "state", "every", "check", "check_every", "restore", "plan"}
        self.lazy: LazyCheck | None = None  # the periodic NaN/Inf read, with check="lazy"
        self.multipliers: list = []        # weak methods: factors(optimizer) -> {group index: factor}
        self.applied: list[tuple[int, float]] | None = None  # (group, lr before) while a step runs
        self.handles = (optimizer.register_step_pre_hook(self._pre), optimizer.register_step_post_hook(self._post))

    def _models(self):
        return [a["model"] for a in self.attached]

    def release_if_unused(self, read: bool = True) -> None:
        """Remove the hooks nothing uses. The lazy check goes with the last attached model, after a last
        read unless ``read`` is False (leaving a ``with`` block by an exception: under FSDP2 a read is a
        collective that the ranks which did not fail would not join)."""
        opt = self.optimizer()
        if not self.attached and not self.multipliers:
            for h in self.handles:
                h.remove()
            if opt is not None:
                _controls.pop(opt, None)
        if self.lazy is not None and not self.attached:
            lazy, self.lazy = self.lazy, None
            lazy.close()
            if read and opt is not None:
                lazy.read(opt)  # last: it may raise

    def _pre(self, optimizer, args, kwargs) -> None:
        self._restore(optimizer)  # a previous step that raised inside the optimizer left them applied
        if self.lazy is not None:  # a load or new parameters since the last read: read them before they move
            self.lazy.before_step(optimizer)
        # under torch.amp.GradScaler, an optimizer that unscales inside its (fused) step gets the
        # scaler's found_inf and skips the update itself: its gradients are still scaled (Inf is
        # the scaler's business), so they are not checked here
        closure = None
        if self.attached and self.attached[0]["check"] == "step" and _scaler_found_inf(optimizer) is None:
            closure = kwargs.get("closure", args[1] if len(args) > 1 else None)  # args[0] is the optimizer
            if not callable(closure):  # no closure (or another positional argument): the gradients are here now
                closure = None
                check_gradients(optimizer, self._models())
            else:  # the closure computes the gradients inside step(): check them as it returns, before any update
                me = weakref.ref(self)
                closure = checked_closure(closure, optimizer, self._models(),
                                          lambda: me() is not None and me()._restore(optimizer))
        if self.multipliers:
            # registered before the loop: if a schedule raises midway, what was applied is put back
            # at the next step's start (_restore) instead of staying multiplied
            applied = self.applied = []
            for ref in list(self.multipliers):
                factors = ref()
                if factors is None:  # the schedule was garbage-collected: it stops acting
                    self.multipliers.remove(ref)
                    continue
                for i, factor in factors(optimizer).items():
                    group = optimizer.param_groups[i]
                    applied.append((i, group["lr"]))
                    group["lr"] = group["lr"] * factor
        if closure is not None:  # step(closure) or step(closure=...): the optimizer gets the checked one, in its place
            if "closure" in kwargs:
                return args, {**kwargs, "closure": closure}
            return args[:1] + (closure,) + args[2:], kwargs

    def _restore(self, optimizer) -> None:
        if self.applied is not None:
            for i, lr in reversed(self.applied):
                optimizer.param_groups[i]["lr"] = lr
            self.applied = None

    def _post(self, optimizer, args, kwargs) -> None:
        self._restore(optimizer)
        if not self.attached:
            return
        found_inf = _scaler_found_inf(optimizer)
        if found_inf is not None and bool(found_inf):  # GradScaler: the fused step skipped the update
            for a in self.attached:
                for t in _targets(a["model"]):
                    guard.mark_clean(t.polar)
            return
        # every=1 needs no count; a compiled step must not read one (it changes at every step)
        counted = not torch.compiler.is_compiling() or any(a["every"] > 1 for a in self.attached)
        count = _count_step(optimizer.param_groups[0]) if counted else 0
        for a in self.attached:
            plan = a["plan"]
            if plan is None or not plan.valid(optimizer):
                plan = a["plan"] = Plan(a["model"], optimizer)
            if a["every"] == 1 or count % a["every"] == 0:
                renormalize_targets(plan.targets, optimizer=optimizer, state=a["state"], check=a["check"] == "step",
                                    groups=plan.groups)
            else:
                for t in plan.targets:
                    guard.mark_clean(t.polar)
        if self.lazy is not None:
            self.lazy.stepped(optimizer)


@torch._dynamo.disable  # under torch.compile: one graph break, where every > 1 needs the count
def _count_step(group: dict) -> int:
    group["polar_steps"] = count = group.get("polar_steps", 0) + 1
    return count


def _scaler_found_inf(optimizer):
    """GradScaler's found_inf for this step, or None: torch.amp.GradScaler sets it on an optimizer
    that unscales inside ``step()`` (``_step_supports_amp_scaling``, e.g. fused AdamW) just before
    the step and deletes it after."""
    return getattr(optimizer, "found_inf", None)


def control(optimizer: torch.optim.Optimizer) -> _Control:
    c = _controls.get(optimizer)
    if c is None:
        c = _controls[optimizer] = _Control(optimizer)
    return c


class AttachHandle:
    """What :func:`attach` returns: ``remove()`` detaches (like torch's ``RemovableHandle``)."""

    def __init__(self, ctl: _Control, entry: dict):
        # the controller weakly: a handle kept after its optimizer is dropped keeps no snapshot or hook
        self._ctl, self._entry = weakref.ref(ctl), entry

    def remove(self, read: bool = True) -> None:
        """Detach; with the lazy check, after a last read of the flag (``read=False`` skips it: leaving a
        ``with`` block by an exception does, since under FSDP2 a read is a collective that the other
        ranks, which did not fail, would not join)."""
        ctl = self._ctl()
        if ctl is not None and self._entry in ctl.attached:
            opt = ctl.optimizer()
            try:  # a last read while this model is still covered (with restore=True it restores, then raises)
                if read and ctl.lazy is not None and len(ctl.attached) > 1 and opt is not None:
                    ctl.lazy.read(opt)
            finally:
                ctl.attached.remove(self._entry)
                if ctl.lazy is not None:
                    ctl.lazy.unwatch(self._entry["model"])
                ctl.release_if_unused(read)  # the last model: its final read happens here

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.remove(read=exc_type is None)


def _stateless(optimizer) -> bool:
    """True when ``reset`` can drop nothing: plain SGD (no momentum) or an optimizer that keeps no state."""
    if getattr(optimizer, "stateless", False):
        return True
    return isinstance(optimizer, torch.optim.SGD) and all(g.get("momentum", 0) == 0 for g in optimizer.param_groups)


def attach(optimizer: torch.optim.Optimizer, model: nn.Module, *, state: str = "keep", every: int = 1,
           check: str | None = "lazy", check_every: int = 100, restore: bool = False) -> AttachHandle:
    """Guard and renormalize ``model`` around every ``optimizer.step()``; return a removable handle.

    - NaN/Inf is guarded against in every mode, ``free`` and ``normalize`` included. ``check``:

      - ``"lazy"`` (default): nothing on the step (no host sync, no pass over the gradients) and no
        copy of anything. A NaN or Inf that reaches a parameter or the optimizer state stays there,
        so those are read (one reduction, one sync) every ``check_every`` steps, at
        :func:`check_finite`, at ``optimizer.state_dict()`` (a checkpoint never holds one), and before
        the first step after a load or after parameters were added to the optimizer. A bad value
        lives at most ``check_every`` steps; then ``FloatingPointError`` names the tensors holding
        one and the steps it entered in. Nothing is restored: resume from the last checkpoint.
        With ``restore=True`` a read that finds everything finite also keeps a copy (a snapshot) of
        the parameters, the optimizer state and this model's fixed scales, and a failed read puts
        it back before raising; that costs one copy of the parameters and of the optimizer state
        (Adam: 3× the parameters), refreshed at each clean read except ``state_dict()``'s
        (:mod:`polaropt.nancheck`).
      - ``"step"``: one host sync per step; a bad gradient raises before the optimizer writes
        anything (with ``optimizer.step(closure)`` too: the gradients the closure computes are
        checked before the update), a bad ``s`` or ``V`` before the renormalization writes.
      - ``"off"`` (or ``None``): no NaN/Inf check; only the renormalization runs around the step.

      All attachments to one optimizer share its check, so they must agree on all three settings.
    - After every ``every``-th step, the ``"project"``/``"absorb"`` tensors are renormalized
      (:func:`polaropt.renormalize_`) and the optimizer state is handled by ``state``:

      - ``"keep"``: the state stays as it is (Liu's notebooks).
      - ``"rescale"``: Adam/AdamW/SGD moments are transported into the new coordinates (exact;
        :mod:`polaropt.transport`). ``s`` and ``V`` must be in this optimizer.
      - ``"reset"``: the state of every renormalized tensor is **deleted**. With ``every=1`` that is
        after every step, so Adam never has more than one gradient in its moments: each update is
        ``lr·g/(|g|+eps) ≈ lr·sign(g)`` (sign descent) and momentum never builds up. A warning says
        so; use ``every=k > 1`` (a restart every k steps) or ``"rescale"``.

    Under ``torch.compile(train_step)`` the hooks trace into the graph without a graph break or a
    recompile (``check="lazy"``, ``every=1``): there the lazy read runs only at
    :func:`check_finite` (call it where you log) and ``state_dict()``. ``every > 1`` costs one graph
    break (the step count is kept eagerly); ``check="step"`` one per read.

    ``every=k > 1`` lets ``V`` leave the sphere for up to ``k − 1`` steps (mode ``"project"`` and
    ``"absorb"`` then train like ``"free"`` in between). The step count is kept in
    ``optimizer.param_groups[0]["polar_steps"]`` and so survives a checkpoint.

    Works with any ``torch.optim`` optimizer (through ``register_step_pre_hook`` /
    ``register_step_post_hook``); validates ``state`` against this optimizer now.

    Example:
        >>> import torch, polaropt as po
        >>> model = po.polarize(torch.nn.Linear(4, 2), scale="row", mode="absorb")
        >>> opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        >>> handle = po.attach(opt, model, state="rescale")
        >>> model(torch.randn(8, 4)).square().mean().backward(); opt.step()
        >>> bool(torch.allclose(po.direction_of(model).norm(dim=1), torch.ones(2)))
        True
        >>> handle.remove()
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"attach expects a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"attach expects the model (an nn.Module) second, got {type(model).__name__}")
    check_state_policy(state, optimizer)
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise ValueError(f"every must be a positive int (renormalize every k steps), got {every!r}")
    check = check_mode(check, check_every, restore)
    refuse_orphans(model)
    check_sharding(model)
    # a policy that cannot be carried out is refused now, not at the first step
    if state != "keep":
        _plan_transport(optimizer, _targets(model), state)
    if state == "reset" and every == 1 and not _stateless(optimizer):
        warnings.warn(
            f"attach(state='reset', every=1) deletes {type(optimizer).__name__}'s state of every renormalized tensor "
            "after every step: adaptive moments restart each step (Adam becomes sign descent, lr·sign(g)) and momentum "
            "never builds up. Use every=k > 1 or state='rescale' unless that is what you want.",
            UserWarning, stacklevel=2)
    ctl = control(optimizer)
    for other in ctl.attached:
        if (other["check"], other["check_every"], other["restore"]) != (check, check_every, restore):
            raise ValueError(
                f"this {type(optimizer).__name__} is already attached with check={other['check']!r}, "
                f"check_every={other['check_every']}, restore={other['restore']}; one optimizer has one NaN/Inf check, "
                f"so attach this model with the same settings (got check={check!r}, check_every={check_every}, "
                f"restore={restore})")
    entry = {"model": model, "state": state, "every": every, "check": check, "check_every": check_every,
             "restore": restore, "plan": None}  # the renormalization's Plan, built at the first step
    ctl.attached.append(entry)
    if check == "lazy":
        try:
            if ctl.lazy is None:  # the check holds the controller weakly: no cycle through the optimizer
                me = weakref.ref(ctl)
                ctl.lazy = LazyCheck(optimizer, check_every, restore, lambda: me()._models() if me() else [])
            else:  # a clean read: the snapshot now covers this model too (a NaN in its new tensors restores nothing)
                ctl.lazy.read(optimizer)
        except BaseException:  # e.g. a NaN already there: attach leaves nothing behind
            ctl.attached.remove(entry)
            if ctl.lazy is not None:
                ctl.lazy.unwatch(model)
            ctl.release_if_unused(read=False)
            raise
    return AttachHandle(ctl, entry)


def check_finite(optimizer: torch.optim.Optimizer) -> None:
    """Run ``optimizer``'s lazy NaN/Inf read now (one reduction, one host sync): if a parameter, its
    state, or an attached ``s`` or ``V`` holds NaN or Inf, raise ``FloatingPointError`` (with
    ``attach(restore=True)``, after restoring the last snapshot); else restart the periodic schedule
    (and take a new snapshot). Call it where
    you already sync (logging a loss) to bound how long a bad value lives, and under
    ``torch.compile``, where the periodic read does not run. Call it on every rank of a distributed
    job: under FSDP2 the read is a collective, and under DDP a read on one rank alone would give
    that rank its own snapshot and schedule. A no-op without a lazy :func:`attach`."""
    ctl = _controls.get(optimizer)
    if ctl is not None and ctl.lazy is not None:
        ctl.lazy.read(optimizer)


def check_sharding(model: nn.Module) -> None:
    """Refuse a model sharded with FSDP2 whose polar leaves are not sharded: they were polarized after
    ``fully_shard`` (while FSDP had the weights unsharded, e.g. after a forward), so FSDP neither
    reduces their gradients nor shards them, and every rank would train its own copy."""
    if not any(_is_fsdp_module(m) for m in model.modules()):
        return
    plain = [t.qualname for t in polar_tensors(model) if getattr(t.direction, "placements", None) is None]
    if plain:
        raise ValueError(f"{', '.join(plain)} were polarized after fully_shard: FSDP2 does not manage their s and V, "
                         "so each rank would train its own copy. Polarize (polarize_model) first, then call "
                         "fully_shard")


def refuse_orphans(model: nn.Module) -> None:
    """Refuse a model in which a module still holds a Parameter that polarize replaced (a cut tie)."""
    orphaned = guard.orphans(model)
    if orphaned:
        raise ValueError(_orphan_message(orphaned))


def _orphan_message(orphaned: list[tuple[str, str]]) -> str:
    pairs = "; ".join(f"{name} still holds the Parameter that {home} had before it was polarized"
                      for name, home in orphaned)
    return (f"a shared weight was polarized at only some of its owners: {pairs}. The tie is cut (the other owner "
            "trains a copy nothing else reads). Polarize the other owner(s) with the same settings: po.polarize on "
            "each joins the first (po.polarize_model does this for every owner when it polarizes a plain model)")
