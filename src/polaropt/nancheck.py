"""The NaN/Inf check around ``optimizer.step()`` (:func:`polaropt.attach`): immediate or lazy.

- ``check="step"``: before every step, the gradients are checked with one host sync, and a NaN or
  Inf refuses the step before the optimizer writes anything; the renormalization after the step
  checks ``s`` and ``V`` the same way before it writes. With ``optimizer.step(closure)`` the
  gradients each call of the closure computes are checked as it returns (those present before
  ``step()`` are not: an optimizer that also uses them, as SAM does, should be stepped without a
  closure); an optimizer that writes between closure calls (LBFGS) may have moved parameters by
  then, and the error names them. The price is a device sync and a pass over the gradients per step.
- ``check="lazy"`` (:class:`LazyCheck`): nothing at all on the step. A NaN or Inf that reaches a
  parameter or the optimizer's state stays there (every update, renormalization and moment
  propagates it: ``p − lr·NaN``, ``β·m + (1−β)·NaN``, ``V/NaN``), so the parameters themselves are
  the flag. They are read every ``check_every`` steps, whenever :func:`polaropt.check_finite` is
  called, before the first step after a ``load_state_dict`` or after a param group was added or
  grown, and when the optimizer's
  ``state_dict()`` is taken (an optimizer checkpoint never holds an unnoticed NaN; a model's
  ``state_dict()`` is not read): one reduction over the parameters, their optimizer state and the attached models'
  ``s`` and ``V``, and one host sync. A read that finds a NaN or Inf raises ``FloatingPointError``
  naming the tensors and the steps since the last clean read; a bad value lives at most
  ``check_every`` steps (the steps after it run on it, and their losses show it). By default nothing
  is copied and nothing restored (resume from the last checkpoint, which holds no NaN). With
  ``restore=True`` a read that finds them finite also takes a *snapshot* (a copy of all of those),
  except the one at ``state_dict()``, which only checks (so saving a checkpoint on one DDP rank
  alone moves neither that rank's schedule nor its snapshot), and a failed read copies the snapshot
  back first (or only raises, naming them, when the bad values are all in parameters the snapshot
  does not hold): then a failure never leaves a corrupted parameter behind. The snapshot costs
  memory: one copy of the parameters and of the optimizer's state (for Adam/AdamW, three times the
  parameters). A bad gradient that never reaches a parameter (a step
  ``torch.amp.GradScaler`` skipped) is no failure and is not reported; neither is one an optimizer
  turns into a finite update (a stateless sign descent: ``sign(NaN) = 0``). A loaded checkpoint
  (the optimizer's or an attached model's ``load_state_dict``) is read (with ``restore=True`` it becomes the snapshot).
  Under FSDP2 a read is a collective: every rank must make it (``check_finite``, ``state_dict()``);
  under DDP ``check_finite`` belongs on every rank too (it restarts the schedule, and with ``restore=True``
  snapshots), ``state_dict()`` may be taken on one;
  the reads the check starts itself are the same on every rank of a program that steps the same
  optimizer everywhere (a model polarized, copied or loaded on one rank alone starts none).

Under ``torch.compile`` the lazy check adds nothing to the graph. Its periodic read is a Python
decision on a step count, which a compiled step cannot make without recompiling, so it does not run
inside one: the read happens at :func:`polaropt.check_finite` (call it where you log) and at
``state_dict()``.
"""

from __future__ import annotations

import torch

from . import guard
from .slices import nonfinite

CHECKS = ("lazy", "step", "off")


def check_mode(check: str, check_every, restore: bool = False) -> str:
    """Validate the check settings; return the check (``None`` is ``"off"``)."""
    check = "off" if check is None else check
    if check not in CHECKS:
        raise ValueError(f"unknown check {check!r}; valid choices are {', '.join(map(repr, CHECKS))} (or None: off)")
    if not isinstance(check_every, int) or isinstance(check_every, bool) or check_every < 1:
        raise ValueError(f"check_every must be a positive int (read the lazy NaN/Inf flag every k steps), "
                         f"got {check_every!r}")
    if not isinstance(restore, bool):
        raise ValueError(f"restore must be True or False, got {restore!r}")
    if restore and check != "lazy":
        raise ValueError(f"restore=True keeps a copy for the lazy read to go back to; check={check!r} has no lazy read "
                         "(use check='lazy', or restore=False)")
    return check


def _tensors_in(obj) -> list[torch.Tensor]:
    """Every floating-point tensor in an optimizer's per-parameter state, nested lists and dicts included."""
    if isinstance(obj, torch.Tensor):
        return [obj] if obj.is_floating_point() or obj.is_complex() else []
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors_in(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors_in(v)]
    return []


def _clone(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_clone(v) for v in obj)
    return obj


