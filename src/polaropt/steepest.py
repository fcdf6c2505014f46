"""Steepest descent under a chosen norm (CS182 discussion, seed 004, problem 1).

Each step is the minimizer of the gradient's linear improvement plus a squared-norm penalty, per tensor:

    Δ = argmin_Δ  gᵀΔ + (1/lr)·‖Δ‖²

Write Δ = −t·D with ‖D‖ = 1 and t ≥ 0. Then gᵀΔ = −t·gᵀD is smallest for the D that maximizes gᵀD
over the unit ball, which by definition of the dual norm gives gᵀD = ‖g‖_*. What is left is
−t·‖g‖_* + t²/lr, smallest at t = (lr/2)·‖g‖_*. So, for every norm,

    Δ = −(lr/2) · ‖g‖_* · D*,   D* = argmax_{‖D‖ ≤ 1} gᵀD,

and each norm needs only its dual norm and its maximizing direction:

- ``"l2"``: the dual of ‖·‖₂ is ‖·‖₂ and D* = g/‖g‖₂, so Δ = −(lr/2)·g: gradient descent with step lr/2.
- ``"linf"``: the dual of ‖·‖∞ is ‖·‖₁ and D* = sign(g), so Δ = −(lr/2)·‖g‖₁·sign(g) (sign descent,
  scaled by the gradient's ℓ1 norm).
- ``"rms"``: ‖x‖_RMS = ‖x‖₂/√n over the tensor's n elements; its dual is √n·‖·‖₂ and
  D* = √n·g/‖g‖₂, so Δ = −(lr/2)·n·g: the ℓ2 step made n times longer, so that the per-element
  (RMS) size of a step does not shrink as the tensor grows.
- ``"spectral"`` (matrices): the dual of the operator norm ‖·‖₂→₂ is the nuclear norm ‖G‖_* = Σσᵢ and,
  with the reduced SVD G = U·diag(σ)·Vᵀ, D* = UVᵀ (the orthogonal polar factor), so
  Δ = −(lr/2)·‖G‖_*·UVᵀ. Since ‖G‖_* = ⟨UVᵀ, G⟩, the step needs only the polar factor, which the
  Newton–Schulz iteration also gives without an SVD. Tensors with more than two dimensions
  (convolutions) are treated as the matrix ``shape[0] × (the rest)``; vectors and scalars have no
  spectral norm and are refused (give them their own param group with another norm).

A zero gradient gives a zero step under every norm (for ``"spectral"`` the polar factor is taken on
the nonzero singular values only, which is also where Newton–Schulz converges).
"""

from __future__ import annotations

import math

import torch
from torch.optim import Optimizer

from .orthogonalize import orthogonalize

NORMS = ("l2", "linf", "rms", "spectral")
ORTHOGONALIZERS = ("svd", "newton_schulz")


# ---- the math, one small function each ------------------------------------------------------------

def polar_factor_svd(G: torch.Tensor) -> torch.Tensor:
    """UVᵀ from the reduced SVD of the matrix ``G``, over singular values above ``max(G.shape)·eps·σ_max``
    (:func:`polaropt.orthogonalize.orthogonalize`, backend ``"svd"``)."""
    return orthogonalize(G, "svd")


def polar_factor_newton_schulz(G: torch.Tensor, steps: int = 30) -> torch.Tensor:
    """UVᵀ by the cubic Newton–Schulz iteration X ← 1.5·X − 0.5·X·XᵀX from X₀ = G/‖G‖_F
    (:func:`polaropt.orthogonalize.orthogonalize`, backend ``"newton-schulz"``, in float32 at least).

    Every singular value of X₀ lies in (0, 1], where the map σ ↦ 1.5σ − 0.5σ³ increases towards its
    fixed point 1 (quadratically near 1; a small σ grows by ×1.5 per step), and zero stays zero. So
    ``steps`` must cover log(‖G‖_F/σ_min)/log(1.5) plus a few steps for the final digits; the default
    30 converges to float32 precision for σ_min/‖G‖_F ≳ 1e-4. Zero singular values stay zero only in
    exact arithmetic: rounding noise there also grows ×1.5 a step, so for a rank-deficient G keep
    ``steps`` well below ~80 (float64) or use the SVD.
    """
    return orthogonalize(G, "newton-schulz", steps, dtype=torch.promote_types(G.dtype, torch.float32))


