"""Checkpoints in and out of polar form: plain state dicts for export, inference and fine-tuning.

A polarized model's own ``state_dict`` holds ``s`` and ``V`` (``"0.parametrizations.weight.original0"``
and ``...original1``) and each tensor's polar settings (``"...weight.0._extra_state"``: mode, scale,
trainable_scale, batch_dims, as a small int64 tensor, so the state dict holds tensors only); loading
it into a model polarized differently raises an error naming the tensor and both settings. Resuming training uses that state dict, bitwise.

- :func:`plain_state_dict`: the state dict of the *unpolarized* architecture, every polar tensor
  baked back to its plain name (``"0.weight" = s ⊙ Ŵ``), loadable with ``strict=True`` into the
  plain model (export, inference, other tools). A tied weight appears under every owner's name, as
  torch's own ``state_dict`` does.
- :func:`load_plain_state_dict`: a plain checkpoint into a polarized model (fine-tuning a
  pretrained model with polar weights); each weight is split by the rule ``polarize`` uses.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.module import _IncompatibleKeys

from .polar import compose, leaf_prefix, polar_paths, polar_tensors


def _polar_keys(model: nn.Module) -> tuple[dict, set[str]]:
    """``{plain key: PolarTensor}`` and the set of the model's state-dict keys they stand for (every
    key under ``<owner>.parametrizations.<name>.``, stacked parametrizations' entries included)."""
    plain = polar_paths(model)
    bases = tuple(leaf_prefix(path) for path in plain)
    polar = {k for k in model.state_dict() if bases and k.startswith(bases)}
    return plain, polar


def _weight(t, full: bool) -> torch.Tensor:
    """``s ⊙ Ŵ`` of one polar tensor. FSDP2 shards are gathered and composed whole (some of torch's
    kernels, e.g. the fused weight norm over dim 1, refuse unevenly sharded DTensors); with
    ``full=False`` the result is sharded again like V."""
    if getattr(t.direction, "placements", None) is None or len(t.module.parametrizations[t.name]) > 1:
        return getattr(t.module, t.name).detach()
    w = compose(t.scale.full_tensor(), t.direction.full_tensor(), t.polar).detach()
    if full:
        return w
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(w, t.direction.device_mesh, t.direction.placements)


@torch.no_grad()
def plain_state_dict(model: nn.Module, *, full: bool = False) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with every polarized tensor baked back to its plain name (``s ⊙ Ŵ``).

    Loads with ``strict=True`` into the same architecture without polaropt. Key order follows
    ``model.state_dict()``, each baked weight where its ``original0`` was.

    Under FSDP2 it is a collective either way, so call it on every rank: each polar weight is
    gathered to be composed. With ``full=False`` the values are DTensor shards again; ``full=True``
    returns plain tensors (every DTensor gathered with ``full_tensor()``; save on rank 0).

    Example:
        >>> import torch, polaropt as po
        >>> plain = torch.nn.Linear(3, 2)
        >>> polar = po.polarize(torch.nn.Linear(3, 2), scale="row")
        >>> sorted(po.plain_state_dict(polar))
        ['bias', 'weight']
        >>> _ = plain.load_state_dict(po.plain_state_dict(polar), strict=True)
    """
    plain_keys, polar_keys = _polar_keys(model)
    at = {leaf_prefix(path) + "original0": path for path in plain_keys}
    weights = {id(t.polar): _weight(t, full) for t in polar_tensors(model)}
    out = {}
    for key, value in model.state_dict().items():
        if key in at:
            out[at[key]] = weights[id(plain_keys[at[key]].polar)]
        elif key not in polar_keys:
            out[key] = value
    if full:
        out = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in out.items()}
    return out


def load_plain_state_dict(model: nn.Module, state_dict: dict, strict: bool = True) -> _IncompatibleKeys:
    """Load a plain (unpolarized) checkpoint into the polarized ``model``.

    Each polarized weight found under its plain name is split into ``s`` and ``V`` by the rule
    :func:`polaropt.polarize` uses (same ``init``, zero-slice and NaN rules); every other entry loads
    as with ``load_state_dict``. Everything (keys, shapes, the splits, tied weights agreeing) is
    checked before anything is written, so a refusal leaves the model as it was.

    Returns torch's ``(missing_keys, unexpected_keys)`` named in the plain checkpoint's terms.

    Raises:
        RuntimeError: with ``strict=True``, missing or unexpected keys (torch's message format),
            or a shape mismatch.
        ValueError: a weight that cannot be split, or the owners of a tied weight disagreeing.
    """
    plain_keys, polar_keys = _polar_keys(model)
    own = model.state_dict()
    expected = [k for k in own if k not in polar_keys] + list(plain_keys)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in set(expected)]
    errors = []
    if strict and (missing or unexpected):
        if missing:  # torch's order and wording
            errors.append("Missing key(s) in state_dict: " + ", ".join(f'"{k}"' for k in missing) + ". ")
        if unexpected:
            errors.append("Unexpected key(s) in state_dict: " + ", ".join(f'"{k}"' for k in unexpected) + ". ")
    for key, value in state_dict.items():
        ref = own.get(key) if key not in plain_keys else plain_keys[key].direction
        if ref is not None and torch.is_tensor(value) and value.shape != ref.shape:
            errors.append(f"size mismatch for {key}: copying a param with shape {tuple(value.shape)} from checkpoint, "
                          f"the shape in current model is {tuple(ref.shape)}.")
    if errors:
        raise RuntimeError(f"Error(s) in loading state_dict for {type(model).__name__}:\n\t" + "\n\t".join(errors))

    translated = {k: v for k, v in state_dict.items() if k in own and k not in polar_keys}
    split: dict[int, tuple] = {}
    for t in polar_tensors(model):
        given = [(q, state_dict[q]) for q in t.paths if q in state_dict]
        if not given:
            continue
        if len(t.module.parametrizations[t.name]) > 1:
            raise ValueError(f"{t.qualname} has parametrizations stacked above its polar one; a plain weight cannot be "
                             "split through them (load it before stacking, or load the polar state_dict)")
        w = given[0][1]
        for q, other in given[1:]:
            if not torch.equal(other, w):
                raise ValueError(f"{given[0][0]} and {q} are one tied weight in this model, but the checkpoint "
                                 "holds different values for them")
        s, v = t.polar.right_inverse(w.detach().to(device=t.direction.device, dtype=t.direction.dtype))
        split[id(t.polar)] = (t, s, v)
    for t, s, v in split.values():
        for path in t.paths:
            base = leaf_prefix(path)
            translated[base + "original0"], translated[base + "original1"] = s, v
            translated[base + "0._extra_state"] = t.polar.get_extra_state()
    model.load_state_dict(translated, strict=False)
    return _IncompatibleKeys(missing, unexpected)