def _copy_into(live, saved) -> bool:
    """Copy ``saved`` into ``live`` in place where they have the same structure (the tensors keep their
    addresses: a compiled or CUDA-graphed optimizer step keeps working); False if they differ."""
    if isinstance(saved, torch.Tensor):
        if (isinstance(live, torch.Tensor) and live.shape == saved.shape and live.dtype == saved.dtype
                and live.device == saved.device):
            live.copy_(saved)
            return True
        return False
    if isinstance(saved, dict):
        if not isinstance(live, dict) or live.keys() != saved.keys():
            return False
        for k, v in saved.items():
            if not isinstance(v, (torch.Tensor, dict, list, tuple)):
                live[k] = v  # a plain value (a step count kept as a float) is set back
            elif not _copy_into(live[k], v):
                return False  # the caller replaces the whole entry
        return True
    if isinstance(saved, (list, tuple)):
        return (isinstance(live, (list, tuple)) and len(live) == len(saved)
                and all(_copy_into(a, b) for a, b in zip(live, saved)))
    return live == saved


def _state_maps(optimizer) -> list:
    """The dicts that hold the optimizer's per-parameter state: one, or a ChainMap's maps (a
    :class:`polaropt.RecipeOptimizer`). They are only looked up with ``in``, never indexed blindly:
    indexing a ``defaultdict`` (or a ChainMap of them) creates an entry."""
    return list(getattr(optimizer.state, "maps", [optimizer.state]))


def _state_of(maps: list, t) -> tuple[int, dict | None]:
    for i, m in enumerate(maps):
        if t in m:
            return i, m[t]
    return -1, None


