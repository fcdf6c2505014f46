"""Whole-model operations: polarize every matrix of a model, undo it, and re-initialize a polar model.

``polarize_model(model)`` is one call for a GPT, a CNN or an LSTM: it finds every parameter with
two or more dims (Linear, Conv*, Embedding, ``MultiheadAttention.in_proj_weight``, LSTM weights,
...), groups the owners of each shared Parameter (a tied embedding and output head is polarized
once and stays tied) and polarizes them with one spec.

Defaults and why:

- ``scale="out"``: one scale per output unit (a Linear's output feature, a Conv's output channel,
  an Embedding's token), the granularity of torch's ``weight_norm(dim=0)``: each unit's gain is a
  scale, each unit's incoming weights a direction. It reads each layer's layout: dim 1 of a
  ``ConvTranspose*d`` weight ``(in, out/groups, ...)`` and of transformers' ``Conv1D`` ``(in, out)``,
  dim 0 elsewhere (polaropt ≤ 0.3 defaulted to ``"row"``, dim 0 everywhere: a checkpoint of such a
  model with those layers loads into a model polarized with ``scale="row"``). A grouped
  ``ConvTranspose*d`` (not depthwise) has no such dim: ``exclude`` it or give ``scale="row"``.
- ``mode="absorb"``: the default of :func:`polaropt.polarize` and the library's reason to exist
  (Liu's re-parametrization: ``W`` is unchanged by the renormalization, the scale grows
  multiplicatively). It needs :func:`polaropt.attach`; forgetting it raises at the next forward.
- 1-D tensors (biases, LayerNorm/BatchNorm gains) are left alone: their "direction" would be a sign.
  Name one exactly in ``include`` to polarize it anyway.
"""

from __future__ import annotations

import sys
from fnmatch import fnmatchcase
from typing import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

from . import fold, guard, hf
from .polar import (DEFAULT_EPS, Polar, _is_fsdp_module, _own_class_on_copy, _remove, polar_paths, polar_tensors,
                    polarize, resolve_scale)
from .steps import refuse_orphans

SPEC_DEFAULTS = dict(scale="out", mode="absorb", trainable_scale=True, init="norm", batch_dims=0, eps=DEFAULT_EPS)
Selector = "str | Iterable[str] | Callable[[str, nn.Module, torch.Tensor], bool] | None"


def _candidates(model: nn.Module) -> list[tuple[torch.Tensor, list[tuple[str, nn.Module, str]], list[str]]]:
    """Every plain (not parametrized) Parameter of ``model``: its distinct owners ``(qualname, module,
    name)`` and every qualified name it is reached under (a module used twice has two), in module order."""
    found: dict[int, tuple] = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, (parametrize.ParametrizationList, Polar)):
            continue
        for name, p in module._parameters.items():
            if p is None:
                continue
            path = f"{prefix}.{name}" if prefix else name
            _, owners, paths = found.setdefault(id(p), (p, [], []))
            paths.append(path)
            if all(m is not module or n != name for _, m, n in owners):
                owners.append((path, module, name))
    return list(found.values())


def _patterns(kind: str, selector) -> list[str] | None:
    if selector is None or callable(selector):
        return None
    patterns = [selector] if isinstance(selector, str) else list(selector)
    bad = [p for p in patterns if not isinstance(p, str)]
    if bad:
        raise TypeError(f"{kind}= takes glob patterns (str), a list of them or a callable "
                        f"(qualname, module, tensor) -> bool; got {bad[0]!r}")
    return patterns


def _select(candidates, include, exclude) -> list[tuple[torch.Tensor, list, list]]:
    inc, exc = _patterns("include", include), _patterns("exclude", exclude)
    used_inc, used_exc, only_flat = set(), set(), {}
    chosen = []
    for p, owners, paths in candidates:
        names = paths
        if callable(exclude):
            excluded = any(exclude(q, m, p) for q, m, _ in owners)
        else:
            hits = {pat for pat in exc or () for q in names if fnmatchcase(q, pat)}
            used_exc |= hits
            excluded = bool(hits)
        if include is None:
            selected = p.ndim >= 2
        elif callable(include):
            selected = any(include(q, m, p) for q, m, _ in owners)
        else:
            hits = {pat for pat in inc for q in names if fnmatchcase(q, pat)}
            exact = {pat for pat in inc if pat in names}
            if p.ndim >= 2:
                selected = bool(hits)
                used_inc |= hits
            else:  # a 1-D tensor is polarized only when named exactly
                selected = bool(exact)
                used_inc |= exact
                for pat in hits - exact:
                    only_flat.setdefault(pat, []).append(names[0])
        if selected and not excluded:
            chosen.append((p, owners, paths))
    everything = [q for _, _, paths in candidates for q in paths]
    for pat in inc or ():
        if pat not in used_inc:
            if pat in only_flat:
                raise ValueError(
                    f"include pattern {pat!r} matches only tensors with fewer than 2 dims "
                    f"({', '.join(only_flat[pat][:5])}), which are polarized only when named exactly "
                    f"(e.g. include=[{only_flat[pat][0]!r}])")
            raise ValueError(f"include pattern {pat!r} matches no parameter of the model; its parameters are "
                             f"{_preview(everything)}")
    for pat in exc or ():
        if pat not in used_exc:
            raise ValueError(f"exclude pattern {pat!r} matches no parameter of the model; its parameters are "
                             f"{_preview(everything)}")
    return chosen


