"""What polaropt watches from outside the model, through torch's global optimizer step hooks.

Two silent failures cannot be seen from the polarized module alone:

1. **A renormalized mode stepped without renormalization.** ``"project"`` and ``"absorb"`` act
   after the optimizer step (:func:`polaropt.attach`). An optimizer that steps ``V`` with nothing
   renormalizing it would quietly train ``"free"`` instead. Every step of any
   ``torch.optim.Optimizer`` gets a number (a global pre-hook); after it, a global post-hook looks
   at each such ``V`` the optimizer holds: if it has a gradient (the optimizer updated it; a
   closure's gradient counts, and version counters, which fused optimizers do not bump, are not
   used) and it was not renormalized since the step began (the pre-hook arms a flag on each
   watched ``Polar``, a renormalization clears it), it is *stale* and the next forward raises. The optimizer's own post-hooks, where ``attach`` renormalizes, run before the
   global one, so an attached model is never flagged. A manual :func:`polaropt.renormalize_` before
   the next forward clears it too.
2. **A replaced parameter still in use.** ``polarize`` replaces ``module.weight``'s Parameter by the
   leaves ``s`` and ``V``. A second owner of the same Parameter (a tied embedding and output head) or
   an optimizer built before polarizing still holds the old one: the tie is silently cut, or the
   optimizer trains a tensor nothing reads. A global pre-hook refuses to step an optimizer that
   holds such a Parameter (before anything is written), and the whole-model functions check every
   module (:func:`orphans`).

The caches built from an optimizer (its watch list here, :class:`polaropt.renorm.Plan`) are keyed
on :func:`signature`: the optimizer's own version, which a polarize, an unpolarize or a load that
replaces leaves (``assign=True``) bumps only when it concerns a tensor that optimizer holds or
watches, and the sizes of its param groups. A
model polarized or loaded elsewhere (an eval or export copy, on one rank of a distributed job
alone) leaves every other optimizer's key as it was, so a compiled step is not recompiled by it.

Nothing here holds a weak reference to a live parameter of the model (``torch.utils.swap_tensors``,
used by ``module.to()`` under ``torch.__future__.set_swap_module_params_on_conversion(True)``,
refuses tensors that have one): polarizations are found through a ``WeakSet`` of their ``Polar``
modules, each of which keeps its ParametrizationList (so ``copy.deepcopy`` gives a copy its own).
Only the *replaced* Parameters are weak keys, and a model never holds those once all owners are
polarized. Nothing here keeps a model alive. The per-optimizer lists are rebuilt only when the
optimizer's groups change or a tensor it holds or watches is polarized, unpolarized or replaced by a
load (``assign=True``; a load in place changes nothing), so a step costs a few attribute reads per
watched tensor.

Under ``torch.compile`` these hooks are traced with the step. Every value they read is the same at
every step (no step counter), so dynamo's guards hold and a compiled training step is not
recompiled step after step.
"""

from __future__ import annotations

import weakref

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils.weak import WeakIdKeyDictionary

RENORMALIZED = ("project", "absorb")  # the modes that act after the optimizer step

_polars = weakref.WeakSet()          # every live Polar; each keeps its ParametrizationList in ._plist
_replaced = WeakIdKeyDictionary()    # the Parameter polarize replaced -> weakref to the ParametrizationList
WATCH = "_polar_watch"  # optimizer attribute: its _Watch; on the optimizer itself, not in a global weak
# dict, so a compiled step's guards do not depend on other optimizers being alive
VERSION = "_polar_version"  # optimizer attribute: bumped by a change that concerns a tensor it holds or watches
_optimizers = weakref.WeakSet()  # the optimizers with a watch list: those a change may concern
_hooks = None


class _Watch:
    """An optimizer's watch list: the :func:`signature` it was built at, the Polars whose ``V`` the
    optimizer holds, and the ids of every tensor it holds (a polarize replacing one of them, or an
    unpolarize removing one, concerns it). A copy of the optimizer (``copy.deepcopy``, pickling)
    gets none, and builds its own at its first step: the ids belong to the original's tensors."""

    __slots__ = ("signature", "watched", "held")

    def __init__(self, signature: tuple, watched: list, held: frozenset):
        self.signature, self.watched, self.held = signature, watched, held

    def __reduce__(self):
        return (type(None), ())


def _install() -> None:
    global _hooks
    if _hooks is None:
        _hooks = (register_optimizer_step_pre_hook(_pre_step), register_optimizer_step_post_hook(_post_step))


def _bump(concerns) -> None:
    """Bump the version of every optimizer whose watch list ``concerns``: its caches rebuild at its
    next step, and no other optimizer's do."""
    for optimizer in list(_optimizers):
        watch = optimizer.__dict__.get(WATCH)
        if isinstance(watch, _Watch) and concerns(watch):
            optimizer.__dict__[VERSION] = optimizer.__dict__.get(VERSION, 0) + 1


def register(source: torch.Tensor, plist, polar) -> None:
    """Record a new polarization: ``source`` was replaced by ``plist`` (holding ``s``, ``V`` and ``polar``)."""
    _replaced[source] = weakref.ref(plist)
    track(plist, polar)
    mark_clean(polar)
    _bump(lambda watch: id(source) in watch.held)  # an optimizer still holding source must be refused


