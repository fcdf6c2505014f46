"""The NaN/Inf check of :func:`polaropt.attach`, one per optimizer: ``check="step"``, ``"lazy"`` or ``"off"``.

- ``"step"``: :func:`check_gradients` before every step (one sum per gradient, one host sync), so a
  bad gradient refuses the step before anything is written; under ``step(closure)`` the gradients
  are checked as each closure call returns (:func:`checked_closure`), and an optimizer that writes
  between calls (LBFGS) gets the parameters it already moved named.
- ``"lazy"`` (:class:`LazyCheck`): nothing on the step. A NaN or Inf that reaches a parameter or the
  optimizer's state stays there (``p − lr·NaN``, ``β·m + (1−β)·NaN``, ``V/NaN``), so they are the flag,
  read every ``every`` steps, at :func:`polaropt.check_finite`, at ``optimizer.state_dict()`` and
  before the first step after a load or a param group added or grown. A read is one
  :func:`polaropt.slices.nonfinite` over the parameters, their state and the attached models'
  unstepped ``s``/``V`` (one host sync; a collective under FSDP2), the same on every rank of a job
  whose ranks step the same optimizer. A bad read raises ``FloatingPointError`` naming the tensors
  and the steps since the last clean read. By default nothing is kept and nothing restored (a
  checkpoint holds no NaN: resume from it). ``restore=True`` keeps a snapshot (a copy of all of the
  above, taken at each clean *periodic* read) and a bad read puts it back first. The read at
  ``state_dict()`` moves neither the schedule nor the snapshot, so a DDP job may save on one rank.
  A gradient that never reaches a parameter (a step GradScaler skipped, ``sign(NaN) = 0``) is no
  failure. Under ``torch.compile`` the periodic read does not run inside a compiled step (its count
  is Python state): call :func:`polaropt.check_finite` where you log.
"""

from __future__ import annotations

import weakref

import torch

from . import guard
from .polar import polar_tensors
from .slices import nonfinite, slice_norm

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


def names(models, optimizer) -> dict[int, str]:
    """``id(tensor)`` -> its name in the models, else its place in the optimizer."""
    out = {}
    for model in models:
        for qualname, p in model.named_parameters(remove_duplicate=False):
            out.setdefault(id(p), qualname)
    for gi, group in enumerate(optimizer.param_groups):
        for pi, p in enumerate(group["params"]):
            out.setdefault(id(p), f"group {gi} param {pi} {tuple(p.shape)}")
    return out


def _listed(named: list[str]) -> str:
    return ", ".join(named[:4]) + (f" and {len(named) - 4} more" if len(named) > 4 else "")


# check="step" -------------------------------------------------------------------------------------
@torch.no_grad()
def check_gradients(optimizer: torch.optim.Optimizer, models=(), written=()) -> None:
    """Raise ``FloatingPointError`` if a gradient the optimizer is about to use holds NaN or Inf (one
    host sync; global under FSDP2); nothing is modified. ``written``: parameters the optimizer already
    changed in this step (between closure calls), named in the message."""
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    bad_at = nonfinite([p.grad._values() if p.grad.is_sparse else p.grad for p in params])
    if not bad_at:
        return
    known, opt = names(models, optimizer), type(optimizer).__name__
    done = (f"the step was stopped, but {opt} had already changed {_listed([known[id(p)] for p in written])} in "
            "this step (between calls of its closure); those are not restored" if written else
            f"the step was refused before {opt} wrote anything, so every parameter and optimizer state is as it was")
    zero = [f"{t.qualname} ({k} slice(s) of V are exactly zero, so V/‖V‖ is 0/0)" for m in models
            for t in polar_tensors(m) if t.polar.mode == "normalize"
            for k in [int((slice_norm(t.direction.detach(), t.polar.dims) == 0).sum())] if k]
    raise FloatingPointError(f"non-finite gradient (NaN or Inf) in {', '.join(known[id(params[i])] for i in bad_at)}; "
                             f"{done}" + (f". Cause found: {'; '.join(zero)}" if zero else
                                          " (lower the learning rate, or check the loss and inputs)"))


def checked_closure(closure, optimizer, models, on_error):
    """``closure`` whose gradients are checked as it returns, before the optimizer uses them;
    ``on_error()`` runs before the error propagates."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    versions = [p._version for p in params]  # what the optimizer writes between closure calls shows here

    def checked():
        loss = closure()
        try:
            check_gradients(optimizer, models, written=[p for p, v in zip(params, versions) if p._version != v])
        except BaseException:
            on_error()
            raise
        return loss
    return checked


# check="lazy" -------------------------------------------------------------------------------------
def _tensors_in(obj) -> list[torch.Tensor]:
    """Every floating-point tensor in an optimizer's per-parameter state, nested lists and dicts included."""
    if isinstance(obj, torch.Tensor):
        return [obj] if obj.is_floating_point() or obj.is_complex() else []
    values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
    return [t for v in values for t in _tensors_in(v)]


