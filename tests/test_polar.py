import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import polaropt as po
from polaropt.slices import reduce_dims, scale_shape, slice_norm

from cases import CASES, SEEDS, case_params


def linear(seed, in_f=5, out_f=4, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Linear(in_f, out_f).to(dtype)


@case_params(CASES)
@pytest.mark.parametrize("seed", SEEDS)
def test_polarize_keeps_the_weight(case, seed):
    layer = linear(seed)
    w0 = layer.weight.detach().clone()
    po.polarize(layer, **case.kwargs())
    s, v = po.scale_of(layer), po.direction_of(layer)
    assert s is layer.parametrizations.weight.original0 and v is layer.parametrizations.weight.original1
    assert s.shape == scale_shape(w0.shape, case.scale) and v.shape == w0.shape
    torch.testing.assert_close(layer.weight, w0, rtol=1e-14, atol=1e-15)  # forward(right_inverse(W)) == W
    assert s.requires_grad == case.trainable_scale
    if case.init == "norm":
        n = slice_norm(v, reduce_dims(2, case.scale))
        torch.testing.assert_close(n, torch.ones_like(n), rtol=1e-14, atol=0)
    else:
        assert torch.equal(s, torch.ones_like(s)) and torch.equal(v, w0)


@case_params(CASES)
def test_forward_right_inverse_roundtrip_after_assignment(case):
    # assigning module.weight = X goes through right_inverse; reading it back gives X
    layer = po.polarize(linear(0), **case.kwargs())
    x = torch.randn(4, 5, dtype=torch.float64)
    with torch.no_grad():
        layer.weight = x
    torch.testing.assert_close(layer.weight, x, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("seed", SEEDS)
def test_normalize_row_matches_torch_weight_norm(seed):
    ours, theirs = linear(seed, 7, 6), linear(seed, 7, 6)
    po.polarize(ours, scale="row", mode="normalize")
    torch.nn.utils.parametrizations.weight_norm(theirs, "weight", dim=0)
    with torch.no_grad():  # the same W, with V of different norms: ours is unit, theirs is W
        po.direction_of(ours).mul_(torch.rand(6, 1, dtype=torch.float64) + 0.5)
    x = torch.randn(3, 7, dtype=torch.float64)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-13, atol=1e-14)
    ours(x).sin().sum().backward()
    theirs(x).sin().sum().backward()
    g_theirs, v_theirs = theirs.parametrizations.weight.original0, theirs.parametrizations.weight.original1
    torch.testing.assert_close(po.scale_of(ours).grad, g_theirs.grad, rtol=1e-12, atol=1e-14)
    # dL/dV = (g/‖V‖)(I - V̂V̂ᵀ) dL/dW: the two differ by the ratio of their ‖V‖ per row
    ratio = v_theirs.norm(dim=1, keepdim=True) / po.direction_of(ours).norm(dim=1, keepdim=True)
    torch.testing.assert_close(po.direction_of(ours).grad, v_theirs.grad * ratio, rtol=1e-11, atol=1e-13)


def test_free_gradients_are_the_chain_rule():
    layer = po.polarize(linear(0), scale="row", mode="free")
    x = torch.randn(3, 5, dtype=torch.float64)
    w = layer.weight.detach().clone().requires_grad_(True)
    nn.functional.linear(x, w, layer.bias).sin().sum().backward()
    layer(x).sin().sum().backward()
    s, v = po.scale_of(layer), po.direction_of(layer)
    torch.testing.assert_close(v.grad, s.detach() * w.grad)
    torch.testing.assert_close(s.grad, (w.grad * v.detach()).sum(1, keepdim=True))


def test_conv_row_scale_is_per_output_channel():
    conv = nn.Conv2d(3, 8, 3).double()
    po.polarize(conv, scale="row", mode="absorb")
    assert po.scale_of(conv).shape == (8, 1, 1, 1)
    n = po.direction_of(conv).flatten(1).norm(dim=1)
    torch.testing.assert_close(n, torch.ones(8, dtype=torch.float64))


def test_fixed_scale_gets_no_gradient():
    layer = po.polarize(linear(0), scale="row", mode="free", trainable_scale=False)
    layer(torch.randn(2, 5, dtype=torch.float64)).sum().backward()
    assert po.scale_of(layer).grad is None and po.direction_of(layer).grad is not None


@pytest.mark.parametrize("direction", po.MODES)
def test_unpolarize_bakes_out_s_times_direction(direction):
    layer = po.polarize(linear(0), scale="row", mode=direction)
    opt = torch.optim.Adam(layer.parameters(), lr=0.1)
    po.attach(opt, layer)
    for _ in range(3):
        opt.zero_grad()
        layer(torch.randn(4, 5, dtype=torch.float64)).square().sum().backward()
        opt.step()
    expected = layer.weight.detach().clone()
    po.unpolarize(layer)
    assert type(layer.weight) is nn.Parameter and not parametrize.is_parametrized(layer)
    assert torch.equal(layer.weight.detach(), expected)
    assert not po.is_polarized(layer)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("direction", po.MODES)
def test_dtypes(dtype, direction):
    layer = linear(0, 64, 8, dtype)
    w0 = layer.weight.detach().clone()
    po.polarize(layer, scale="row", mode=direction)
    assert po.scale_of(layer).dtype == dtype and po.direction_of(layer).dtype == dtype
    assert layer.weight.dtype == dtype
    tol = {torch.bfloat16: 2e-2, torch.float32: 1e-6, torch.float64: 1e-14}[dtype]
    torch.testing.assert_close(layer.weight, w0, rtol=tol, atol=tol)
    out = layer(torch.randn(3, 64, dtype=dtype))
    out.float().square().sum().backward()
    assert torch.isfinite(po.direction_of(layer).grad).all()


@pytest.mark.parametrize("kwargs,match", [
    (dict(scale="channel"), "valid choices are 'tensor', 'row', 'column', 'element'"),
    (dict(mode="sphere"), "valid choices are 'free', 'normalize', 'project', 'absorb'"),
    (dict(init="zero"), "valid choices are 'norm', 'one'"),
    (dict(mode="normalize", scale="element"), "zero gradient"),
    (dict(mode="normalize", init="one"), "use init='norm'"),
    (dict(eps=0.0), "eps must be a positive"),
    (dict(eps=float("nan")), "eps must be a positive"),
    (dict(batch_dims=2), "at least"),
])
def test_refusals(kwargs, match):
    layer = linear(0)
    with pytest.raises(ValueError, match=match):
        po.polarize(layer, **kwargs)
    assert not parametrize.is_parametrized(layer)  # nothing half-registered


def test_polarizing_twice_is_refused():
    layer = po.polarize(linear(0))
    with pytest.raises(ValueError, match="already polarized"):
        po.polarize(layer)
    other = torch.nn.utils.parametrizations.weight_norm(linear(0))
    with pytest.raises(ValueError, match="already parametrized"):
        po.polarize(other)


def test_missing_tensor_is_refused():
    with pytest.raises(ValueError, match=r"no parameter 'wieght'.*\['weight', 'bias'\]"):
        po.polarize(linear(0), "wieght")


@pytest.mark.parametrize("direction,init", [("normalize", "norm"), ("absorb", "one"), ("project", "one"),
                                            ("free", "norm"), ("absorb", "norm")])
@pytest.mark.parametrize("scale", ["row", "tensor", "element"])
def test_a_zero_slice_polarizes_to_a_zero_scale_and_trains_through_it(direction, init, scale):
    """A zero-initialized output projection, an Embedding's padding row: s = 0, V the unit slice of equal
    entries; W stays exactly 0 until the step moves s (it was refused)."""
    if direction == "normalize" and scale == "element":
        return  # refused for every weight (V/‖V‖ = sign(V))
    layer = linear(0)
    with torch.no_grad():
        layer.weight[2] = 0
        if scale == "tensor":
            layer.weight.zero_()
    po.polarize(layer, scale=scale, mode=direction, init=init)
    assert torch.equal(layer.weight[2], torch.zeros(5, dtype=torch.float64))
    s, v = po.scale_of(layer), po.direction_of(layer)
    zero = s.expand_as(v)[2] if scale != "tensor" else s.expand_as(v)[0]
    assert torch.equal(zero, torch.zeros_like(zero))
    n = {"row": v.shape[1], "tensor": v.numel(), "element": 1}[scale]
    torch.testing.assert_close(v[2], torch.full((5,), n ** -0.5, dtype=torch.float64), rtol=1e-15, atol=0)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    if direction in ("project", "absorb"):
        po.attach(opt, layer)
    for _ in range(2):
        opt.zero_grad()
        layer(torch.randn(4, 5, dtype=torch.float64)).square().sum().backward()
        opt.step()
    assert bool(layer.weight[2].abs().sum() > 0) and bool(torch.isfinite(layer.weight).all())


def test_a_zero_slice_with_a_fixed_scale_is_refused_naming_it():
    layer = linear(0)
    with torch.no_grad():
        layer.weight[2] = 0
    with pytest.raises(ValueError, match=r"1 slice\(s\) of Linear\.weight \(scale='row'\) are exactly zero.*"
                                         r"trainable_scale=False.*stays 0"):
        po.polarize(layer, scale="row", mode="absorb", trainable_scale=False)
    assert not po.is_polarized(layer)


def test_zero_norm_slice_is_fine_when_no_norm_is_needed():
    layer = linear(0)
    with torch.no_grad():
        layer.weight[2] = 0
    po.polarize(layer, scale="row", mode="free", init="one")
    assert torch.equal(layer.weight[2], torch.zeros(5, dtype=torch.float64))


def test_non_finite_weight_is_refused():
    layer = linear(0)
    with torch.no_grad():
        layer.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        po.polarize(layer)


def test_not_polarized_errors():
    layer = linear(0)
    for fn in (po.scale_of, po.direction_of, po.unpolarize, po.polar_spec):
        with pytest.raises(ValueError, match="not polarized"):
            fn(layer)


def test_polar_tensors_finds_nested_tensors():
    model = nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)))
    po.polarize(model[0], "weight", mode="free")
    po.polarize(model[1][1], "bias", scale="element", mode="absorb", init="one")
    found = [(t.qualname, t.polar.mode) for t in po.polar_tensors(model)]
    assert found == [("0.weight", "free"), ("1.1.bias", "absorb")]


