"""SteepestDescent: every step against a brute-force minimization of its own objective
gᵀΔ + (1/lr)·‖Δ‖², the Newton–Schulz path against the SVD, composition with polarize, refusals."""

import numpy as np
import pytest
import torch
from scipy import optimize

import polaropt as po
from polaropt.steepest import polar_factor_newton_schulz, polar_factor_svd

SHAPES = {"l2": [(5,), (2, 3)], "linf": [(5,), (2, 3)], "rms": [(4, 3), (6,)], "spectral": [(3, 4), (4, 2), (2, 3, 2)]}
CASES = [(n, s) for n, shapes in SHAPES.items() for s in shapes]


def norm_of(norm, d, shape):
    """The norms written out in NumPy, independently of the library."""
    if norm == "l2":
        return np.linalg.norm(d)
    if norm == "linf":
        return np.abs(d).max()
    if norm == "rms":
        return np.sqrt(np.mean(d**2))
    return np.linalg.svd(d.reshape(shape[0], -1), compute_uv=False)[0]


def objective(g, norm, shape, lr):
    return lambda d: g.ravel() @ d + norm_of(norm, d, shape) ** 2 / lr


@pytest.mark.parametrize("norm,shape", CASES, ids=[f"{n}-{'x'.join(map(str, s))}" for n, s in CASES])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_step_minimizes_its_objective(norm, shape, seed):
    rng = np.random.default_rng(seed)
    g, lr = rng.standard_normal(shape), float(rng.uniform(0.1, 2.0))
    f = objective(g, norm, shape, lr)
    step = po.steepest_step(torch.tensor(g), lr, norm).numpy().ravel()
    best = min((optimize.minimize(f, 0.1 * rng.standard_normal(g.size), method="Powell",
                                  options=dict(xtol=1e-10, ftol=1e-14, maxiter=100000)) for _ in range(3)),
               key=lambda r: r.fun)
    assert f(step) <= best.fun + 1e-9  # nothing the search found is better
    # a convex objective: no sampled perturbation of the minimizer lowers it
    for scale in (1e-1, 1e-3, 1e-5):
        h = scale * np.abs(step).max() * rng.standard_normal((200, g.size))
        assert min(f(step + dh) for dh in h) >= f(step) - 1e-12
    # the certified lower bound −(lr/4)·‖g‖_*² (from gᵀΔ ≥ −‖g‖_*‖Δ‖) is attained, so the step is optimal
    dual = {"l2": np.linalg.norm(g), "linf": np.abs(g).sum(), "rms": np.sqrt(g.size) * np.linalg.norm(g),
            "spectral": np.linalg.svd(g.reshape(shape[0], -1), compute_uv=False).sum()}[norm]
    assert f(step) == pytest.approx(-lr * dual**2 / 4, rel=1e-10)
    if norm in ("l2", "rms"):  # smooth: the search finds the minimizer itself
        assert best.fun == pytest.approx(f(step), rel=1e-6)
    if norm == "linf":  # the epigraph form min gᵀΔ + t²/lr s.t. −t ≤ Δᵢ ≤ t is smooth: SLSQP solves it
        n = g.size
        cons = [{"type": "ineq", "fun": lambda z: z[n] - z[:n]}, {"type": "ineq", "fun": lambda z: z[n] + z[:n]}]
        qp = optimize.minimize(lambda z: g.ravel() @ z[:n] + z[n] ** 2 / lr, np.zeros(n + 1), method="SLSQP",
                               constraints=cons, options=dict(ftol=1e-12, maxiter=1000))
        assert qp.fun == pytest.approx(f(step), rel=1e-6)  # (SLSQP may flag its last line search; the value is what counts)
        assert np.allclose(qp.x[:n], step, atol=1e-5)


def test_closed_forms_of_the_source():
    g = torch.tensor([3.0, -1.0, 0.0, 2.0], dtype=torch.float64)
    assert torch.equal(po.steepest_step(g, 0.5, "l2"), -0.25 * g)  # −(α/2)·g, CS182 eq. (4)
    assert torch.allclose(po.steepest_step(g, 0.5, "linf"), -0.25 * 6.0 * torch.sign(g))
    assert torch.allclose(po.steepest_step(g, 0.5, "rms"), -0.25 * 4 * g)
    G = torch.randn(5, 3, dtype=torch.float64)
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    assert torch.allclose(po.steepest_step(G, 0.5, "spectral"), -0.25 * S.sum() * U @ Vh)