def _clone(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    return type(obj)(_clone(v) for v in obj) if isinstance(obj, (list, tuple)) else obj


def _copied_in_place(live, saved) -> bool:
    """Copy a saved state dict into the live one in place (its tensors keep their addresses, so a
    compiled or CUDA-graphed step keeps working) when both hold the same tensors; False otherwise."""
    same = (isinstance(live, dict) and isinstance(saved, dict) and live.keys() == saved.keys()
            and all(not isinstance(v, (dict, list, tuple)) for v in saved.values())
            and all(isinstance(live[k], torch.Tensor) and live[k].shape == v.shape and live[k].dtype == v.dtype
                    and live[k].device == v.device for k, v in saved.items() if isinstance(v, torch.Tensor)))
    if same:
        for k, v in saved.items():
            if isinstance(v, torch.Tensor):
                live[k].copy_(v)
            else:
                live[k] = v  # a plain value (a step count kept as a float) is set back
    return same


def _state_of(maps: list, t) -> tuple[int, dict | None]:
    """Which of the optimizer's state dicts holds ``t``'s state (one, or a RecipeOptimizer's ChainMap
    maps), and the state; looked up with ``in``, never indexed (indexing a defaultdict creates)."""
    for i, m in enumerate(maps):
        if t in m:
            return i, m[t]
    return -1, None


class LazyCheck:
    """The periodic read of one optimizer (see the module's docstring). ``models()`` gives the attached
    models: their unstepped ``s``/``V`` join the scope and their names name the tensors. It owns its
    hooks (``state_dict``, ``load_state_dict``, and a load post-hook on every module of the models,
    which sees a load through a wrapper or into a part); :meth:`close` removes them."""

    def __init__(self, optimizer: torch.optim.Optimizer, every: int, restore: bool, models):
        self.every, self.restore, self._models = every, restore, models
        self.steps = 0         # eager steps since attach
        self.since = 0         # eager steps since the last periodic read
        self.clean_at = None   # the step of the last clean read
        self.covered = set()   # ids of the tensors it covered
        self.groups = None     # the param group sizes at the last periodic read
        self.reload = False    # a load since the last read: the next read is of what was loaded
        self.snapshot, self.good_at = None, 0  # with restore: ([(tensor, copy)], {id: (map, state)}), its step
        # the hooks hold this check weakly: dropping the optimizer frees the snapshot at once, and a model
        # that outlives the optimizer keeps nothing
        me = self._me = weakref.ref(self)
        self._watched = weakref.WeakKeyDictionary()  # module -> its load hook's handle
        weakref.finalize(self, _remove_all, self._watched)
        self._hooks = [optimizer.register_state_dict_pre_hook(lambda opt: _call(me, "read", opt, periodic=False)),
                       optimizer.register_load_state_dict_post_hook(lambda opt: _call(me, "loaded"))]
        try:
            self.read(optimizer, where="at attach")
        except BaseException:
            self.close()
            raise

    def loaded(self, module=None) -> None:
        if module is None or module in self._watched:  # a deepcopy of the model copies the hook: not our module
            self.reload = True

    def _watch(self) -> None:
        """Hook the load of every module of the attached models not hooked yet (a module added later is
        hooked at the next read)."""
        for model in self._models():
            for m in model.modules():
                if m not in self._watched:
                    self._watched[m] = m.register_load_state_dict_post_hook(_LoadHook(self._me))

    def unwatch(self, model) -> None:
        for m in model.modules():
            handle = self._watched.pop(m, None)
            if handle is not None:
                handle.remove()
        self._watch()  # a module the other attached models share stays watched

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        _remove_all(self._watched)

    def before_step(self, optimizer) -> None:
        """A load, or a param group added or grown, since the last read: read before anything moves
        (a rank-independent test: under FSDP2 a read is a collective)."""
        if self.reload or guard.group_sizes(optimizer) != self.groups:
            self.read(optimizer)

    def stepped(self, optimizer) -> None:
        if not torch.compiler.is_compiling():
            self.steps += 1
            self.since += 1
            if self.since >= self.every:
                self.read(optimizer)

    def _scope(self, optimizer) -> list[torch.Tensor]:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        fixed = [x for m in self._models() for t in polar_tensors(m) for x in (t.scale, t.direction)
                 if not x.requires_grad]
        if any(hasattr(p, "placements") for p in params):
            # FSDP2: after a forward the root holds unsharded weights whose storage the next backward frees;
            # only the shards (what the module holds again after a step) are read and restored
            fixed = [t for t in fixed if hasattr(t, "placements")]
        return list({id(t): t for t in params + fixed}.values())

    @torch.no_grad()
    def read(self, optimizer, periodic: bool = True, where: str | None = None) -> None:
        """Read now; a clean read restarts the schedule (``periodic``) and takes the snapshot (with
        ``restore``); a bad one raises (with ``restore``, after putting the snapshot back when it holds
        a bad tensor and the read is not of a load). ``where`` names a read with no step to blame."""
        self._watch()
        # a load is read as the new starting point, whoever reads it first; until a read finds it clean, every
        # step is refused (training on it would blame the steps)
        if self.reload:
            periodic, where = True, where or "in the state loaded since the last step"
            self.snapshot = None  # a bad load leaves nothing clean to go back to
        scope = self._scope(optimizer)
        maps = list(getattr(optimizer.state, "maps", [optimizer.state]))
        owner, tensors = list(scope), list(scope)  # each tensor read, and the parameter it belongs to
        for t in scope:
            for x in _tensors_in(_state_of(maps, t)[1]):
                owner.append(t)
                tensors.append(x)
        if periodic:
            self.since = 0
        bad = nonfinite(tensors)
        if not bad:
            self.reload, self.clean_at, self.covered = False, self.steps, {id(t) for t in scope}
            if periodic:
                self.groups = guard.group_sizes(optimizer)
                if self.restore:
                    self._take(scope, maps)
            return
        known, opt = names(self._models(), optimizer), type(optimizer).__name__
        blamed = {id(owner[i]) for i in bad}
        shown = list(dict.fromkeys(known.get(id(owner[i]), f"a tensor of shape {tuple(owner[i].shape)}")
                                   if i < len(scope) else f"the {opt} state of {known.get(id(owner[i]), 'a tensor')}"
                                   for i in bad))
        ran, by_steps = self.steps - (self.clean_at or 0), where is None and not blamed.isdisjoint(self.covered)
        if by_steps:
            where = (f"entered in the last {ran} step(s) of {opt} (steps {self.clean_at + 1}–{self.steps} since "
                     f"attach; check='lazy' reads every {self.every} steps)" if ran else
                     f"since the last clean read (step {self.clean_at} since attach, counting eager steps only)")
        where = where or "in parameters added since the last clean read"
        held = {id(t) for t, _ in self.snapshot[0]} if self.snapshot else set()
        if by_steps and not blamed.isdisjoint(held):
            missing = [known.get(id(t), "a tensor") for t in scope if id(t) not in held]
            self._put_back(maps)
            self.clean_at = self.steps
            done = (f"Every parameter {opt} steps, its state and the attached models' fixed scales are restored to "
                    f"step {self.good_at}, the last snapshot" + (f", except {_listed(missing)}, added since" if missing
                                                                 else "")
                    + "; lr schedules, gradients and polaropt's own step count are not")
        elif self.restore:
            done = f"Nothing was restored ({'the snapshot does not hold them' if held else 'no clean read to go back to'})"
        else:
            done = ("Nothing was restored: resume from your last checkpoint (optimizer.state_dict() refuses to save one "
                    "holding NaN or Inf), or attach with restore=True to keep a copy to go back to")
        advice = ("The steps after it spread it (check='step' names where it entered): lower the learning rate or "
                  "check the loss and inputs" if by_steps else "Fix the initialization or the checkpoint")
        held_by = f"{len(shown)} tensors hold" if len(shown) > 1 else "1 tensor holds"
        raise FloatingPointError(f"NaN or Inf {where}: {held_by} one now ({_listed(shown)}). {done}. "
                                 f"{advice}")

    def _take(self, scope, maps) -> None:
        self.snapshot = None  # free the old copy first: never two at once
        states = {id(t): (i, _clone(st)) for t in scope for i, st in [_state_of(maps, t)] if i >= 0}
        self.snapshot, self.good_at = ([(t, t.detach().clone()) for t in scope], states), self.steps

    def _put_back(self, maps) -> None:
        tensors, states = self.snapshot
        for t, copy in tensors:
            t.copy_(copy)
            now, live = _state_of(maps, t)
            at, saved = states.get(id(t), (-1, None))
            if now == at and saved is not None and _copied_in_place(live, saved):
                continue
            if now >= 0:
                del maps[now][t]
            if saved is not None:
                maps[at][t] = _clone(saved)


class _LoadHook:
    """A module's load post-hook that tells its check. A copy of the model (deepcopy, pickling) gets an inert
    one: the copy is not the attached model, and a lambda could not be pickled with it (``torch.save(model)``)."""

    def __init__(self, ref=None):
        self.ref = ref

    def __call__(self, module, keys) -> None:
        if self.ref is not None:
            _call(self.ref, "loaded", module)

    def __reduce__(self):
        return (_LoadHook, ())

    def __deepcopy__(self, memo):
        return _LoadHook()


def _call(ref, method: str, *args, **kwargs) -> None:
    target = ref()
    if target is not None:
        getattr(target, method)(*args, **kwargs)


def _remove_all(watched) -> None:
    for handle in list(watched.values()):
        handle.remove()
    watched.clear()
