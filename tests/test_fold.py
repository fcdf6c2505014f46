import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import polaropt as po
from polaropt import fold

from cases import SEEDS


@pytest.mark.parametrize("scale", ["tensor", "row", "column"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(3, 9), (2, 3, 9), (40, 9)])  # 40 rows: above the width, W is formed
@pytest.mark.parametrize("seed", SEEDS)
def test_folded_forward_and_gradients_equal_the_product(scale, bias, shape, seed):
    torch.manual_seed(seed)
    layer = nn.Linear(9, 7, bias=bias).double()
    po.polarize(layer, scale=scale, mode="absorb")
    assert "forward" in layer.__dict__
    with torch.no_grad():  # make s and V generic (V off the sphere, s of both signs)
        po.direction_of(layer).mul_(torch.rand(7, 9, dtype=torch.float64) + 0.5)
        po.scale_of(layer).mul_(torch.randn(po.scale_of(layer).shape, dtype=torch.float64))
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    w = layer.weight
    y_ref = F.linear(x, w, layer.bias)
    torch.testing.assert_close(y, y_ref, rtol=1e-13, atol=1e-13)
    params = [x, po.scale_of(layer), po.direction_of(layer)] + ([layer.bias] if bias else [])
    dy = torch.randn_like(y)
    got = torch.autograd.grad(y, params, dy)
    ref = torch.autograd.grad(y_ref, params, dy)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)
    if shape[0] == 40:  # W formed: the same operations as through module.weight, so bitwise
        assert torch.equal(y, y_ref) and all(torch.equal(g, r) for g, r in zip(got, ref))


@pytest.mark.parametrize("kwargs", [dict(mode="normalize"), dict(scale="element"), dict(batch_dims=0, name="bias")])
def test_not_folded(kwargs):
    layer = nn.Linear(4, 3)
    name = kwargs.pop("name", "weight")
    po.polarize(layer, name, **({"scale": "row", "mode": "absorb"} | kwargs))
    assert "forward" not in layer.__dict__


def test_subclasses_are_not_folded():
    class MyLinear(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    layer = po.polarize(MyLinear(4, 3), scale="row", mode="absorb")
    assert "forward" not in layer.__dict__
    x = torch.randn(2, 4)
    torch.testing.assert_close(layer(x), 2 * F.linear(x, layer.weight, layer.bias))


def test_unpolarize_restores_the_class_forward():
    layer = po.polarize(nn.Linear(4, 3), scale="row", mode="absorb")
    po.unpolarize(layer)
    assert "forward" not in layer.__dict__
    x = torch.randn(2, 4)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))


def test_deepcopy_binds_the_forward_to_the_copy():
    # (pickling a parametrized module is refused by torch itself; checkpoints go through state_dict)
    layer = po.polarize(nn.Linear(4, 3), scale="row", mode="absorb")
    clone = copy.deepcopy(layer)
    with torch.no_grad():
        po.scale_of(layer).mul_(2)  # must not leak into the copy
    x = torch.randn(2, 4)
    assert clone.forward.__self__ is clone
    torch.testing.assert_close(clone(x), F.linear(x, clone.weight, clone.bias))
    torch.testing.assert_close(2 * clone.weight, layer.weight)


# ----- the fast path keeps nn.Linear's contract ----------------------------------------------------------

def folded_layer(scale="row"):
    torch.manual_seed(0)
    layer = po.polarize(nn.Linear(9, 7), scale=scale, mode="absorb")
    assert fold.installed(layer)
    return layer


def test_torch_remove_parametrizations_leaves_a_working_linear():
    layer = folded_layer()
    w = layer.weight.detach().clone()
    torch.nn.utils.parametrize.remove_parametrizations(layer, "weight")
    x = torch.randn(2, 9)
    torch.testing.assert_close(layer(x), F.linear(x, w, layer.bias))


def test_a_stacked_parametrization_is_respected():
    class Double(nn.Module):
        def forward(self, w):
            return 2 * w

    layer = folded_layer()
    torch.nn.utils.parametrize.register_parametrization(layer, "weight", Double())
    x = torch.randn(2, 9)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))


@pytest.mark.parametrize("rows", [2, 40])
def test_autocast_output_dtype_matches_plain_linear(rows):
    layer, plain = folded_layer(), nn.Linear(9, 7)
    x = torch.randn(rows, 9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == plain(x).dtype == torch.bfloat16


def test_parametrize_cached_reuses_w():
    layer = folded_layer()
    x = torch.randn(2, 9)
    calls = []
    po.polar_spec(layer).register_forward_hook(lambda *a: calls.append(1))
    with torch.nn.utils.parametrize.cached():
        y1, y2 = layer(x), layer(x)
    assert len(calls) == 1  # W formed once, as the cache promises
    torch.testing.assert_close(y1, F.linear(x, layer.weight, layer.bias))
    torch.testing.assert_close(y2, y1)


def test_a_forward_patched_by_the_user_is_kept_and_survives_unpolarize():
    layer = nn.Linear(9, 7)
    layer.forward = lambda x: torch.zeros(3)
    po.polarize(layer, scale="row", mode="absorb")
    assert not fold.installed(layer) and torch.equal(layer(torch.randn(2, 9)), torch.zeros(3))
    po.unpolarize(layer)
    assert torch.equal(layer(torch.randn(2, 9)), torch.zeros(3))


def test_the_folded_path_raises_the_stale_error_too():
    layer = folded_layer()
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(torch.randn(2, 9)).sum().backward()
    opt.step()
    with pytest.raises(RuntimeError, match="mode='absorb'.*po.attach"):
        layer(torch.randn(2, 9))
