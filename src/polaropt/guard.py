"""What polaropt watches from outside the model, through torch's global optimizer step hooks.

Two silent failures cannot be seen from the polarized module alone:

1. **A renormalized mode stepped without renormalization.** ``"project"`` and ``"absorb"`` act
   after the optimizer step (:func:`polaropt.attach`). An optimizer that steps ``V`` with nothing
   renormalizing it would quietly train ``"free"`` instead. After every step of any
   ``torch.optim.Optimizer``, a global post-hook compares each such ``V``'s version counter with the
   one recorded at its last renormalization; a moved ``V`` marks its parametrization *stale*, and the
   next forward raises (the optimizer's own post-hooks, where ``attach`` renormalizes, run before the
   global ones, so an attached model is never marked). A manual :func:`polaropt.renormalize_` before
   the next forward clears the mark.
2. **A replaced parameter still in use.** ``polarize`` replaces ``module.weight``'s Parameter by the
   leaves ``s`` and ``V``. A second owner of the same Parameter (a tied embedding and output head) or
   an optimizer built before polarizing still holds the old one: the tie is silently cut, or the
   optimizer trains a tensor nothing reads. A global pre-hook refuses to step an optimizer that
   holds such a Parameter (before anything is written), and the whole-model functions check every
   module (:func:`orphans`).

Registries hold their keys weakly, so they never keep a model alive. The per-optimizer lists are
rebuilt only when the optimizer's groups or the set of polarized tensors change, so a step costs a
few attribute reads per polarized tensor.
"""

from __future__ import annotations

import weakref

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils.weak import WeakIdKeyDictionary

RENORMALIZED = ("project", "absorb")  # the modes that act after the optimizer step

_directions = WeakIdKeyDictionary()  # V -> its Polar (every mode; only RENORMALIZED ones are watched)
_replaced = WeakIdKeyDictionary()    # the Parameter polarize replaced -> weakref to the ParametrizationList
_watch = weakref.WeakKeyDictionary()  # optimizer -> (signature, [(V, Polar)])
_generation = 0  # bumped whenever a tensor is polarized or unpolarized: invalidates _watch
_hooks = None


def _install() -> None:
    global _hooks
    if _hooks is None:
        _hooks = (register_optimizer_step_pre_hook(_pre_step), register_optimizer_step_post_hook(_post_step))


def register(source: torch.Tensor, plist, polar) -> None:
    """Record a new polarization: ``source`` was replaced by ``plist`` (holding ``s``, ``V`` and ``polar``)."""
    _replaced[source] = weakref.ref(plist)
    track(plist.original1, polar)


def track(v: torch.Tensor, polar) -> None:
    """Watch ``V`` of ``polar``. The polar keeps a plain reference to its ``V`` (not a registered
    Parameter), so ``copy.deepcopy`` of a model gives the copied polar the copied ``V``, and
    ``Polar.__setstate__`` calls this for it."""
    global _generation
    _install()
    polar.__dict__["_v"] = v
    _directions[v] = polar
    mark_clean(polar, v)
    _generation += 1


def forget(plist) -> None:
    """Drop a polarization that ``unpolarize`` removed."""
    global _generation
    for key in [k for k, ref in _replaced.items() if ref() is plist]:
        del _replaced[key]
    _directions.pop(plist.original1, None)
    _generation += 1


def replaced_by(tensor: torch.Tensor):
    """The live ParametrizationList that replaced ``tensor``, or None."""
    ref = _replaced.get(tensor)
    return None if ref is None else ref()


def mark_clean(polar, v: torch.Tensor) -> None:
    """``V`` is accounted for as it is now (renormalized, or deliberately left until a later step)."""
    polar._seen_version = v._version
    polar._stale = False


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


def _signature(optimizer) -> tuple:
    return (_generation, tuple(len(g["params"]) for g in optimizer.param_groups))


def _pre_step(optimizer, args, kwargs) -> None:
    entry = _watch.get(optimizer)
    signature = _signature(optimizer)
    if entry is not None and entry[0] == signature:
        return
    watched = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            plist = replaced_by(p)
            if plist is not None:
                raise RuntimeError(
                    f"{type(optimizer).__name__}.step(): this optimizer updates a Parameter of shape {tuple(p.shape)} "
                    f"that polaropt.polarize replaced by the polar leaves s and V of "
                    f"{plist[0]._label}; nothing reads it any more, or another module (a tied weight) still "
                    "does. Build the optimizer after polarizing (from model.parameters() or "
                    "po.param_groups(model)), and polarize every owner of a shared weight "
                    "(po.polarize_model does). Nothing was stepped."
                )
            polar = _directions.get(p)
            if polar is not None and polar.mode in RENORMALIZED:
                watched.append((p, polar))
    _watch[optimizer] = (signature, watched)


def _post_step(optimizer, args, kwargs) -> None:
    entry = _watch.get(optimizer)
    if entry is None:
        return
    for v, polar in entry[1]:
        if v._version != polar._seen_version:
            polar._stale = True
            polar._stepped_by = type(optimizer).__name__
