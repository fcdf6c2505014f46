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

Nothing here holds a weak reference to a live parameter of the model (``torch.utils.swap_tensors``,
used by ``module.to()`` under ``torch.__future__.set_swap_module_params_on_conversion(True)``,
refuses tensors that have one): polarizations are found through a ``WeakSet`` of their ``Polar``
modules, each of which keeps its ParametrizationList (so ``copy.deepcopy`` gives a copy its own).
Only the *replaced* Parameters are weak keys, and a model never holds those once all owners are
polarized. Nothing here keeps a model alive. The per-optimizer lists are rebuilt only when the
optimizer's groups or the set of polarizations change, so a step costs a few attribute reads per
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
WATCH = "_polar_watch"  # optimizer attribute: (signature, [Polar whose V it holds]); on the optimizer itself,
# not in a global weak dict, so a compiled step's guards do not depend on other optimizers being alive
_generation = 0  # bumped whenever a tensor is polarized, unpolarized, copied or loaded: invalidates every WATCH
_hooks = None


def _install() -> None:
    global _hooks
    if _hooks is None:
        _hooks = (register_optimizer_step_pre_hook(_pre_step), register_optimizer_step_post_hook(_post_step))


def register(source: torch.Tensor, plist, polar) -> None:
    """Record a new polarization: ``source`` was replaced by ``plist`` (holding ``s``, ``V`` and ``polar``)."""
    _replaced[source] = weakref.ref(plist)
    track(plist, polar)
    mark_clean(polar)


def track(plist, polar) -> None:
    """Watch ``polar`` (whose leaves live in ``plist``). ``Polar.__setstate__`` calls this for a deepcopy."""
    global _generation
    _install()
    polar.__dict__["_plist"] = plist  # a plain attribute, not a submodule: deepcopy maps it to the copy
    _polars.add(polar)
    _generation += 1


def forget(plist) -> None:
    """Drop a polarization that ``unpolarize`` removed."""
    global _generation
    for key in [k for k, ref in _replaced.items() if ref() is plist]:
        del _replaced[key]
    _polars.discard(plist[0])
    _generation += 1


def generation() -> int:
    """Bumped whenever a tensor is polarized, unpolarized, copied or loaded: caches keyed on it
    (the watch lists here, :class:`polaropt.renorm.Plan`) are rebuilt."""
    return _generation


def touch() -> None:
    """Invalidate every cache keyed on :func:`generation` (a load may have replaced the leaves)."""
    global _generation
    _generation += 1


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
    """Changes when the parameters an optimizer steps may have: a tensor polarized, unpolarized,
    copied or loaded (:func:`generation`), or a param group added or grown. Keys the caches built
    from an optimizer (the watch lists here, :class:`polaropt.renorm.Plan`). It is rank-local, so
    nothing that starts a collective may depend on it."""
    return (_generation, () if optimizer is None else group_sizes(optimizer))


def _pre_step(optimizer, args, kwargs) -> None:
    entry = optimizer.__dict__.get(WATCH)
    sig = signature(optimizer)
    if entry is None or entry[0] != sig:
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
        watched = [polar for polar in list(_polars)
                   if polar.mode in RENORMALIZED and id(polar._plist.original1) in held]
        optimizer.__dict__[WATCH] = entry = (sig, watched)
    for polar in entry[1]:
        object.__setattr__(polar, "_pending", True)  # armed: a renormalization in this step clears it (mark_clean)


def _post_step(optimizer, args, kwargs) -> None:
    entry = optimizer.__dict__.get(WATCH)
    if entry is None:
        return
    for polar in entry[1]:
        # updated by this step (it has a gradient) and not renormalized since the step began
        if polar._pending and polar._plist.original1.grad is not None:
            polar._stale = True
            polar._stepped_by = type(optimizer).__name__