def _preview(names: list[str], k: int = 12) -> str:
    return ", ".join(names[:k]) + (f", ... ({len(names)} in all)" if len(names) > k else "")


def polarize_model(model: nn.Module, *, include: Selector = None, exclude: Selector = None, **spec) -> list[str]:
    """Polarize every matrix-shaped parameter of ``model``; return the qualified names polarized.

    Args:
        include: which parameters: None (every parameter with ``ndim >= 2``), glob patterns on the
            qualified name (``"*.attn.*"``, ``["fc1.weight", "fc2.weight"]``; a 1-D tensor only when
            named exactly), or a callable ``(qualname, module, tensor) -> bool``.
        exclude: parameters to leave plain (same forms); applied after ``include``.
        **spec: settings for :func:`polaropt.polarize`: ``scale`` (default ``"out"``: one scale per output
            unit of every layer, whichever dim its layout puts them on), ``mode``
            (default ``"absorb"``), ``trainable_scale``, ``init``, ``batch_dims``, ``eps``.

    A Parameter held by several modules (tied weights) is selected when any of its names is, and
    polarized once for all owners; every owner's name is in the result. Parameters already
    parametrized are skipped. Everything is checked before anything is polarized (unknown
    settings, patterns that match nothing, zero slices with a fixed scale, NaN, meta tensors), so a refusal
    leaves the model as it was.

    Raises:
        ValueError: a pattern that matches nothing, a bad setting, or a weight that cannot be split.

    Example:
        >>> import torch, polaropt as po
        >>> model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10))
        >>> model[1].weight = model[0].weight  # a tied head
        >>> po.polarize_model(model)
        ['0.weight', '1.weight']
        >>> sum(p.numel() for p in model.parameters())  # s (10) + V (40) + the head's bias (10)
        60
    """
    unknown = sorted(set(spec) - set(SPEC_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown polarize setting(s) {', '.join(map(repr, unknown))}; valid are "
                         f"{', '.join(map(repr, SPEC_DEFAULTS))}")
    spec = {**SPEC_DEFAULTS, **spec}
    refuse_orphans(model)
    if any(_is_fsdp_module(m) for m in model.modules()):
        raise ValueError("the model is already sharded with FSDP2's fully_shard: polarize (polarize_model) first, then "
                         "call fully_shard, so that FSDP shards and reduces s and V like any parameter")
    chosen = _select(_candidates(model), include, exclude)
    for p, owners, _ in chosen:  # validate all before changing any
        scales = {resolve_scale(m, p, spec["scale"], spec["batch_dims"]) for _, m, _ in owners}
        if len(scales) > 1:
            raise ValueError(f"scale={spec['scale']!r} means {' and '.join(map(repr, sorted(scales)))} for the owners of "
                             f"the tied weight {owners[0][0]} ({', '.join(q for q, _, _ in owners)}), whose layouts "
                             "differ; a shared weight has one polar form, so give it 'row' or 'column'")
        polar = Polar(p.ndim, **{**spec, "scale": scales.pop()})
        polar._label = owners[0][0]
        if spec["mode"] == "normalize" and any(getattr(m, "sparse", False) for _, m, _ in owners):
            raise ValueError(f"mode='normalize' on {owners[0][0]} (an Embedding with sparse=True) is refused: "
                             "torch's weight-norm kernel has no sparse backward; exclude it or use another mode")
        polar.check(p)
    done = []
    for p, owners, paths in chosen:
        for qualname, module, name in owners:
            polarize(module, name, **spec)
        done += paths
        module, name = owners[0][1], owners[0][2]
        module.parametrizations[name][0]._label = owners[0][0]
    hf.adopt(model, polar_paths(model), reinitialize_)  # a Hugging Face model's tied-weight maps name the polar leaves
    return done


def unpolarize_model(model: nn.Module) -> list[str]:
    """Bake every polarized tensor of ``model`` back into a plain Parameter holding ``s ⊙ Ŵ``.

    A shared (tied) weight becomes one Parameter held by all its owners. Returns the qualified
    names. Build a new optimizer afterwards.
    """
    tensors = list(polar_tensors(model))
    with torch.no_grad():  # every W first: a stale one raises before anything is unpolarized
        weights = [getattr(t.module, t.name).detach().clone() for t in tensors]
    done = []
    for t, w in zip(tensors, weights):
        plain = nn.Parameter(w, requires_grad=True)
        for qualname, module, name in t.owners:
            _remove(module, name)
            setattr(module, name, plain)
        done += t.paths
    hf.adopt(model, polar_paths(model), reinitialize_)  # the maps of what stays polar; the model's own elsewhere
    return done


def reinitialize_(model: nn.Module, fn: Callable[[nn.Module], None]) -> nn.Module:
    """Run an initializer on a polarized model as if it were plain, then split the result back.

    ``fn`` is called on every submodule, children first (as ``model.apply(fn)``), while every
    polarized tensor is a plain Parameter holding ``W``; so ``nn.init.*_(m.weight)``,
    ``m.reset_parameters()`` and Hugging Face-style ``_init_weights(m)`` work. Afterwards each
    ``W`` is split by the same rule as :func:`polaropt.polarize` and written into the *existing*
    ``s`` and ``V`` (an optimizer built on them stays valid, though its state describes the old
    weights). Ties are kept: the owners of a shared weight see one Parameter during ``fn``.

    This is the supported way: on a polarized model, ``nn.init.*_(m.weight)`` or
    ``m.weight.data.normal_()`` write into a recomputed ``W`` that is thrown away.

    If ``fn`` raises, every tensor is polarized again with its ``s`` and ``V`` as they were
    (whatever ``fn`` already did to plain tensors stays, as with ``model.apply``).

    Example:
        >>> import torch, polaropt as po
        >>> layer = po.polarize(torch.nn.Linear(3, 2), scale="row", mode="absorb")
        >>> _ = po.reinitialize_(layer, lambda m: torch.nn.init.ones_(m.weight) if hasattr(m, "weight") else None)
        >>> bool(torch.allclose(layer.weight, torch.ones(2, 3)))
        True
    """
    if not callable(fn):
        raise TypeError(f"reinitialize_ expects a callable fn(module), got {type(fn).__name__}")
    refuse_orphans(model)
    stacked = [t.qualname for t in polar_tensors(model) if len(t.module.parametrizations[t.name]) > 1]
    if stacked:
        raise ValueError(f"reinitialize_: {', '.join(stacked)} have parametrizations stacked above the polar one; "
                         "a new W cannot be split back through them (re-initialize before stacking)")
    saved = []
    taken: set[tuple[int, str]] = set()  # (id(module), name) that this call took apart
    after: dict[int, list] = {}  # id(polar) -> what each owner held under its name once fn returned
    try:
        for t in list(polar_tensors(model)):
            with torch.no_grad():
                plain = nn.Parameter(getattr(t.module, t.name).detach().clone(), requires_grad=t.direction.requires_grad)
            saved.append((t, [module.parametrizations[name] for _, module, name in t.owners], plain))
            for _, module, name in t.owners:
                fold.remove(module, name)
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
                setattr(module, name, plain)
                taken.add((id(module), name))
        model.apply(fn)
        for t, _, _ in saved:  # fn may have assigned a new Parameter: read what each owner holds now
            after[id(t.polar)] = [module._parameters.get(name) for _, module, name in t.owners]
    finally:
        # put every ParametrizationList back as it was (s and V untouched so far); a placeholder
        # registration installs torch's class and property without splitting fn's result
        reparametrized = []
        for t, plists, _ in saved:
            for (qualname, module, name), plist in zip(t.owners, plists):
                if (id(module), name) not in taken:
                    continue  # never taken apart (fn failed before we reached it)
                if parametrize.is_parametrized(module, name):  # fn parametrized it: drop that, keep ours
                    reparametrized.append(qualname)
                    parametrize.remove_parametrizations(module, name, leave_parametrized=True)
                if module._parameters.get(name) is None:  # fn deleted it: any tensor lets torch install the property
                    module._parameters[name] = nn.Parameter(plists[0].original1.detach().clone())
                parametrize.register_parametrization(module, name, _Placeholder(), unsafe=True)
                _own_class_on_copy(module)
                module.parametrizations[name] = plist
                if fold.foldable(module, name, plist[0]):
                    fold.install(module)
        if reparametrized and sys.exc_info()[0] is None:
            raise ValueError(f"reinitialize_: fn parametrized {', '.join(reparametrized)} itself; it should only "
                             "initialize. Its parametrization was removed, the polar form put back, and s and V "
                             "left as they were")
    # fn succeeded: split every new W (all checked before any is written), then write s and V
    splits = []
    for t, _, _ in saved:
        ws = after[id(t.polar)]
        w = ws[0]
        if w is None or not torch.is_tensor(w):
            raise ValueError(f"reinitialize_: fn removed {t.qualname}; the polar leaves were left as they were")
        if any(x is not w and (x is None or x.shape != w.shape or not torch.equal(x, w)) for x in ws[1:]):
            raise ValueError(f"reinitialize_: fn gave the owners of the tied weight {t.qualname} "
                             f"({', '.join(q for q, _, _ in t.owners)}) different values; they share one s and V")
        if w.shape != t.direction.shape:
            raise ValueError(f"reinitialize_: fn changed the shape of {t.qualname} from {tuple(t.direction.shape)} "
                             f"to {tuple(w.shape)}; the polar leaves keep their shape")
        splits.append(t.polar.right_inverse(w.detach().to(t.direction.dtype)))
    with torch.no_grad():
        for (t, _, _), (s, v) in zip(saved, splits):
            t.scale.copy_(s)
            t.direction.copy_(v)
            guard.mark_clean(t.polar)
    return model


class _Placeholder(nn.Module):
    """An identity parametrization, registered only to be swapped for the saved ParametrizationList."""

    def forward(self, x):
        return x
