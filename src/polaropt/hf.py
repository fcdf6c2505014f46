"""Hugging Face ``transformers`` conventions on a polarized model (duck-typed: transformers is never imported).

A ``PreTrainedModel`` names its tied weights in a map ``{target: source}`` (the class's
``_tied_weights_keys``, expanded per instance into ``all_tied_weights_keys``, e.g.
``{"lm_head.weight": "transformer.wte.weight"}``). ``save_pretrained`` leaves the targets out of the
file (safetensors refuses shared tensors) and ``tie_weights`` (called by ``post_init``,
``init_weights``, ``from_pretrained``) assigns each source to its target. Once polarized, a tied
weight is one ``ParametrizationList`` read by both owners, and what the state dict shares is its two
leaves, ``<owner>.parametrizations.weight.original0`` (``s``) and ``...original1`` (``V``), while
``<owner>.weight`` is no parameter any more. :func:`adopt` rewrites both maps of every
``PreTrainedModel`` in the model to name those leaves (a tie between plain weights is kept as it is),
so ``save_pretrained`` writes each shared leaf once and ``tie_weights`` re-ties the leaves (the same
objects already); :func:`release` puts the model's own maps back.

``resize_token_embeddings`` builds a new embedding and copies rows into ``.weight``, which for a polar
weight is a recomputed tensor: it would leave the old ``s`` and ``V`` in place while claiming the new
size. :func:`adopt` makes it raise instead, naming the route: resize before polarizing, or
``unpolarize_model`` → resize → ``polarize_model`` (and a new optimizer, as after any resize).
``init_weights`` would write into recomputed weights and leave the polar ones as they were: :func:`adopt`
runs it through :func:`polaropt.reinitialize_` instead. ``generate`` runs under ``parametrize.cached()``, so
each polar weight is formed once per call, not once per token.
"""

from __future__ import annotations

import functools
import types

from torch import nn
from torch.nn.utils import parametrize

from .polar import leaf_prefix

_SAVED = "_polaropt_hf"  # instance attribute of an adopted model: what it held before, restored by release
_MAPS = ("_tied_weights_keys", "all_tied_weights_keys")
_REPLACED = (*_MAPS, "resize_token_embeddings", "init_weights", "generate")  # instance attributes adopt sets


def _pretrained_models(model: nn.Module):
    """``(prefix, module)`` for every module that follows ``PreTrainedModel``'s tied-weights protocol."""
    for prefix, module in model.named_modules():
        if hasattr(module, "all_tied_weights_keys") and hasattr(module, "tie_weights") and hasattr(module, "config"):
            yield prefix, module


def _refuse_resize(self, new_num_tokens=None, pad_to_multiple_of=None, *args, **kwargs):
    """``resize_token_embeddings`` of an adopted model: refused where it would resize a polar weight; as the
    model's own where nothing polar changes (no size given, the current size, plain embeddings and head)."""
    layers = [m for m in (self.get_input_embeddings(), self.get_output_embeddings()) if m is not None]
    current = getattr(layers[0], "num_embeddings", None) if layers else None
    same = new_num_tokens is None or (new_num_tokens == current and pad_to_multiple_of in (None, 1))
    if same or not any(parametrize.is_parametrized(m, "weight") for m in layers):
        return type(self).resize_token_embeddings(self, new_num_tokens, pad_to_multiple_of, *args, **kwargs)
    raise ValueError(
        f"resize_token_embeddings on a polarized {type(self).__name__} is refused: it would copy rows into a "
        "recomputed weight and leave the polar s and V at the old size. Resize before polarizing "
        "(model.resize_token_embeddings(n), then po.polarize_model(model, ...)), or po.unpolarize_model(model), "
        "resize, po.polarize_model(model, ...) again and build a new optimizer (as after any resize)")


def adopt(model: nn.Module, polar_paths: dict, reinitialize) -> None:
    """Rewrite the tied-weight maps of every ``PreTrainedModel`` in ``model`` for its polar tensors.

    ``polar_paths`` maps every qualified name under which ``model`` reaches a polar tensor to its
    :class:`~polaropt.polar.PolarTensor`; ``reinitialize`` is :func:`polaropt.reinitialize_`, which the
    model's ``init_weights`` then runs through. The maps are always derived from the model's own, so a second
    call (after more tensors were polarized or some unpolarized) is right too; a model left with no
    polar tensor gets its own maps back.
    """
    for prefix, module in _pretrained_models(model):
        inside = prefix + "." if prefix else ""
        if not any(path.startswith(inside) for path in polar_paths):
            _restore(module)
            continue
        saved = module.__dict__.get(_SAVED)
        if saved is None:  # only what the instance itself held (a class attribute needs no saving)
            saved = {k: module.__dict__[k] for k in _REPLACED if k in module.__dict__}
        own = dict(saved.get("all_tied_weights_keys", module.all_tied_weights_keys))
        rewritten, polar = {}, False
        for target, source in own.items():
            t, s = (polar_paths.get(inside + k) for k in (target, source))
            if t is None or s is None or t.polar is not s.polar:
                rewritten[target] = source  # plain weights, or not one polar tensor: as the model says
                continue
            polar = True
            t_base, s_base = leaf_prefix(target), leaf_prefix(source)
            for leaf in ("original0", "original1"):
                rewritten[t_base + leaf] = s_base + leaf
        module.__dict__[_SAVED] = saved
        if polar:  # the map tie_weights() re-expands names the leaves too
            module._tied_weights_keys = dict(rewritten)
        elif "_tied_weights_keys" not in saved:
            module.__dict__.pop("_tied_weights_keys", None)
        module.all_tied_weights_keys = rewritten
        module.resize_token_embeddings = types.MethodType(_refuse_resize, module)
        module.init_weights = types.MethodType(functools.partial(_init_weights, reinitialize=reinitialize), module)
        if hasattr(module, "generate"):
            module.generate = types.MethodType(_generate, module)


def release(model: nn.Module) -> None:
    """Put back what :func:`adopt` replaced on every ``PreTrainedModel`` in ``model``."""
    for _, module in _pretrained_models(model):
        _restore(module)


def _restore(module: nn.Module, keys=_REPLACED) -> None:
    """Put back the instance attributes ``keys`` as they were before :func:`adopt` (and forget that, unless only
    some are put back for a while)."""
    saved = module.__dict__.get(_SAVED)
    if saved is None:
        return
    if keys is _REPLACED:
        del module.__dict__[_SAVED]
    for key in keys:
        if key in saved:
            module.__dict__[key] = saved[key]
        else:
            module.__dict__.pop(key, None)


def _generate(self, *args, **kwargs):
    """``generate()`` of an adopted model under ``parametrize.cached()``: every polar weight is formed once per
    call instead of once per token (generation runs without gradients, so one W serves every step)."""
    with parametrize.cached():
        return type(self).generate(self, *args, **kwargs)


def _init_weights(self, *, reinitialize) -> None:
    """``init_weights()`` of an adopted model: the model's own, run by ``reinitialize_`` (so it initializes the
    polar tensors as plain weights and splits the result back), with the model's own tied-weight maps meanwhile
    (its ``tie_weights`` then sees the plain, still shared, weights)."""
    own_init = type(self).init_weights
    adopted = {k: self.__dict__[k] for k in _MAPS if k in self.__dict__}

    def run(module):
        if module is not self:
            return
        _restore(self, _MAPS)
        try:
            own_init(self)
        finally:
            self.__dict__.update(adopted)

    reinitialize(self, run)
