"""Polar weights ``W = s ⊙ Ŵ``: a scale times a direction, registered with ``torch.nn.utils.parametrize``.

``polarize(module, "weight", ...)`` replaces ``module.weight`` by a parametrization whose two
leaves, ``s = module.parametrizations.weight.original0`` and
``V = module.parametrizations.weight.original1`` (the layout of torch's own ``weight_norm``), are
what the optimizer updates; ``module.weight`` keeps its shape and meaning and is recomputed from
them on every access.

Direction modes (how ``Ŵ`` is obtained from ``V``):

- ``"free"``: ``W = s ⊙ V``, ``V`` unconstrained (learnable multipliers; Liu 001 "learnable_scale").
- ``"normalize"``: ``W = s ⊙ V/‖V‖``, the gradient flows through the norm (weight normalization,
  Salimans & Kingma 2016; Wu et al. 2020 (seed 002) "WN"; Chou et al. 2023 (seed 003)).
- ``"project"``: ``W = s ⊙ V``; after each optimizer step ``V ← V/‖V‖`` (Wu et al. 2020 "rPGD": the
  radial part of the step is discarded, so ``W`` changes at the projection).
- ``"absorb"``: ``W = s ⊙ V``; after each optimizer step ``a = ‖V‖, V ← V/a, s ← a·s`` (Liu 001
  "re-parametrization": ``W`` is unchanged, the scale grows multiplicatively, so reaching a target
  of norm R takes O(log R) steps instead of O(R)).

``"project"`` and ``"absorb"`` act after the step, so they need :func:`polaropt.attach` (or a call
of :func:`polaropt.renormalize_`); ``"free"`` and ``"normalize"`` work with ``polarize`` alone.
"""

from __future__ import annotations

import math
from typing import Iterator, NamedTuple

import torch
from torch import nn
from torch.nn.utils import parametrize

from . import fold
from .slices import check_scale, reduce_dims, scale_shape, slice_norm

DIRECTIONS = ("free", "normalize", "project", "absorb")
INITS = ("norm", "one")
RENORMALIZED = ("project", "absorb")  # the directions that act after the optimizer step
DEFAULT_EPS = 1e-12