class LazyCheck:
    """The periodic NaN/Inf read of one optimizer's parameters and state (and, with ``restore``, the snapshot it
    restores).

    The scope is every parameter the optimizer steps, with its state, plus ``tensors()``: the
    attached models' ``s`` and ``V`` that no optimizer steps (a fixed scale, which absorb still
    rescales). A trainable ``s`` or ``V`` in another optimizer is that optimizer's business: its
    moments cannot be restored from here. ``names(optimizer)`` maps ``id(tensor)`` to a name;
    ``before_read()``, if given, runs at the start of every read.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, every: int, tensors, names, before_read=None,
                 restore: bool = False):
        self.every, self._tensors, self._names, self._before_read = every, tensors, names, before_read
        self.restore = restore  # keep a snapshot to go back to (memory: the parameters and the optimizer state)
        self.since = 0      # eager steps since the last read
        self.steps = 0      # eager steps since attach
        self.good_at = 0    # the step of the snapshot
        self.clean_at = 0   # the step of the last clean read (a check without a snapshot counts)
        self.snapshot = None
        self.covered: set[int] = set()  # ids of the tensors the last clean read covered
        self.groups = None  # the optimizer's param group sizes when the snapshot was taken
        self.reload = False  # a load_state_dict since the last read: the next read is its first
        self.read(optimizer, when="at attach")

    def before_step(self, optimizer) -> None:
        """Before each step: read now if a load happened since the last read, or a param group was
        added or grown since the snapshot (it must hold the new parameters, loaded or not, before
        they move).

        Not on :func:`polaropt.guard.signature`, whose version also moves when a tensor this
        optimizer watches is polarized, unpolarized or replaced by a load: under FSDP2 a read is a
        collective, and a model handled on one rank alone (to evaluate or export) must not start one
        there. A tensor that joins the scope without a new param group (a fixed scale polarized
        after attach) is covered from the next periodic read on."""
        if self.reload or guard.group_sizes(optimizer) != self.groups:
            self.read(optimizer)

    def stepped(self, optimizer) -> None:
        """After each step: count it (eagerly) and read every ``every`` steps."""
        if torch.compiler.is_compiling():
            return
        self.steps += 1
        self.since += 1
        if self.since >= self.every:
            self.read(optimizer)

    @torch.no_grad()
    def read(self, optimizer, when: str | None = None, forget: bool = True, snapshot: bool = True) -> None:
        """One reduction and one host sync per device (alarms confirmed tensor by tensor): when everything is
        finite, restart the schedule (and with ``restore``, snapshot); otherwise raise (with ``restore``, after
        restoring the snapshot). ``when`` names a read
        that must not restore ("at attach", "in the model being attached"; the first read after a
        load is one too): it raises without restoring, and with ``forget`` drops the snapshot (a
        bad load leaves no clean state to go back to). ``snapshot=False`` (the read at
        ``state_dict()``, which a DDP job may take on one rank alone) never moves the periodic
        schedule: a clean read changes nothing, and a failed one restores and raises but leaves the
        next periodic read where it was, so the ranks still read, raise and restore together."""
        if self._before_read is not None:
            self._before_read()
        if self.reload:  # the loaded state becomes the snapshot, whoever reads it
            self.reload, when, snapshot = False, when or "in the state loaded since the last step", True
        scope = self._scope(optimizer)
        maps = _state_maps(optimizer)
        owners, state = [], []
        for t in scope:
            for x in _tensors_in(_state_of(maps, t)[1]):
                owners.append(t)
                state.append(x)
        if snapshot:
            self.since = 0
        bad = nonfinite(scope + state)
        if not bad:
            self.clean_at = self.steps
            self.covered = {id(t) for t in scope}  # ids only: which tensors a later alarm can blame on a step
            if snapshot:
                self.good_at = self.steps
                if self.restore:
                    self._take(optimizer, scope, maps)
                else:
                    self.groups = guard.group_sizes(optimizer)
            return
        # the parameter each bad tensor belongs to (a state tensor: its parameter)
        blamed = {id(scope[i] if i < len(scope) else owners[i - len(scope)]) for i in bad}
        if when is None and self.snapshot is not None:
            if blamed.isdisjoint(id(t) for t, _ in self.snapshot[0]):
                # only in what the snapshot does not hold (added since): restoring would roll the rest
                # back and fix nothing
                when, forget = "in parameters added since the last snapshot", False
        names = self._names(optimizer)

        def name(t):
            return names.get(id(t), f"a tensor of shape {tuple(t.shape)}")
        named = list(dict.fromkeys(name(scope[i]) if i < len(scope) else f"the {type(optimizer).__name__} state of "
                                   f"{name(owners[i - len(scope)])}" for i in bad))
        shown = ", ".join(named[:4]) + (f" and {len(named) - 4} more" if len(named) > 4 else "")
        if when is None and not self.restore:  # the default: no copy kept, so nothing to go back to
            clean_at = self.clean_at  # the values stay bad: every later read reports the same range
            if blamed.isdisjoint(self.covered):
                where = "in parameters added since the last clean read"
            elif self.steps == clean_at:
                where = f"with no step since the last clean read (step {clean_at} since attach), so not by a step"
            else:
                where = (f"entered in the last {self.steps - clean_at} step(s) of {type(optimizer).__name__} (steps "
                         f"{clean_at + 1}–{self.steps} since attach; check='lazy' reads every {self.every} steps)")
            raise FloatingPointError(
                f"NaN or Inf {where}: {len(named)} tensors hold one now ({shown}; the steps after it spread it, so "
                "check='step' names where it entered). Nothing was restored: resume from your last checkpoint "
                "(optimizer.state_dict() refuses to save one holding NaN or Inf), or attach with restore=True to "
                "keep a copy to go back to. Lower the learning rate or check the loss and inputs")
        if when is not None or self.snapshot is None:
            if forget:
                self.snapshot = None  # nothing clean to go back to: every later read raises until this is fixed
            raise FloatingPointError(f"NaN or Inf {when or 'with no clean read to go back to'}, in {shown}; "
                                     f"nothing was restored. Fix the initialization or the checkpoint")
        missing = self._restore(optimizer, scope, maps)
        clean_at, self.clean_at = self.clean_at, self.steps  # restored: clean again from here
        raise FloatingPointError(
            f"NaN or Inf entered in the last {self.steps - clean_at} step(s) of {type(optimizer).__name__} (steps "
            f"{clean_at + 1}–"
            f"{self.steps} since attach; check='lazy' reads every {self.every} steps): {len(named)} tensors hold one "
            f"now ({shown}; the steps after it spread it, so check='step' names where it entered). Every parameter it "
            f"steps, its optimizer state and the attached models' fixed scales are restored to step {self.good_at}, "
            "the last snapshot"
            + (f", except {', '.join(name(t) for t in missing)}, added since (still non-finite)" if missing else "")
            + "; lr schedules, gradients and polaropt's own step count are not. Lower the learning rate or check the "
            "loss and inputs")

    # the snapshot ---------------------------------------------------------------------------------
    def _scope(self, optimizer) -> list[torch.Tensor]:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        fixed = list(self._tensors())
        if any(hasattr(p, "placements") for p in params):
            # FSDP2: after a forward the root holds its weights unsharded, as plain tensors whose storage
            # the next backward frees; restoring into one would write into freed memory. Only the shards
            # (what the module holds again after a step) are snapshotted and restored.
            fixed = [t for t in fixed if hasattr(t, "placements")]
        seen, out = set(), []
        for t in params + fixed:
            if id(t) not in seen:
                seen.add(id(t))
                out.append(t)
        return out

    @torch.no_grad()
    def _take(self, optimizer, scope, maps) -> None:
        self.snapshot = None  # free the old copy first: never two at once
        states = {}
        for t in scope:
            i, st = _state_of(maps, t)
            if i >= 0:
                states[id(t)] = (i, _clone(st))
        self.snapshot = ([(t, t.detach().clone()) for t in scope], states)
        self.groups = guard.group_sizes(optimizer)

    @torch.no_grad()
    def _restore(self, optimizer, scope, maps) -> list[torch.Tensor]:
        """Copy the snapshot back (in place where the structure is unchanged); return the tensors of
        ``scope`` the snapshot does not hold."""
        tensors, states = self.snapshot
        held = set()
        for t, copy in tensors:
            held.add(id(t))
            t.copy_(copy)
            now, live = _state_of(maps, t)
            at, saved = states.get(id(t), (-1, None))
            if saved is None:
                if now >= 0:
                    del maps[now][t]
            elif now != at or not _copy_into(live, saved):
                if now >= 0 and now != at:
                    del maps[now][t]
                maps[at][t] = _clone(saved)
        return [t for t in scope if id(t) not in held]
