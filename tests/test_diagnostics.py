"""UpdateStats: each number against its definition, on plain, polar, Hyperball and multiplier weights."""

import math

import pytest
import torch
from torch import nn

import polaropt as po
from torch.optim.optimizer import _global_optimizer_post_hooks


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)).double()


def _step(model, opt, t):
    opt.zero_grad()
    model(torch.randn(8, 6, generator=torch.Generator().manual_seed(t), dtype=torch.float64)).square().mean().backward()
    opt.step()


def test_each_number_is_its_definition_on_a_plain_sgd_step():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    stats = po.UpdateStats(opt, model)
    w0 = model[2].weight.detach().clone()
    _step(model, opt, 0)
    w1 = model[2].weight.detach()
    got = stats.floats()["2.weight"]
    assert set(stats.floats()) == {"0.weight", "2.weight", "4.weight"}
    assert got["radius"] == pytest.approx(float(w1.norm()), rel=1e-6)
    assert got["update"] == pytest.approx(float((w1 - w0).norm() / w0.norm()), rel=1e-5)
    assert got["radial"] == pytest.approx(float(w1.norm() / w0.norm() - 1), rel=1e-8)
    cos = float((w0 * w1).sum() / (w0.norm() * w1.norm()))
    assert got["angular"] == pytest.approx(math.acos(cos), rel=1e-6)  # float64 weights: arccos resolves it
    assert stats.step == 1


@pytest.mark.parametrize("name", ["hyperball-adamw", "polar-absorb", "multipliers"])
def test_it_sees_the_weight_the_layer_uses(name):
    model = _mlp()
    opt = po.recipe(name, model, lr=0.05)
    stats = po.UpdateStats(opt, model)
    before = {k: v().detach().clone() for k, v in po.diagnostics.weight_matrices(model).items()}
    _step(model, opt, 0)
    got = stats.floats()
    assert set(got) == set(before) and len(got) == 3
    for k, w0 in before.items():
        w1 = po.diagnostics.weight_matrices(model)[k]().detach()
        assert got[k]["update"] == pytest.approx(float((w1 - w0).norm() / w0.norm()), rel=1e-5)
    if name == "hyperball-adamw":  # the radius is fixed on the hidden matrix, after the step's hooks
        assert abs(got["2.weight"]["radial"]) < 1e-6 and got["2.weight"]["angular"] > 0


def test_only_every_kth_step_is_recorded_and_remove_detaches():
    model = _mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    hooks = len(_global_optimizer_post_hooks)
    stats = po.UpdateStats(opt, model, every=3)
    seen = []
    for t in range(7):
        _step(model, opt, t)
        seen.append(stats.step)
    assert seen == [1, 1, 1, 4, 4, 4, 7]
    stats.remove()
    assert len(_global_optimizer_post_hooks) == hooks and not opt._optimizer_step_pre_hooks
    with pytest.raises(ValueError, match="every must be a positive int .*got 0"):
        po.UpdateStats(opt, model, every=0)


def test_a_tiny_float32_step_is_resolved():
    # 1e-6 rad: a cosine computed in float32 is exactly 1 here, and arccos(1) = 0
    w0 = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    turn = torch.randn(64, 64, generator=torch.Generator().manual_seed(1))
    turn -= (turn * w0).sum() / (w0 * w0).sum() * w0  # orthogonal to w0
    w1 = w0 + 1e-6 * w0.norm() * turn / turn.norm()
    got = po.diagnostics.update_stats(w0, w1)
    assert got["angular"].item() == pytest.approx(1e-6, rel=0.05)
    assert abs(got["radial"].item()) < 3e-9  # second order only; r1/r0 - 1 in float32 would be off by ~6e-8