@pytest.mark.parametrize("norm", po.NORMS)
def test_zero_gradient_gives_zero_step(norm):
    assert torch.equal(po.steepest_step(torch.zeros(3, 2), 1.0, norm), torch.zeros(3, 2))
    assert torch.equal(polar_factor_newton_schulz(torch.zeros(3, 2)), torch.zeros(3, 2))


@pytest.mark.parametrize("shape", [(6, 6), (8, 3), (3, 8), (16, 32)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_newton_schulz_matches_svd(shape, seed):
    G = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    exact = polar_factor_svd(G)
    assert torch.allclose(polar_factor_newton_schulz(G, 40), exact, atol=1e-10)
    a = po.steepest_step(G, 0.3, "spectral")
    b = po.steepest_step(G, 0.3, "spectral", orthogonalize="newton_schulz", ns_steps=40)
    assert torch.allclose(a, b, atol=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_newton_schulz_on_a_rank_deficient_matrix(seed):
    gen = torch.Generator().manual_seed(seed)
    u, v = torch.randn(5, 2, dtype=torch.float64, generator=gen), torch.randn(2, 4, dtype=torch.float64, generator=gen)
    G = u @ v  # rank 2: both paths keep only the nonzero singular directions
    assert torch.allclose(polar_factor_newton_schulz(G, 30), polar_factor_svd(G), atol=1e-8)
    assert torch.linalg.matrix_rank(polar_factor_svd(G)) == 2
    # rounding noise in the null space grows ×1.5 a step: far too many steps turn it into spurious directions
    assert torch.linalg.matrix_rank(polar_factor_newton_schulz(G, 150)) > 2


def test_too_few_newton_schulz_steps_are_visibly_off():
    G = torch.randn(16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert (polar_factor_newton_schulz(G, 3) - polar_factor_svd(G)).abs().max() > 1e-2


def test_optimizer_equals_the_function_per_group():
    torch.manual_seed(0)
    W, b = torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(4))
    W0, b0 = W.detach().clone(), b.detach().clone()
    opt = po.SteepestDescent([{"params": [W], "norm": "spectral"}, {"params": [b], "lr": 0.2}], lr=0.1, norm="linf")
    W.grad, b.grad = torch.randn(4, 3), torch.randn(4)
    opt.step()
    assert torch.allclose(W, W0 + po.steepest_step(W.grad, 0.1, "spectral"))
    assert torch.allclose(b, b0 + po.steepest_step(b.grad, 0.2, "linf"))


def test_l2_is_sgd_with_half_the_step():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
    b.load_state_dict(a.state_dict())
    x = torch.randn(8, 5)
    oa, ob = po.SteepestDescent(a.parameters(), lr=0.2), torch.optim.SGD(b.parameters(), lr=0.1)
    for _ in range(5):
        for m, o in ((a, oa), (b, ob)):
            o.zero_grad()
            m(x).square().sum().backward()
            o.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


@pytest.mark.parametrize("direction", ["free", "normalize", "project", "absorb"])
def test_composes_with_polarize(direction):
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 4)
    po.polarize(layer, "weight", scale="row", mode=direction)
    groups = po.param_groups(layer, scale={"norm": "l2"}, direction={"norm": "spectral"}, rest={"norm": "rms"})
    opt = po.SteepestDescent(groups, lr=0.05)
    if direction in ("project", "absorb"):
        po.attach(opt, layer, state="reset")
    x, y = torch.randn(32, 6), torch.randn(32, 4)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = (layer(x) - y).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    if direction in ("project", "absorb"):
        assert torch.allclose(po.direction_of(layer).norm(dim=1), torch.ones(4), atol=1e-5)


def test_non_finite_gradient_changes_nothing():
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2, 2))
    opt = po.SteepestDescent([{"params": [a]}, {"params": [b], "norm": "spectral"}], lr=0.1, norm="linf")
    a.grad, b.grad = torch.ones(3), torch.tensor([[1.0, float("nan")], [0.0, 1.0]])
    with pytest.raises(FloatingPointError, match=r"group 1 param 0 \(2, 2\).*no parameter was changed"):
        opt.step()
    assert torch.equal(a, torch.ones(3)) and torch.equal(b, torch.ones(2, 2))


