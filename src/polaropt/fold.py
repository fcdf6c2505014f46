"""A fast path for polar ``nn.Linear`` weights: fold the scale into the activations.

For ``W = s ⊙ V`` the layer's output can be computed without forming ``W``:

- row scale (one ``s_o`` per output unit):   ``y = (x Vᵀ) ⊙ sᵀ + b``
- column scale (one ``s_i`` per input unit): ``y = (x ⊙ sᵀ) Vᵀ + b``
- tensor scale:                              ``y = s · (x Vᵀ) + b``

The multiply then touches ``rows × out`` (or ``rows × in``) entries instead of ``out × in``, and
autograd's backward does the same, so at batch sizes below the layer's width the polar overhead
nearly vanishes. When ``rows`` reaches the other side of the weight (``in`` for row and tensor
scales, ``out`` for column scales), forming ``W`` is cheaper and the layer computes
``F.linear(x, s ⊙ V, b)``: the product ``module.weight`` returns, formed here without the
parametrization's property machinery. Both paths are the same function of ``(s, V, b, x)``; tests
hold them equal. ``module.weight`` keeps working either way.

Only exact ``nn.Linear`` modules (a subclass may have its own forward), ``name="weight"``,
``batch_dims=0`` and the product modes (``free``/``project``/``absorb``) are folded;
``normalize`` already runs torch's fused weight-norm kernel.

The fast path keeps ``nn.Linear``'s contract: at every call it takes the plain
``F.linear(x, module.weight, bias)`` whenever folding could differ from it: under
``torch.autocast`` (which would otherwise compute part of the product in float32), inside
``parametrize.cached()`` (which caches ``W``), when another parametrization is stacked on the
weight, or when the parametrization was removed by torch's ``remove_parametrizations``. A forward
the user patched on the instance is never replaced, and only our own forward is ever removed.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

FOLDED = ("free", "project", "absorb")


def foldable(module: nn.Module, name: str, polar) -> bool:
    return (parametrize.type_before_parametrizations(module) is nn.Linear and name == "weight"
            and polar.batch_dims == 0 and polar.mode in FOLDED and polar.scale in ("tensor", "row", "column")
            and "forward" not in module.__dict__)


def folded_linear(x: torch.Tensor, s: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
                  scale: str) -> torch.Tensor:
    """``F.linear(x, s ⊙ v, bias)`` with the scale applied to the activations."""
    if scale == "column":
        return F.linear(x * s.view(-1), v, bias)
    z = F.linear(x, v)
    s = s.view(-1) if scale == "row" else s.view(())
    return z * s if bias is None else torch.addcmul(bias, z, s)


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 has no device argument
        return torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()


def _forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    plist = self.parametrizations["weight"] if parametrize.is_parametrized(self, "weight") else None
    polar = plist[0] if plist is not None and len(plist) == 1 else None
    if (polar is None or getattr(polar, "mode", None) not in FOLDED or parametrize._cache_enabled
            or _autocast_on(x.device.type)):
        return F.linear(x, self.weight, self.bias)
    if polar._stale:
        raise RuntimeError(polar._stale_message())
    v, scale = plist.original1, polar.scale
    rows = x.numel() // max(x.shape[-1], 1)
    # folding multiplies rows×out entries (rows×in for column scales), forming W multiplies out×in
    if rows >= (v.shape[0] if scale == "column" else v.shape[1]):
        # W = s ⊙ V, what Polar.forward returns for these modes, without the parametrization's
        # property machinery (a few µs per call, the whole cost of a small layer)
        return F.linear(x, plist.original0 * v, self.bias)
    return folded_linear(x, plist.original0, v, self.bias, scale)


def install(module: nn.Module) -> None:
    """Route ``module``'s forward through the folded path (an instance attribute, undone by remove)."""
    module.forward = types.MethodType(_forward, module)


def installed(module: nn.Module) -> bool:
    f = module.__dict__.get("forward")
    return isinstance(f, types.MethodType) and f.__func__ is _forward


def remove(module: nn.Module, name: str = "weight") -> None:
    """Remove our folded forward (never a forward the user set on the instance)."""
    if name == "weight" and installed(module):
        del module.__dict__["forward"]