def dual_norm_and_direction(g: torch.Tensor, norm: str, *, orthogonalize: str = "svd",
                            ns_steps: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """(‖g‖_*, D*) for ``norm``: the dual norm of g and the unit-ball direction that attains it."""
    if norm == "l2":
        n = torch.linalg.vector_norm(g)
        return n, torch.where(n > 0, g / n.clamp_min(torch.finfo(g.dtype).tiny), torch.zeros_like(g))
    if norm == "linf":
        return torch.linalg.vector_norm(g, 1), torch.sign(g)
    if norm == "rms":
        root = math.sqrt(g.numel())
        n = torch.linalg.vector_norm(g)
        return root * n, torch.where(n > 0, root * g / n.clamp_min(torch.finfo(g.dtype).tiny), torch.zeros_like(g))
    if norm == "spectral":
        G = g.reshape(g.shape[0], -1)
        P = polar_factor_svd(G) if orthogonalize == "svd" else polar_factor_newton_schulz(G, ns_steps)
        return (P * G).sum(), P.reshape(g.shape)  # ⟨UVᵀ, G⟩ = Σσᵢ, the nuclear norm
    raise ValueError(f"unknown norm {norm!r}; valid choices are {', '.join(map(repr, NORMS))}")


def steepest_step(g: torch.Tensor, lr: float, norm: str, *, orthogonalize: str = "svd",
                  ns_steps: int = 30) -> torch.Tensor:
    """Δ = argmin gᵀΔ + (1/lr)·‖Δ‖² = −(lr/2)·‖g‖_*·D* (see the module docstring).

    ``"l2"`` and ``"rms"`` use their closed forms −(lr/2)·g and −(lr/2)·n·g directly (the same
    numbers as the dual-norm route without the division by ‖g‖).
    """
    if norm == "l2":
        return g * (-lr / 2)
    if norm == "rms":
        return g * (-lr * g.numel() / 2)
    dual, direction = dual_norm_and_direction(g, norm, orthogonalize=orthogonalize, ns_steps=ns_steps)
    return direction * (dual * (-lr / 2))


# ---- the optimizer ----------------------------------------------------------------------------------

# group keys SteepestDescent reads, plus the tags polaropt.param_groups adds and the keys torch
# itself puts in groups; anything else (momentum, betas, ...) would be silently ignored, so it is refused
KNOWN_KEYS = frozenset({"params", "lr", "norm", "orthogonalize", "ns_steps", "weight_decay", "polar_role",
                        "polar_decay", "polar_steps", "initial_lr", "param_names"})


def _check_options(lr, norm, orthogonalize, ns_steps, weight_decay=0.0):
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not math.isfinite(lr) or lr < 0:
        raise ValueError(f"lr must be a finite non-negative number, got {lr!r}")
    if (not isinstance(weight_decay, (int, float)) or isinstance(weight_decay, bool) or not math.isfinite(weight_decay)
            or weight_decay < 0):
        raise ValueError(f"weight_decay must be a finite non-negative number, got {weight_decay!r}")
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; valid choices are {', '.join(map(repr, NORMS))}")
    if orthogonalize not in ORTHOGONALIZERS:
        raise ValueError(f"unknown orthogonalize {orthogonalize!r}; valid choices are "
                         f"{', '.join(map(repr, ORTHOGONALIZERS))}")
    if not isinstance(ns_steps, int) or isinstance(ns_steps, bool) or ns_steps < 1:
        raise ValueError(f"ns_steps must be a positive int, got {ns_steps!r}")


class SteepestDescent(Optimizer):
    """Steepest descent under a norm: every tensor takes Δ = argmin gᵀΔ + (1/lr)·‖Δ‖² (CS182, seed 004).

    Args:
        params: parameters or param groups; each group may set its own ``norm`` (e.g. ``"spectral"``
            for weight matrices and ``"l2"`` for biases and scales).
        lr: the penalty weight α of the source's problem (1); the ``"l2"`` step is −(lr/2)·g.
        norm: ``"l2"``, ``"linf"``, ``"rms"`` or ``"spectral"`` (closed forms in the module docstring).
        orthogonalize: how ``"spectral"`` gets UVᵀ: ``"svd"`` (exact) or ``"newton_schulz"`` (matrix
            products only; see :func:`polar_factor_newton_schulz`).
        ns_steps: Newton–Schulz iterations.
        weight_decay: decoupled weight decay, ``p ← p·(1 − lr·weight_decay)`` before the step (as
            AdamW), so :func:`polaropt.param_groups`'s placement applies.

    It keeps no optimizer state, so every state policy of :func:`polaropt.attach` is exact with it
    (``"keep"``, ``"reset"`` and ``"rescale"`` all have nothing to change). Each param group may set
    ``lr``, ``norm``, ``orthogonalize``, ``ns_steps`` and ``weight_decay``; any other key (such as
    ``momentum``, which it does not implement) is refused rather than ignored. A non-finite
    gradient raises ``FloatingPointError`` before any parameter is changed.

        >>> import torch
        >>> w = torch.nn.Parameter(torch.zeros(3))
        >>> opt = SteepestDescent([w], lr=1.0, norm="linf")
        >>> w.grad = torch.tensor([1.0, -2.0, 0.5])
        >>> opt.step()
        >>> w.data  # −(1/2)·‖g‖₁·sign(g), ‖g‖₁ = 3.5
        tensor([-1.7500,  1.7500, -1.7500])
    """

    stateless = True  # no per-parameter state: attach's state policies have nothing to transport

    def __init__(self, params, lr: float = 1e-2, norm: str = "l2", *, orthogonalize: str = "svd",
                 ns_steps: int = 30, weight_decay: float = 0.0):
        _check_options(lr, norm, orthogonalize, ns_steps, weight_decay)
        super().__init__(params, dict(lr=lr, norm=norm, orthogonalize=orthogonalize, ns_steps=ns_steps,
                                      weight_decay=weight_decay))

    def add_param_group(self, param_group: dict) -> None:
        # checked before torch appends the group, so a refused group leaves the optimizer as it was
        params = param_group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        unknown = sorted(set(param_group) - KNOWN_KEYS)
        if unknown:
            raise ValueError(f"SteepestDescent does not implement the param group option(s) {', '.join(map(repr, unknown))}; "
                             f"it reads {', '.join(sorted(KNOWN_KEYS - {'params', 'polar_role', 'polar_decay', 'polar_steps', 'initial_lr', 'param_names'}))}")
        group = {**self.defaults, **param_group}
        _check_options(group["lr"], group["norm"], group["orthogonalize"], group["ns_steps"], group["weight_decay"])
        if group["norm"] == "spectral":
            flat = [tuple(p.shape) for p in params if p.ndim < 2]
            if flat:
                raise ValueError(f"norm='spectral' needs matrices (ndim >= 2), got parameters of shape "
                                 f"{', '.join(map(str, flat))}; put them in a param group with norm 'l2', "
                                 f"'linf' or 'rms'")
        super().add_param_group({**param_group, "params": params})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = []
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("SteepestDescent does not support sparse gradients")
                work.append((group, gi, pi, p))
        if not work:
            return loss
        finite = torch.stack([torch.isfinite(p.grad).all() for *_, p in work])
        if not bool(finite.all()):  # one device sync per step; nothing has been written yet
            bad = [f"group {gi} param {pi} {tuple(p.shape)}" for (_, gi, pi, p), ok in zip(work, finite.tolist())
                   if not ok]
            raise FloatingPointError(f"SteepestDescent: non-finite gradient of {', '.join(bad)}; "
                                     f"no parameter was changed")
        for group, _, _, p in work:
            if group["weight_decay"]:
                p.mul_(1 - group["lr"] * group["weight_decay"])
            g = p.grad if p.grad.dtype in (torch.float32, torch.float64) else p.grad.float()
            u = steepest_step(g, group["lr"], group["norm"], orthogonalize=group["orthogonalize"],
                              ns_steps=group["ns_steps"])
            p.add_(u.to(p.dtype))
        return loss
