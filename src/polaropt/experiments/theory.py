"""Closed forms for over-parametrized least squares ``min ½‖Ax − y‖²`` (A: m×d, m < d, full row rank).

- ``min_l2_solution``: x† = A⁺y, the minimum-ℓ2-norm solution (SciPy least squares).
- ``null_projector``: P⊥, the orthogonal projector onto null(A).
- ``min_l1_solution``: argmin ‖x‖₁ s.t. Ax = y, as the linear program min 1ᵀ(u + v), A(u − v) = y,
  u, v ≥ 0 (SciPy ``linprog``, HiGHS).
- ``min_linf_solution``: argmin ‖x‖∞ s.t. Ax = y, as a linear program (HiGHS).
- ``gd_limit``: gradient descent from x0 converges to x† + P⊥x0 (the null-space part never moves).
- ``wn_invariant`` / ``wn_limit``: weight normalization x = g·w/‖w‖ with step η on w and γ = c·η on g
  (Wu et al. 2020, seed 002; derived and checked in seed-findings.md): P⊥w(t)·exp(g(t)²/(2c‖w0‖²)) is
  constant along the gradient flow, and the flow converges to
  x∞ = x† + (g∞/‖w0‖)·P⊥w0·exp(−(g∞² − g0²)/(2c‖w0‖²)), where G = g∞² is the root G ≥ ‖x†‖² of
  G·(1 − a·exp(−(G − g0²)/(c‖w0‖²))) = ‖x†‖², a = ‖P⊥w0‖²/‖w0‖². rPGD has the same limiting flow with η
  replaced by η/‖w0‖².
"""

from __future__ import annotations

import numpy as np
from scipy import linalg, optimize


def _check(A, y):
    A, y = np.asarray(A, dtype=float), np.asarray(y, dtype=float)
    if A.ndim != 2 or y.shape != (A.shape[0],):
        raise ValueError(f"A must be m×d and y of length m, got A {A.shape} and y {y.shape}")
    return A, y


def min_l2_solution(A, y) -> np.ndarray:
    A, y = _check(A, y)
    return linalg.lstsq(A, y)[0]  # for an underdetermined system, lstsq returns the minimum-norm solution


def null_projector(A) -> np.ndarray:
    n = linalg.null_space(np.asarray(A, dtype=float))
    return n @ n.T


def min_l1_solution(A, y) -> np.ndarray:
    A, y = _check(A, y)
    d = A.shape[1]
    res = optimize.linprog(np.ones(2 * d), A_eq=np.hstack([A, -A]), b_eq=y, bounds=(0, None), method="highs")
    if not res.success:
        raise ValueError(f"the ℓ1 program failed: {res.message}")
    return res.x[:d] - res.x[d:]


def min_linf_solution(A, y) -> np.ndarray:
    """argmin ‖x‖∞ s.t. Ax = y, as the linear program min t s.t. −t ≤ xᵢ ≤ t, Ax = y (HiGHS).

    The minimizer is often not unique (only the largest entries are pinned); this returns HiGHS's vertex.
    """
    A, y = _check(A, y)
    m, d = A.shape
    ones = np.ones((d, 1))
    A_ub = np.block([[np.eye(d), -ones], [-np.eye(d), -ones]])  # x − t ≤ 0 and −x − t ≤ 0
    res = optimize.linprog(np.r_[np.zeros(d), 1.0], A_ub=A_ub, b_ub=np.zeros(2 * d),
                           A_eq=np.hstack([A, np.zeros((m, 1))]), b_eq=y,
                           bounds=[(None, None)] * d + [(0, None)], method="highs")
    if not res.success:
        raise ValueError(f"the ℓ∞ program failed: {res.message}")
    return res.x[:d]


def gd_limit(A, y, x0) -> np.ndarray:
    return min_l2_solution(A, y) + null_projector(A) @ np.asarray(x0, dtype=float)


def wn_invariant(A, w, g, c: float, w0_norm: float) -> np.ndarray:
    """P⊥w · exp(g²/(2c‖w0‖²)): constant along the WN gradient flow."""
    if c <= 0:
        raise ValueError(f"c = γ/η must be positive, got {c}")
    return null_projector(A) @ np.asarray(w, dtype=float) * np.exp(g**2 / (2 * c * w0_norm**2))


def wn_limit(A, y, w0, g0: float, c: float, g_sign: float | None = None) -> tuple[np.ndarray, float]:
    """The WN flow's limit x∞ and g∞ (see the module docstring).

    The invariant fixes |g∞| only: both signs give a zero-loss point. The flow keeps the sign of g0
    whenever it starts below the loss at zero (½‖Ag0w0/‖w0‖ − y‖² < ½‖y‖²): the loss never increases
    and g = 0 has loss ½‖y‖², so g cannot cross 0. From a worse start g may cross 0; pass the sign the
    run ended with as ``g_sign`` (default: the sign of g0).
    """
    if c <= 0:
        raise ValueError(f"c = γ/η must be positive (c = 0 freezes g), got {c}")
    A, y = _check(A, y)
    w0 = np.asarray(w0, dtype=float)
    x_dag, p = min_l2_solution(A, y), null_projector(A)
    n2 = float(w0 @ w0)
    a = float((p @ w0) @ (p @ w0)) / n2
    target = float(x_dag @ x_dag)

    def f(G):
        return G * (1 - a * np.exp(-(G - g0**2) / (c * n2))) - target

    lo = target
    if f(lo) >= 0:  # a = 0 (w0 has no null-space part) or the target is 0
        G = lo
    else:
        hi = max(2 * lo, lo + g0**2 + c * n2, 1e-12)
        while f(hi) <= 0:
            hi *= 2
        G = optimize.brentq(f, lo, hi, xtol=1e-15, rtol=1e-14)
    sign = (1.0 if g0 >= 0 else -1.0) if g_sign is None else (1.0 if g_sign >= 0 else -1.0)
    g_inf = float(np.sqrt(G)) * sign
    x_inf = x_dag + (g_inf / np.sqrt(n2)) * (p @ w0) * np.exp(-(G - g0**2) / (2 * c * n2))
    return x_inf, g_inf