def track(plist, polar) -> None:
    """Watch ``polar`` (whose leaves live in ``plist``). ``Polar.__setstate__`` calls this for a deepcopy
    (whose new leaves no existing optimizer holds, so no version moves)."""
    _install()
    polar.__dict__["_plist"] = plist  # a plain attribute, not a submodule: deepcopy maps it to the copy
    polar.__dict__["_leaves"] = _leaf_ids(plist)
    _polars.add(polar)


def _leaf_ids(plist) -> tuple[int, ...] | None:
    """The ids of ``plist``'s leaves ``s`` and ``V``; None while a deepcopy is still filling it in."""
    leaves = getattr(plist, "_parameters", {})
    return (id(leaves["original0"]), id(leaves["original1"])) if "original1" in leaves else None


def forget(plist) -> None:
    """Drop a polarization that ``unpolarize`` removed."""
    for key in [k for k, ref in _replaced.items() if ref() is plist]:
        del _replaced[key]
    polar = plist[0]
    _polars.discard(polar)
    _bump(lambda watch: polar in watch.watched or id(plist.original0) in watch.held)


def touch(polar) -> None:
    """``polar``'s module was loaded. ``load_state_dict(assign=True)`` replaces its leaves: the caches of
    the optimizers that held the old ones or watch it rebuild. A load in place (the default) keeps
    them and moves no version, so swapping weights in and out (an EMA evaluation, on one rank alone)
    does not recompile a compiled step."""
    was, now = polar.__dict__.get("_leaves"), _leaf_ids(polar._plist)
    if now == was:
        return
    polar.__dict__["_leaves"] = now
    _bump(lambda watch: polar in watch.watched or any(i in watch.held for i in (was or ()) + (now or ())))


def replaced_by(tensor: torch.Tensor):
    """The live ParametrizationList that replaced ``tensor``, or None."""
    ref = _replaced.get(tensor)
    return None if ref is None else ref()


def mark_clean(polar) -> None:
    """``V`` is accounted for as it is now (renormalized, or deliberately left until a later step)."""
    # plain attributes, written past nn.Module.__setattr__ (whose checks cost 10× the write, per
    # tensor per step)
    object.__setattr__(polar, "_pending", False)
    object.__setattr__(polar, "_stale", False)


def orphans(model: torch.nn.Module) -> list[tuple[str, str]]:
    """``(qualname, replaced-by)`` for every module of ``model`` that still holds a replaced Parameter."""
    homes = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        for name in getattr(module, "parametrizations", {}):
            homes.setdefault(id(module.parametrizations[name]), f"{prefix}.{name}" if prefix else name)
    found = []
    for prefix, module in model.named_modules(remove_duplicate=False):
        for name, p in module._parameters.items():
            plist = None if p is None else replaced_by(p)
            if plist is not None:
                found.append((f"{prefix}.{name}" if prefix else name, homes.get(id(plist), "a polarized tensor")))
    return found


def group_sizes(optimizer) -> tuple:
    """The length of each of ``optimizer``'s param groups: what a group added or grown changes. The
    same on every rank of a distributed job, unlike :func:`signature`."""
    return tuple(len(g["params"]) for g in optimizer.param_groups)


def signature(optimizer) -> tuple:
    """Changes when the parameters an optimizer steps may have changed: a tensor it holds or watches
    polarized, unpolarized or loaded (its version), or a param group added or grown. Keys the caches
    built from an optimizer (the watch lists here, :class:`polaropt.renorm.Plan`). Only what
    concerns this optimizer moves it, so it moves alike on every rank of a job whose ranks run the
    same code; a rank that changes its optimizer's tensors alone moves it alone."""
    if optimizer is None:
        return (0, ())
    return (optimizer.__dict__.get(VERSION, 0), group_sizes(optimizer))


def _pre_step(optimizer, args, kwargs) -> None:
    entry = optimizer.__dict__.get(WATCH)
    sig = signature(optimizer)
    if entry is None or entry.signature != sig:
        held = {}
        for group in optimizer.param_groups:
            for p in group["params"]:
                plist = replaced_by(p)
                if plist is not None:
                    raise RuntimeError(
                        f"{type(optimizer).__name__}.step(): this optimizer updates a Parameter of shape "
                        f"{tuple(p.shape)} that polaropt.polarize replaced by the polar leaves s and V of "
                        f"{plist[0]._label}; nothing reads it any more, or another module (a tied weight) still "
                        "does. Build the optimizer after polarizing (from model.parameters() or "
                        "po.param_groups(model)), and polarize every owner of a shared weight "
                        "(po.polarize_model does). Nothing was stepped."
                    )
                held[id(p)] = p
        mine = [polar for polar in list(_polars)
                if id(polar._plist.original1) in held or id(polar._plist.original0) in held]
        for polar in mine:  # leaves swapped without a load (a deepcopy, fully_shard): recorded as they are now
            polar.__dict__["_leaves"] = _leaf_ids(polar._plist)
        watched = [polar for polar in mine if polar.mode in RENORMALIZED and id(polar._plist.original1) in held]
        optimizer.__dict__[WATCH] = entry = _Watch(sig, watched, frozenset(held))
        _optimizers.add(optimizer)
    for polar in entry.watched:
        object.__setattr__(polar, "_pending", True)  # armed: a renormalization in this step clears it (mark_clean)


def _post_step(optimizer, args, kwargs) -> None:
    entry = optimizer.__dict__.get(WATCH)
    if entry is None:
        return
    for polar in entry.watched:
        # updated by this step (it has a gradient) and not renormalized since the step began
        if polar._pending and polar._plist.original1.grad is not None:
            polar._stale = True
            polar._stepped_by = type(optimizer).__name__