def test_closure_and_state_dict_round_trip():
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = po.SteepestDescent([w], lr=0.5, norm="rms")

    def closure():
        opt.zero_grad()
        loss = w.square().sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == 5.0
    assert torch.allclose(w, torch.tensor([1.0, 2.0]) - 0.25 * 2 * torch.tensor([2.0, 4.0]))
    other = po.SteepestDescent([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    other.load_state_dict(opt.state_dict())
    assert other.param_groups[0]["norm"] == "rms" and other.param_groups[0]["lr"] == 0.5


def test_bfloat16_parameters_step_in_float32():
    w = torch.nn.Parameter(torch.ones(4, 4, dtype=torch.bfloat16))
    w.grad = torch.eye(4, dtype=torch.bfloat16)
    po.SteepestDescent([w], lr=0.5, norm="spectral", orthogonalize="newton_schulz").step()
    assert w.dtype == torch.bfloat16 and torch.allclose(w.float(), torch.ones(4, 4) - torch.eye(4))


@pytest.mark.parametrize("kwargs,message", [
    (dict(norm="l1"), "unknown norm 'l1'; valid choices are 'l2', 'linf', 'rms', 'spectral'"),
    (dict(lr=-1.0), "lr must be a finite non-negative number, got -1.0"),
    (dict(lr=float("nan")), "lr must be a finite non-negative number"),
    (dict(orthogonalize="qr"), "unknown orthogonalize 'qr'; valid choices are 'svd', 'newton_schulz'"),
    (dict(ns_steps=0), "ns_steps must be a positive int, got 0"),
    (dict(norm="spectral"), r"norm='spectral' needs matrices.*\(3,\).*param group"),
])
def test_bad_arguments_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        po.SteepestDescent([torch.nn.Parameter(torch.ones(3))], **kwargs)


def test_bad_group_option_refused():
    opt = po.SteepestDescent([torch.nn.Parameter(torch.ones(2, 2))], lr=0.1)
    with pytest.raises(ValueError, match="unknown norm 'nuclear'"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))], "norm": "nuclear"})
    with pytest.raises(ValueError, match="norm='spectral' needs matrices"):
        opt.add_param_group({"params": torch.nn.Parameter(torch.ones(2)), "norm": "spectral"})
    assert len(opt.param_groups) == 1  # a refused group is not left behind


@pytest.mark.parametrize("norm", po.NORMS)
def test_closed_forms_equal_the_general_dual_norm_formula(norm):
    """steepest_step's direct forms (l2, rms) and the general −(lr/2)·‖g‖_*·D* agree for every norm."""
    from polaropt.steepest import dual_norm_and_direction

    g = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    dual, direction = dual_norm_and_direction(g, norm)
    assert torch.allclose(po.steepest_step(g, 0.7, norm), -0.35 * dual * direction, rtol=1e-12, atol=1e-14)
    # D* lies on the unit sphere of the norm and attains the dual norm
    size = {"l2": torch.linalg.vector_norm(direction), "linf": direction.abs().max(),
            "rms": direction.square().mean().sqrt(), "spectral": torch.linalg.matrix_norm(direction, 2)}[norm]
    assert size == pytest.approx(1.0, rel=1e-12) and (g * direction).sum() == pytest.approx(float(dual), rel=1e-12)


def test_unknown_group_options_are_refused_not_ignored():
    w = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match=r"does not implement the param group option\(s\) 'momentum'"):
        po.SteepestDescent([{"params": [w], "momentum": 0.9}], lr=0.1)
    with pytest.raises(ValueError, match=r"'betas'"):
        po.SteepestDescent([{"params": [w], "betas": (0.9, 0.99)}], lr=0.1)


def test_decoupled_weight_decay():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = po.SteepestDescent([w], lr=0.5, norm="l2", weight_decay=0.1)
    w.grad = torch.tensor([0.2, 0.4], dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.tensor([1.0, -2.0], dtype=torch.float64) * (1 - 0.05)
                               - 0.25 * torch.tensor([0.2, 0.4], dtype=torch.float64))
    with pytest.raises(ValueError, match="weight_decay must be a finite non-negative"):
        po.SteepestDescent([w], lr=0.5, weight_decay=-1.0)


@pytest.mark.parametrize("state", po.STATES)
def test_every_state_policy_is_accepted_because_there_is_no_state(state):
    layer = po.polarize(torch.nn.Linear(4, 3).double(), scale="row", mode="absorb")
    opt = po.SteepestDescent(po.param_groups(layer, weight_decay=0.01), lr=0.1, norm="l2")
    po.attach(opt, layer, state=state)
    layer(torch.randn(5, 4, dtype=torch.float64)).square().sum().backward()
    opt.step()
    assert not opt.state