@pytest.mark.parametrize("scale,batch_dims", [("tensor", 0), ("row", 0), ("column", 0), ("tensor", 1)])
@pytest.mark.parametrize("seed", SEEDS)
def test_normalize_fused_kernel_equals_reference_path(scale, batch_dims, seed):
    torch.manual_seed(seed)
    w = torch.randn(3, 4, 5, dtype=torch.float64)
    fused, ref = nn.Module(), nn.Module()
    for m in (fused, ref):
        m.weight = nn.Parameter(w.clone())
        po.polarize(m, scale=scale, mode="normalize", batch_dims=batch_dims)
        with torch.no_grad():
            po.direction_of(m).mul_(torch.linspace(0.5, 2.0, 60, dtype=torch.float64).view(3, 4, 5))
    polar = po.polar_spec(fused)
    assert polar._fused_dim is not None
    po.polar_spec(ref)._fused_dim = None  # force the general path
    torch.testing.assert_close(fused.weight, ref.weight, rtol=1e-14, atol=1e-15)
    for m in (fused, ref):
        m.weight.sin().sum().backward()
    torch.testing.assert_close(po.scale_of(fused).grad, po.scale_of(ref).grad, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(po.direction_of(fused).grad, po.direction_of(ref).grad, rtol=1e-12, atol=1e-14)


def test_a_buffer_is_refused():
    # running_var is all ones (a valid split): the old code polarized it, and BatchNorm's in-place
    # update of its running stats then went into a recomputed tensor, freezing them silently
    bn = nn.BatchNorm1d(4)
    for name in ("running_var", "running_mean"):
        with pytest.raises(ValueError, match=f"{name} is a buffer, not a Parameter"):
            po.polarize(bn, name, mode="absorb")
    assert not parametrize.is_parametrized(bn)


def test_polar_settings_and_repr():
    layer = po.polarize(linear(0), scale="row", mode="project", trainable_scale=False)
    assert po.polar_spec(layer).settings() == {"mode": "project", "scale": "row", "trainable_scale": False,
                                               "batch_dims": 0}
    assert "mode='project'" in repr(layer)
