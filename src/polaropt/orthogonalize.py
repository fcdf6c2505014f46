"""The orthogonal polar factor UVᵀ of a matrix (G = U·diag(σ)·Vᵀ), by interchangeable backends, batched.

Muon and its family step along ``orthogonalize(momentum)``; steepest descent under the spectral norm
steps along the same factor (:mod:`polaropt.steepest`). Every backend takes a stack of matrices
``(..., m, n)`` and runs one chain of batched matmuls for the whole stack; :func:`orthogonalize_many`
stacks the same-shaped matrices of a list (a transformer's blocks) so that each shape costs one chain.

Backends (``BACKENDS``):

- ``"torch"``: the quintic Newton–Schulz iteration of ``torch.optim.Muon`` (Keller Jordan's Muon):
  X₀ = G/‖G‖_F, then ``steps`` times X ← aX + (bA + cA²)X with A = XXᵀ and (a, b, c) = (3.4445,
  −4.7750, 2.0315). Fast but rough by design: the singular values of the output land in about
  0.68–1.14, not at 1. With ``dtype=torch.bfloat16`` (torch's choice on every device) a 2-D matrix
  gives torch's ``_zeropower_via_newtonschulz`` bit for bit.
- ``"polar-express"``: Polar Express (Amsel, Persson, Musco, Gower 2025, arXiv 2505.16932): at step
  k the odd quintic that is minimax-optimal on the interval the singular values are known to lie in
  (from [10⁻³, 1] at the start), with a safety factor 1.01 and a cushion 0.02; the coefficients are
  :data:`POLAR_EXPRESS`, re-derived by :func:`polar_express_coefficients` in the tests. X₀ is
  G/(1.01·‖G‖_F).
- ``"newton-schulz"``: the cubic iteration X ← 1.5X − 0.5XXᵀX (converges to UVᵀ, slowly: use
  ``steps`` ≈ 30).
- ``"svd"``: exact, ``torch.linalg.svd`` (singular values below ``rtol·σ_max`` count as zero).

``dtype``: the iteration's precision. ``None`` chooses per device: bfloat16 on CUDA (tensor cores) and on
a CPU with native bfloat16 (AVX512-BF16/AMX: measured ×0.3–0.6 of float32's time, ``docs/benchmarks.md``),
float32 on other CPUs (where bfloat16 is emulated); float64 input stays float64. bfloat16 costs accuracy
only where the backend is accurate at all (Polar Express at 8 steps: |σ − 1| ≈ 4·10⁻³ against 4·10⁻⁷). The result is returned in
``G``'s dtype. The iteration always runs on the wide side (XXᵀ is the smaller Gram matrix).
"""

from __future__ import annotations

import functools
from collections import defaultdict

import torch

BACKENDS = ("torch", "polar-express", "newton-schulz", "svd")
TORCH_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
EPS = 1e-7

# polar_express_coefficients(l=1e-3, steps=8, safety=0.01, cushion=0.02): (a, b, c) of X <- aX + bX³ + cX⁵;
# every step past the table repeats its last entry
POLAR_EXPRESS = (
    (8.237312490495555, -23.157747414558198, 16.680568411445915),
    (4.0824419990648355, -2.8930477353325883, 0.5252849256975651),
    (3.926347992254655, -2.8547468034765293, 0.5318022422894989),
    (3.298218713308514, -2.4245419810267066, 0.48632008358844087),
    (2.2970369434552578, -1.6366255812590322, 0.40026284559536335),
    (1.8763805351440368, -1.2347896577722168, 0.358918875016681),
    (1.8564423485573243, -1.213244988084782, 0.3568003487782891),
    (1.8750000893284966, -1.2500001786517223, 0.37500008932322587),
)


def _odd_quintic_minimax(lo: float, hi: float) -> tuple[float, float, float]:
    """The odd quintic p(x) = ax + bx³ + cx⁵ closest to 1 in the max norm on [lo, hi] (Remez exchange on
    its four alternation points: lo, the two interior extrema, hi)."""
    import numpy as np

    if lo / hi > 1 - 5e-6:  # a point: the Taylor-optimal quintic of 1/√(x²) at hi (σ ↦ 1 to fifth order)
        return 15 / 8 / hi, -10 / 8 / hi ** 3, 3 / 8 / hi ** 5
    points = np.array([lo, (3 * lo + hi) / 4, (lo + 3 * hi) / 4, hi])
    error = None
    for _ in range(100):
        system = np.stack([points, points ** 3, points ** 5, [1, -1, 1, -1]], axis=1)
        a, b, c, e = np.linalg.solve(system, np.ones(4))
        roots = np.roots([5 * c, 3 * b, a])  # p'(x) = 0 as a quadratic in x²
        points[1:3] = np.sort(np.sqrt(roots.real))
        if error is not None and abs(e - error) < 1e-15:
            break
        error = e
    return float(a), float(b), float(c)


