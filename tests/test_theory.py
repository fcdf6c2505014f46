import itertools

import numpy as np
import pytest

from polaropt.experiments import theory


def problem(seed, m=3, d=6):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((m, d)), rng.standard_normal(m)


@pytest.mark.parametrize("seed", range(4))
def test_min_l2_and_projector(seed):
    A, y = problem(seed)
    x = theory.min_l2_solution(A, y)
    np.testing.assert_allclose(x, np.linalg.pinv(A) @ y, atol=1e-12)
    p = theory.null_projector(A)
    np.testing.assert_allclose(p @ p, p, atol=1e-12)  # idempotent
    np.testing.assert_allclose(A @ p, 0, atol=1e-12)  # onto null(A)
    np.testing.assert_allclose(p @ x, 0, atol=1e-12)  # x† is orthogonal to null(A)


@pytest.mark.parametrize("seed", range(4))
def test_min_l1_against_brute_force_vertices(seed):
    A, y = problem(seed, m=2, d=5)
    x = theory.min_l1_solution(A, y)
    np.testing.assert_allclose(A @ x, y, atol=1e-9)
    best = min(np.abs(np.linalg.solve(A[:, list(s)], y)).sum()  # an ℓ1 minimizer sits on an m-sparse vertex
               for s in itertools.combinations(range(5), 2) if abs(np.linalg.det(A[:, list(s)])) > 1e-12)
    assert abs(np.abs(x).sum() - best) < 1e-9


def test_hand_case():
    A, y = np.array([[1.0, 1.0]]), np.array([2.0])
    np.testing.assert_allclose(theory.min_l2_solution(A, y), [1.0, 1.0])
    np.testing.assert_allclose(theory.null_projector(A), [[0.5, -0.5], [-0.5, 0.5]])
    np.testing.assert_allclose(theory.gd_limit(A, y, [3.0, 0.0]), [2.5, -0.5])


def test_gd_limit_against_gradient_descent():
    A, y = problem(0)
    x0 = np.random.default_rng(9).standard_normal(6)
    x = x0.copy()
    for _ in range(20000):
        x -= 0.05 * A.T @ (A @ x - y)
    np.testing.assert_allclose(x, theory.gd_limit(A, y, x0), atol=1e-9)


def simulate_wn(A, y, w, g, c, eta=2e-3, steps=60000):
    """Small-step WN (the source's Algorithm 1) in NumPy, independent of the library."""
    for _ in range(steps):
        n = np.linalg.norm(w)
        r = A @ (g * w / n) - y
        grad_x = A.T @ r
        gw = (g / n) * (grad_x - (w / n) * (w / n @ grad_x))
        gg = (w / n) @ grad_x
        w, g = w - eta * gw, g - c * eta * gg
    return w, g


@pytest.mark.parametrize("g0,c", [(0.5, 1.0), (2.0, 0.5), (0.1, 4.0)])
def test_wn_limit_and_invariant_against_small_step_simulation(g0, c):
    A, y = problem(1, m=2, d=4)
    w = np.random.default_rng(2).standard_normal(4)
    w0n, g = np.linalg.norm(w), g0
    inv0 = theory.wn_invariant(A, w, g, c, w0n)
    w, g = simulate_wn(A, y, w, g, c)
    x_inf, g_inf = theory.wn_limit(A, y, np.random.default_rng(2).standard_normal(4), g0, c)
    np.testing.assert_allclose(g * w / np.linalg.norm(w), x_inf, atol=5e-3)
    assert abs(g - g_inf) < 5e-3
    np.testing.assert_allclose(theory.wn_invariant(A, w, g, c, w0n), inv0, atol=5e-3 * (1 + np.abs(inv0).max()))


def test_wn_limit_when_g_crosses_zero():
    # starting above the loss at zero (½(−0.98 − 1)² > ½), g passes through 0: the limit has g∞ < 0
    A, y, w0 = np.array([[1.0, 0.0]]), np.array([1.0]), np.array([-1.0, 0.2])
    assert 0.5 * (A @ (w0 / np.linalg.norm(w0)) - y) @ (A @ (w0 / np.linalg.norm(w0)) - y) > 0.5 * y @ y
    w, g = simulate_wn(A, y, w0, 1.0, 1.0, steps=30000)
    assert g < 0
    x_inf, g_inf = theory.wn_limit(A, y, w0, 1.0, 1.0, g_sign=g)
    np.testing.assert_allclose(g * w / np.linalg.norm(w), x_inf, atol=5e-3)
    assert abs(g - g_inf) < 5e-3
    assert theory.wn_limit(A, y, w0, 1.0, 1.0)[1] == pytest.approx(-g_inf)  # the default keeps g0's sign


def test_refusals():
    with pytest.raises(ValueError, match="m×d"):
        theory.min_l2_solution(np.ones((2, 3)), np.ones(3))
    with pytest.raises(ValueError, match="positive"):
        theory.wn_limit(np.ones((1, 2)), np.ones(1), [1.0, 0.0], 1.0, 0.0)