def _choice(kind: str, value, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise ValueError(f"unknown {kind} {value!r}; valid choices are {', '.join(map(repr, valid))}")
    return value


class Polar(nn.Module):
    """The parametrization ``(s, V) ↦ W``; ``right_inverse`` splits a weight into ``(s, V)``.

    ``forward(right_inverse(W)) == W`` for every mode (up to rounding). The configuration lives in
    plain attributes, so a model's ``state_dict`` holds only ``s`` and ``V``.
    """

    def __init__(self, ndim: int, *, scale: str, direction: str, trainable_scale: bool, init: str,
                 batch_dims: int, eps: float):
        super().__init__()
        self.scale = check_scale(scale)
        self.direction = _choice("direction", direction, DIRECTIONS)
        self.init = _choice("init", init, INITS)
        if direction == "normalize" and scale == "element":
            raise ValueError(
                "direction='normalize' with scale='element' is refused: each slice is one entry, so "
                "V/‖V‖ = sign(V) and V gets zero gradient; use direction='absorb' or 'free' for "
                "element-wise scales, or a coarser scale ('tensor', 'row', 'column')"
            )
        if direction == "normalize" and init == "one":
            raise ValueError(
                "init='one' keeps V = W0 unnormalized, but direction='normalize' divides by ‖V‖, so W "
                "would change at polarize; use init='norm' (valid choices: 'norm', 'one')"
            )
        if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
            raise ValueError(f"eps must be a positive finite float, got {eps!r}")
        self.dims = reduce_dims(ndim, scale, batch_dims)
        self.batch_dims = batch_dims
        kept = [d for d in range(ndim) if d not in self.dims]
        # torch._weight_norm(v, g, dim) is the fused kernel behind torch's weight_norm: the norm is
        # taken over every dim but `dim` (-1: over all). It applies when at most one dim is kept.
        self._fused_dim = None if len(kept) > 1 else (kept[0] if kept else -1)
        self.trainable_scale = bool(trainable_scale)
        self.eps = float(eps)

    def forward(self, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.direction == "normalize":
            if self._fused_dim is not None and v.dtype in (torch.float32, torch.float64):
                # one fused kernel forward and backward (what torch's own weight_norm runs); about
                # as fast as the unnormalized product. Its norm is not clamped: ‖V‖ was checked
                # non-zero at polarize and gradient steps on V/‖V‖ do not drive it to 0.
                return torch._weight_norm(v, s, self._fused_dim)
            # s / ‖V‖ is one small tensor; multiplying V by it is a single pass over V. The norm is
            # taken in float32 or better and clamped by eps, so a collapsed slice gives 0, not NaN.
            n = slice_norm(v, self.dims).clamp_min(self.eps)
            return v * (s / n).to(v.dtype)
        return s * v

    @torch.no_grad()
    def right_inverse(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not torch.is_floating_point(w):
            raise ValueError(f"polar weights must be floating point, got dtype {w.dtype}")
        if not torch.isfinite(w).all():
            raise ValueError("the weight holds NaN or Inf; a polar split of it would be meaningless")
        sshape = scale_shape(w.shape, self.scale, self.batch_dims)
        needs_norm = self.init == "norm" or self.direction in ("normalize", "project", "absorb")
        n = slice_norm(w, self.dims)
        if needs_norm and bool((n == 0).any()):
            bad = int((n == 0).sum())
            raise ValueError(
                f"{bad} slice(s) of the weight (scale={self.scale!r}) have zero norm, but "
                f"direction={self.direction!r} with init={self.init!r} needs a norm to divide by; "
                "re-initialize the weight or use a coarser scale"
            )
        if self.init == "norm":
            return n.to(w.dtype), (w / n).to(w.dtype)
        return torch.ones(sshape, dtype=w.dtype, device=w.device), w.clone()

    def extra_repr(self) -> str:
        return (f"scale={self.scale!r}, direction={self.direction!r}, trainable_scale={self.trainable_scale}, "
                f"init={self.init!r}, batch_dims={self.batch_dims}, eps={self.eps:g}")


def _polar_of(module: nn.Module, name: str) -> Polar | None:
    if not parametrize.is_parametrized(module, name):
        return None
    plist = module.parametrizations[name]
    return plist[0] if len(plist) == 1 and isinstance(plist[0], Polar) else None


def polarize(module: nn.Module, name: str = "weight", *, scale: str = "tensor", direction: str = "absorb",
             trainable_scale: bool = True, init: str = "norm", batch_dims: int = 0,
             eps: float = DEFAULT_EPS) -> nn.Module:
    """Write ``module.<name>`` in polar form ``W = s ⊙ Ŵ`` and return ``module``.

    Args:
        scale: which entries share one scale: ``"tensor"``, ``"row"`` (dim 0, per output unit or
            conv channel), ``"column"`` (dim 1, per input unit) or ``"element"``.
        direction: ``"free"``, ``"normalize"``, ``"project"`` or ``"absorb"`` (see the module docs).
        trainable_scale: if False, ``s`` gets ``requires_grad=False`` (no gradient, no optimizer
            update) but ``"absorb"`` still multiplies it at renormalization: the seeds' "fixed scale".
        init: ``"norm"``: ``s = ‖W0‖`` per slice and ``V = W0/‖W0‖``; ``"one"``: ``s = 1, V = W0``
            (what Liu's notebooks do; not allowed with ``"normalize"``, which would change ``W``).
        batch_dims: the leading ``batch_dims`` dims index independent copies; norms never mix them.
        eps: renormalization divides by ``max(‖V‖, eps)`` (and ``"normalize"`` by the same clamp), so
            a slice whose norm collapsed to 0 stays 0 instead of becoming NaN.

    Raises:
        ValueError: an unknown choice, ``"normalize"`` with ``"element"``, a tensor already
            parametrized, a missing tensor, or a zero-norm slice when a norm is needed.

    Example:
        >>> import torch, polaropt as po
        >>> layer = po.polarize(torch.nn.Linear(3, 2), "weight", scale="row", direction="absorb")
        >>> po.scale_of(layer).shape, po.direction_of(layer).shape
        (torch.Size([2, 1]), torch.Size([2, 3]))
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"polarize expects an nn.Module, got {type(module).__name__}")
    if parametrize.is_parametrized(module, name):
        what = "polarized" if _polar_of(module, name) is not None else "parametrized"
        raise ValueError(f"{type(module).__name__}.{name} is already {what}; call polaropt.unpolarize first")
    tensor = getattr(module, name, None)
    if not isinstance(tensor, torch.Tensor):
        names = [n for n, _ in module.named_parameters(recurse=False)]
        raise ValueError(f"{type(module).__name__} has no tensor {name!r}; its parameters are {names}")
    polar = Polar(tensor.ndim, scale=scale, direction=direction, trainable_scale=trainable_scale, init=init,
                  batch_dims=batch_dims, eps=eps)
    folded = fold.foldable(module, name, polar)  # before parametrize swaps the module's class
    parametrize.register_parametrization(module, name, polar)
    if not trainable_scale:
        module.parametrizations[name].original0.requires_grad_(False)
    if folded:
        fold.install(module)
    return module


def unpolarize(module: nn.Module, name: str = "weight") -> nn.Module:
    """Bake ``module.<name>`` back into one plain ``nn.Parameter`` holding ``s ⊙ Ŵ``; return ``module``.

    The optimizer that held ``s`` and ``V`` no longer sees the weight: build a new one.
    """
    if _polar_of(module, name) is None:
        raise ValueError(f"{type(module).__name__}.{name} is not polarized")
    if name == "weight":
        fold.remove(module)
    parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return module


def is_polarized(module: nn.Module, name: str = "weight") -> bool:
    return _polar_of(module, name) is not None


def polar_spec(module: nn.Module, name: str = "weight") -> Polar:
    """The :class:`Polar` parametrization of ``module.<name>`` (its scale, direction, ... settings)."""
    polar = _polar_of(module, name)
    if polar is None:
        raise ValueError(f"{type(module).__name__}.{name} is not polarized; call polaropt.polarize first")
    return polar


def scale_of(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The leaf ``s`` (``module.parametrizations.<name>.original0``) that the optimizer updates."""
    polar_spec(module, name)
    return module.parametrizations[name].original0


def direction_of(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The leaf ``V`` (``module.parametrizations.<name>.original1``) that the optimizer updates.

    With ``"project"``/``"absorb"`` it is ``Ŵ`` itself after every renormalization; with
    ``"normalize"`` the direction is ``V/‖V‖``.
    """
    polar_spec(module, name)
    return module.parametrizations[name].original1


class PolarTensor(NamedTuple):
    """One polarized tensor found in a model: where it lives, its settings and its two leaves."""

    qualname: str  # e.g. "0.weight"
    module: nn.Module
    name: str
    polar: Polar
    scale: torch.Tensor
    direction: torch.Tensor


def polar_tensors(model: nn.Module) -> Iterator[PolarTensor]:
    """Every polarized tensor of ``model`` (recursively), in ``model.named_modules()`` order."""
    for prefix, module in model.named_modules():
        plists = getattr(module, "parametrizations", None)
        if plists is None:
            continue
        for name, plist in plists.items():
            if len(plist) == 1 and isinstance(plist[0], Polar):
                yield PolarTensor(f"{prefix}.{name}" if prefix else name, module, name, plist[0],
                                  plist.original0, plist.original1)