def polar_express_coefficients(lo: float = 1e-3, steps: int = 8, safety: float = 0.01,
                               cushion: float = 0.02) -> list[tuple[float, float, float]]:
    """Polar Express's composition (Amsel et al. 2025, Algorithm 1 with its stabilizations): at each step
    the minimax quintic on [max(lo, cushion·hi), hi], rescaled so that p(lo) and p(hi) straddle 1 when
    the cushion raised the lower end, and contracted by ``1 + safety`` (x ↦ x/(1 + safety)) except at
    the last step; the interval then becomes [p(lo), 2 − p(lo)]. Needs NumPy."""
    def p(coeffs, x):
        a, b, c = coeffs
        return a * x + b * x ** 3 + c * x ** 5

    hi, out = 1.0, []
    for k in range(steps):
        coeffs = _odd_quintic_minimax(max(lo, cushion * hi), hi)
        if cushion * hi > lo:
            coeffs = tuple(2 * x / (p(coeffs, lo) + p(coeffs, hi)) for x in coeffs)
        if k < steps - 1:
            f = 1 + safety
            coeffs = (coeffs[0] / f, coeffs[1] / f ** 3, coeffs[2] / f ** 5)
        out.append(coeffs)
        lo = p(coeffs, lo)
        hi = 2 - lo
        lo = min(lo, hi)
    return out


@functools.cache
def _cpu_has_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX, through oneDNN)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def iteration_dtype(dtype, G: torch.Tensor) -> torch.dtype:
    """``dtype``, or the per-device default when None: bfloat16 on CUDA and on a CPU that multiplies it
    natively, float32 on other CPUs (where bfloat16 is emulated), float64 for a float64 ``G``."""
    if dtype is not None:
        return dtype
    if G.dtype == torch.float64:
        return torch.float64
    if G.device.type == "cuda" or (G.device.type == "cpu" and _cpu_has_bfloat16()):
        return torch.bfloat16
    return torch.float32


def _check(backend: str, steps) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown orthogonalization backend {backend!r}; valid choices are "
                         f"{', '.join(map(repr, BACKENDS))}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive int (Newton–Schulz iterations), got {steps!r}")


def orthogonalize(G: torch.Tensor, backend: str = "torch", steps: int = 5, dtype: torch.dtype | None = None,
                  eps: float = EPS) -> torch.Tensor:
    """The polar factor of each matrix of ``G`` (shape ``(..., m, n)``), in ``G``'s dtype; see the module."""
    _check(backend, steps)
    if G.ndim < 2:
        raise ValueError(f"orthogonalize takes matrices (..., m, n); got a tensor of shape {tuple(G.shape)}")
    if backend == "svd":
        work = G.to(torch.promote_types(G.dtype, torch.float32))
        U, S, Vh = torch.linalg.svd(work, full_matrices=False)
        rtol = max(G.shape[-2:]) * torch.finfo(work.dtype).eps
        keep = (S > rtol * S.amax(dim=-1, keepdim=True)).to(work.dtype)
        return ((U * keep.unsqueeze(-2)) @ Vh).to(G.dtype)
    X = G.to(iteration_dtype(dtype, G))
    tall = G.size(-2) > G.size(-1)
    if tall:
        X = X.mT
    batched = X.ndim > 2
    if not batched:  # torch.optim.Muon's exact sequence of ops, so that a 2-D bfloat16 input matches it bitwise
        X = X.div(X.norm().clamp(min=eps) * (1.01 if backend == "polar-express" else 1))
    else:
        X = X.flatten(0, -3)
        X = X / (X.norm(dim=(-2, -1), keepdim=True).clamp(min=eps) * (1.01 if backend == "polar-express" else 1))
    addmm = torch.baddbmm if batched else torch.addmm
    for k in range(steps):
        A = X @ X.mT
        if backend == "newton-schulz":  # X ← 1.5X − 0.5·(XXᵀ)X
            X = addmm(X, A, X, beta=1.5, alpha=-0.5)
            continue
        a, b, c = TORCH_COEFFICIENTS if backend == "torch" else POLAR_EXPRESS[min(k, len(POLAR_EXPRESS) - 1)]
        B = addmm(A, A, A, beta=b, alpha=c)
        X = addmm(X, B, X, beta=a)
    if batched:
        X = X.view(*G.shape[:-2], *X.shape[-2:])
    return (X.mT if tall else X).to(G.dtype)


def orthogonalize_many(matrices: list[torch.Tensor], backend: str = "torch", steps: int = 5,
                       dtype: torch.dtype | None = None, eps: float = EPS) -> list[torch.Tensor]:
    """:func:`orthogonalize` of each tensor of a list (each ``(..., m, n)``), the same-shaped ones stacked
    into one batched chain (per shape, dtype and device)."""
    _check(backend, steps)
    same = defaultdict(list)
    for i, G in enumerate(matrices):
        same[(tuple(G.shape), G.dtype, G.device)].append(i)
    out: list[torch.Tensor | None] = [None] * len(matrices)
    for idx in same.values():
        if len(idx) == 1:
            out[idx[0]] = orthogonalize(matrices[idx[0]], backend, steps, dtype, eps)
            continue
        stacked = orthogonalize(torch.stack([matrices[i] for i in idx]), backend, steps, dtype, eps)
        for j, i in enumerate(idx):
            out[i] = stacked[j]
    return out


def singular_value_range(G: torch.Tensor, backend: str = "torch", steps: int = 5,
                         dtype: torch.dtype | None = None) -> tuple[float, float]:
    """(min, max) singular value of ``orthogonalize(G)`` over ``G``'s nonzero singular directions, in
    float64: 1 and 1 for an exact polar factor."""
    O = orthogonalize(G, backend, steps, dtype).double()
    rank = int(torch.linalg.matrix_rank(G.double()).min())
    S = torch.linalg.svdvals(O)[..., :rank]
    return float(S.min()), float(S.max())

