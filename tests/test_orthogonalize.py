"""polaropt.orthogonalize: every backend against the exact polar factor, torch's Newton–Schulz bit for bit,
the batched path against one matrix at a time, and Polar Express's coefficients re-derived."""

import numpy as np
import pytest
import torch
from torch.optim._muon import _zeropower_via_newtonschulz

from polaropt.orthogonalize import (BACKENDS, POLAR_EXPRESS, TORCH_COEFFICIENTS, _odd_quintic_minimax,
                                    orthogonalize, orthogonalize_many, polar_express_coefficients,
                                    singular_value_range)


@pytest.mark.parametrize("shape", [(64, 32), (32, 64), (48, 48), (3, 17)])
def test_the_torch_backend_in_bfloat16_is_torchs_newton_schulz_bitwise(shape):
    G = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    ref = _zeropower_via_newtonschulz(G, TORCH_COEFFICIENTS, 5, 1e-7)
    assert torch.equal(orthogonalize(G, "torch", 5, torch.bfloat16), ref.float())


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_stack_equals_one_matrix_at_a_time(backend):
    gen = torch.Generator().manual_seed(1)
    mats = [torch.randn(24, 40, generator=gen) for _ in range(3)] + [torch.randn(40, 24, generator=gen),
                                                                        torch.randn(2, 8, 8, generator=gen)]
    steps = 30 if backend == "newton-schulz" else 5
    got = orthogonalize_many(mats, backend, steps)
    for G, O in zip(mats, got):
        alone = torch.stack([orthogonalize(g, backend, steps) for g in G]) if G.ndim == 3 else orthogonalize(
            G, backend, steps)
        torch.testing.assert_close(O, alone, rtol=1e-5, atol=1e-6)
        assert O.shape == G.shape and O.dtype == G.dtype


@pytest.mark.parametrize("backend,steps,bounds", [
    ("torch", 5, (0.6, 1.2)),              # rough by design: torch's coefficients land in about 0.68–1.14
    ("polar-express", 5, (0.85, 1.14)),    # its worst case after 5 steps from [1e-3, 1]: [0.857, 1.131]
    ("polar-express", 8, (1 - 1e-5, 1 + 1e-5)),
    ("newton-schulz", 30, (1 - 1e-5, 1 + 1e-5)),
    ("svd", 1, (1 - 1e-5, 1 + 1e-5)),
])
def test_singular_values_of_each_backend(backend, steps, bounds):
    G = torch.randn(128, 300, generator=torch.Generator().manual_seed(2))
    lo, hi = singular_value_range(G, backend, steps, torch.float32)
    assert bounds[0] <= lo <= hi <= bounds[1], (lo, hi)


def test_the_torch_backend_is_not_the_polar_factor():
    # the difference the backends exist for: torch's 5 steps leave singular values 30% from 1
    G = torch.randn(128, 300, generator=torch.Generator().manual_seed(2))
    lo, hi = singular_value_range(G, "torch", 5, torch.float32)
    assert lo < 0.75 and hi > 1.1


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_zero_matrix_gives_zero(backend):
    assert torch.equal(orthogonalize(torch.zeros(4, 6), backend), torch.zeros(4, 6))


def test_float64_input_iterates_in_float64():
    G = torch.randn(20, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    torch.testing.assert_close(orthogonalize(G, "polar-express", 10), U @ Vh, rtol=0, atol=1e-10)


def test_the_polar_express_table_is_its_derivation():
    derived = polar_express_coefficients(1e-3, 8, 0.01, 0.02)
    np.testing.assert_allclose(np.array(POLAR_EXPRESS), np.array(derived), rtol=1e-12)
    # the composition maps every σ in [1e-3, 1] (divided by 1.01, as orthogonalize does) to 1 in 8 steps
    x = np.linspace(1e-3, 1, 20001) / 1.01
    for a, b, c in POLAR_EXPRESS:
        x = a * x + b * x ** 3 + c * x ** 5
    assert np.abs(x - 1).max() < 1e-9


def test_each_step_is_the_minimax_quintic():
    a, b, c = _odd_quintic_minimax(0.1, 1.0)
    x = np.linspace(0.1, 1.0, 100001)
    err = 1 - (a * x + b * x ** 3 + c * x ** 5)
    worst = np.abs(err).max()
    # equioscillation at four points (the ends and two interior extrema), alternating in sign
    assert abs(err[0] - worst) < 1e-9 and abs(err[-1] + worst) < 1e-9
    # and no nearby quintic does better: perturb each coefficient
    for d in np.eye(3) * 1e-3:
        aa, bb, cc = np.array([a, b, c]) + d
        assert np.abs(1 - (aa * x + bb * x ** 3 + cc * x ** 5)).max() > worst


def test_bad_input_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"unknown orthogonalization backend 'qr'; valid choices are 'torch', "):
        orthogonalize(torch.ones(2, 2), "qr")
    with pytest.raises(ValueError, match=r"steps must be a positive int .*got 0"):
        orthogonalize(torch.ones(2, 2), "torch", 0)
    with pytest.raises(ValueError, match=r"takes matrices .*shape \(3,\)"):
        orthogonalize(torch.ones(3))
