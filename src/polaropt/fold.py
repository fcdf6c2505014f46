"""A fast path for polar ``nn.Linear`` weights: fold the scale into the activations.

For ``W = s ⊙ V`` the layer's output can be computed without forming ``W``:

- row scale (one ``s_o`` per output unit):   ``y = (x Vᵀ) ⊙ sᵀ + b``
- column scale (one ``s_i`` per input unit): ``y = (x ⊙ sᵀ) Vᵀ + b``
- tensor scale:                              ``y = s · (x Vᵀ) + b``

The multiply then touches ``rows × out`` (or ``rows × in``) entries instead of ``out × in``, and
autograd's backward does the same, so at batch sizes below the layer's width the polar overhead
nearly vanishes. When ``rows`` reaches the other side of the weight (``in`` for row and tensor
scales, ``out`` for column scales), forming ``W`` is cheaper and the layer falls back to
``F.linear(x, module.weight, b)``. Both paths are the same function of
``(s, V, b, x)``; tests hold them equal. ``module.weight`` keeps working either way.

Only exact ``nn.Linear`` modules (a subclass may have its own forward), ``name="weight"``,
``batch_dims=0`` and the product directions (``free``/``project``/``absorb``) are folded;
``normalize`` already runs torch's fused weight-norm kernel.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn

FOLDED = ("free", "project", "absorb")


def foldable(module: nn.Module, name: str, polar) -> bool:
    return (type(module) is nn.Linear and name == "weight" and polar.batch_dims == 0
            and polar.direction in FOLDED and polar.scale in ("tensor", "row", "column"))


def folded_linear(x: torch.Tensor, s: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
                  scale: str) -> torch.Tensor:
    """``F.linear(x, s ⊙ v, bias)`` with the scale applied to the activations."""
    if scale == "column":
        return F.linear(x * s.view(-1), v, bias)
    z = F.linear(x, v)
    s = s.view(-1) if scale == "row" else s.view(())
    return z * s if bias is None else torch.addcmul(bias, z, s)


def _forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    plist = self.parametrizations.weight
    v, scale = plist.original1, plist[0].scale
    rows = x.numel() // max(x.shape[-1], 1)
    # folding multiplies rows×out entries (rows×in for column scales), forming W multiplies out×in
    if rows >= (v.shape[0] if scale == "column" else v.shape[1]):
        return F.linear(x, self.weight, self.bias)
    return folded_linear(x, plist.original0, v, self.bias, scale)


def install(module: nn.Module) -> None:
    """Route ``module``'s forward through the folded path (an instance attribute, undone by remove)."""
    module.forward = types.MethodType(_forward, module)


def remove(module: nn.Module) -> None:
    module.__dict__.pop("forward", None)
