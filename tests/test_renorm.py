import itertools

import pytest
import torch
from torch import nn

import polaropt as po
from polaropt.renorm import _renormalize_grouped, _renormalize_reference, _targets
from polaropt.slices import reduce_dims, slice_norm

from cases import OPTIMIZERS, RENORM_CASES, SEEDS, case_params, make_optimizer


def mlp(seed, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).to(dtype)


def train(model, opt, steps, seed=0, dtype=torch.float64, sched=None):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, model[0].in_features, generator=g, dtype=dtype)
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
        if sched is not None:
            sched.step()


def deferred(opt, model):
    """Let V leave the sphere on purpose: attach, but renormalize only every 10⁹ steps."""
    return po.attach(opt, model, every=10**9)


def per_slice_renorm(v, s, dims, direction, eps):
    """Reference written independently of the library: a loop over slices."""
    v, s = v.clone(), s.clone()
    for idx in itertools.product(*(range(k) for k in s.shape)):
        sl = tuple(slice(None) if d in dims else i for d, i in enumerate(idx))
        a = max(float(v[sl].square().sum().sqrt()), eps)
        v[sl] = v[sl] / a
        if direction == "absorb":
            s[idx] = s[idx] * a
    return v, s


@case_params(RENORM_CASES)
@pytest.mark.parametrize("seed", SEEDS)
def test_renormalization_identities(case, seed):
    model = mlp(seed)
    po.polarize(model[0], **case.kwargs())
    layer = model[0]
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    deferred(opt, model)
    train(model, opt, 3, seed)  # move V off the sphere without renormalizing
    v0, s0, w0 = (po.direction_of(layer).detach().clone(), po.scale_of(layer).detach().clone(),
                  layer.weight.detach().clone())
    dims = reduce_dims(2, case.scale)
    v_ref, s_ref = per_slice_renorm(v0, s0, dims, case.mode, 1e-12)
    po.renormalize_(model)
    v, s = po.direction_of(layer).detach(), po.scale_of(layer).detach()
    torch.testing.assert_close(v, v_ref, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(s, s_ref, rtol=1e-14, atol=1e-15)
    n = slice_norm(v, dims)
    torch.testing.assert_close(n, torch.ones_like(n), rtol=1e-14, atol=0)  # on the unit sphere
    if case.mode == "absorb":  # W unchanged to 1e-12 relative
        rel = (layer.weight - w0).norm() / w0.norm()
        assert rel <= 1e-12
    else:  # project: s untouched, W = s ⊙ V/‖V‖
        assert torch.equal(s, s0)
        torch.testing.assert_close(layer.weight, s0 * v0 / slice_norm(v0, dims))


def _layers():
    """Repeated shapes (so the batched path stacks groups) next to lone ones (its per-tensor path)."""
    return nn.ModuleList([nn.Linear(6, 5), nn.Linear(6, 5), nn.Linear(6, 5),   # a group of 3 row/absorb
                          nn.Linear(5, 4), nn.Linear(5, 4),                    # a group of 2 element/project
                          nn.Conv1d(4, 3, 2), nn.Conv1d(4, 3, 2),              # a group of 2 column/absorb
                          nn.Linear(3, 3), nn.Linear(7, 2)])                   # normalize; a lone row/absorb


def _polarized(dtype, base, seed=1):
    g = torch.Generator().manual_seed(seed)
    model = _layers().to(dtype)
    model.load_state_dict(base.state_dict())
    for i in (0, 1, 2, 8):
        po.polarize(model[i], scale="row", mode="absorb")
    for i in (0, 1, 2):  # three same-shaped biases, tensor scale
        po.polarize(model[i], "bias", scale="tensor", mode="absorb")
    for i in (3, 4):
        po.polarize(model[i], scale="element", mode="project", init="one")
    for i in (5, 6):
        po.polarize(model[i], scale="column", mode="absorb", trainable_scale=False)
    po.polarize(model[3], "bias", scale="tensor", mode="project", eps=1e-3)  # same shape as none other
    po.polarize(model[7], scale="tensor", mode="normalize")  # not renormalized
    with torch.no_grad():
        for t in po.polar_tensors(model):
            t.direction.mul_(torch.rand(t.direction.shape, generator=g).to(dtype) + 0.5)
    return model


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("stack_max", [None, 1 << 30], ids=["cpu-default", "stacked"])
def test_grouped_equals_reference_loop_bitwise(dtype, stack_max):
    torch.manual_seed(0)
    base = _layers().to(dtype)
    a, b = _polarized(dtype, base), _polarized(dtype, base)
    norms_a = _renormalize_grouped(_targets(a), stack_max=stack_max)
    norms_b = _renormalize_reference(_targets(b))
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), name
    for na, nb in zip(norms_a, norms_b):  # the norms the state policy scales moments by
        assert torch.equal(na, nb)
    assert len(_targets(a)) == 12


def test_grouped_launches_do_not_grow_with_the_number_of_tensors():
    """The batched path dispatches the same number of ops for 2 and for 32 same-shaped tensors."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops += 1
            return func(*args, **(kwargs or {}))

    def ops(n, mode):
        model = nn.Sequential(*[nn.Linear(16, 16) for _ in range(n)])
        po.polarize_model(model, scale="row", mode=mode)
        with Count() as c:
            _renormalize_grouped(_targets(model), stack_max=1 << 30)  # as on a GPU
        return c.ops

    for mode in ("absorb", "project"):
        assert ops(2, mode) == ops(32, mode)  # weights and biases: two groups, whatever their size


@pytest.mark.parametrize("scale,direction", [(s, d) for s in po.SCALES for d in po.MODES
                                             if (s, d) != ("element", "normalize")])
def test_batch_dims_equals_separate_runs(scale, direction):
    k, o, i = 3, 4, 5
    torch.manual_seed(0)
    weights = torch.randn(k, o, i, dtype=torch.float64)
    xs = torch.randn(10, k, 7, i, dtype=torch.float64)

    class Batched(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(weights.clone())

        def forward(self, x):  # x: (k, b, i) -> (k, b, o)
            return torch.einsum("kbi,koi->kbo", x, self.weight)

    batched = po.polarize(Batched(), scale=scale, mode=direction, batch_dims=1)
    opt = torch.optim.Adam(batched.parameters(), lr=0.05)
    po.attach(opt, batched)
    singles = []
    for j in range(k):
        m = nn.Linear(i, o, bias=False).double()
        with torch.no_grad():
            m.weight.copy_(weights[j])
        po.polarize(m, scale=scale, mode=direction)
        o_j = torch.optim.Adam(m.parameters(), lr=0.05)
        po.attach(o_j, m)
        singles.append((m, o_j))
    for x in xs:
        opt.zero_grad()
        batched(x).tanh().square().sum().backward()  # a sum over copies: gradients never mix
        opt.step()
        for j, (m, o_j) in enumerate(singles):
            o_j.zero_grad()
            m(x[j]).tanh().square().sum().backward()
            o_j.step()
    for j, (m, _) in enumerate(singles):
        torch.testing.assert_close(po.scale_of(batched)[j], po.scale_of(m), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(po.direction_of(batched)[j], po.direction_of(m), rtol=1e-12, atol=1e-14)


def test_nan_raises_and_modifies_nothing():
    model = mlp(0)
    po.polarize(model[0], scale="row", mode="absorb")
    po.polarize(model[2], scale="row", mode="project")
    with torch.no_grad():
        po.direction_of(model[0]).mul_(2)
        po.direction_of(model[2])[1, 1] = float("nan")
    before = {k: v.clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}
    with pytest.raises(FloatingPointError, match=r"2\.weight and changed nothing"):
        po.renormalize_(model)
    for k, v in before.items():
        v = model.state_dict()[k]
        assert torch.equal(v, before[k]) or (torch.isnan(v) == torch.isnan(before[k])).all(), k
    assert torch.equal(po.direction_of(model[0]), before["0.parametrizations.weight.original1"])


def test_inf_scale_raises():
    model = mlp(0)
    po.polarize(model[0], scale="row", mode="absorb")
    with torch.no_grad():
        po.scale_of(model[0])[0] = float("inf")
    with pytest.raises(FloatingPointError, match=r"0\.weight"):
        po.renormalize_(model)


def test_attach_refuses_a_nan_gradient_before_the_step():
    model = mlp(0)
    po.polarize(model[0], scale="row", mode="absorb")
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    po.attach(opt, model, check="step")
    model(torch.full((2, 6), float("nan"), dtype=torch.float64)).sum().backward()
    before = {k: v.clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}
    with pytest.raises(FloatingPointError, match=r"non-finite gradient .*0\.parametrizations\.weight\.original1.*"
                                                 r"before SGD wrote anything"):
        opt.step()
    for k, v in model.state_dict().items():
        if torch.is_tensor(v):
            assert torch.equal(v, before[k]), k


def test_collapsed_slice_is_guarded_by_eps():
    model = mlp(0)
    po.polarize(model[0], scale="row", mode="absorb", eps=1e-8)
    po.polarize(model[2], scale="row", mode="project")
    with torch.no_grad():
        po.direction_of(model[0])[1] = 0
        po.direction_of(model[2])[0] = 1e-300  # norm underflows to 0
    w_before = model[0].weight.detach().clone()
    po.renormalize_(model)
    for t in po.polar_tensors(model):
        assert torch.isfinite(t.direction).all() and torch.isfinite(t.scale).all()
    assert torch.equal(model[0].weight.detach()[1], torch.zeros(6, dtype=torch.float64))
    torch.testing.assert_close(model[0].weight, w_before, rtol=1e-14, atol=0)


def test_attach_handle_removes_the_hook():
    model = mlp(0)
    po.polarize(model[0], scale="row", mode="project")
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    handle = po.attach(opt, model)
    train(model, opt, 1)
    torch.testing.assert_close(po.direction_of(model[0]).norm(dim=1), torch.ones(5, dtype=torch.float64))
    handle.remove()
    train(model, opt, 1)
    assert (po.direction_of(model[0]).norm(dim=1) - 1).abs().max() > 1e-6


# ----- optimizer state on renormalization -----------------------------------------------------------

def _state_copy(opt, p):
    return {k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v)}


@pytest.mark.parametrize("opt_name", OPTIMIZERS)
@pytest.mark.parametrize("direction", ["project", "absorb"])
@pytest.mark.parametrize("scale", po.SCALES)
def test_state_rescale_matches_its_math(opt_name, direction, scale):
    model = mlp(0)
    po.polarize(model[0], scale=scale, mode=direction)
    s, v = po.scale_of(model[0]), po.direction_of(model[0])
    opt = make_optimizer(opt_name, model.parameters(), lr=0.05)
    deferred(opt, model)
    train(model, opt, 3)  # unrenormalized: ‖V‖ ≠ 1, so a ≠ 1
    a = slice_norm(v.detach(), reduce_dims(2, scale))
    before_v, before_s = _state_copy(opt, v), _state_copy(opt, s)
    po.renormalize_(model, optimizer=opt, state="rescale")
    orders = {"momentum_buffer": -1, "exp_avg": 1, "exp_avg_sq": 2, "max_exp_avg_sq": 2, "step": 0}
    assert before_v, "the optimizer should have state to transport"
    for key, old in before_v.items():
        expected = old if key == "step" else old * a ** orders[key]
        torch.testing.assert_close(opt.state[v][key], expected, rtol=1e-13, atol=0)
    for key, old in before_s.items():
        expected = old / a ** orders[key] if direction == "absorb" and key != "step" else old
        torch.testing.assert_close(opt.state[s][key], expected, rtol=1e-13, atol=0)


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("scale", ["row", "column", "tensor"])
def test_state_rescale_keeps_sgd_momentums_displacement_of_w(scale, nesterov):
    """SGD's momentum buffer is a velocity: transported by "rescale", the displacement of W that it makes at the
    next step (no new gradient) is the one the run without the renormalization makes."""
    def momentum_step(renormalize):
        model = mlp(0)
        po.polarize(model[0], scale=scale, mode="absorb")
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=nesterov)
        deferred(opt, model)
        train(model, opt, 4)
        if renormalize:
            po.renormalize_(model, optimizer=opt, state="rescale")
        before = model[0].weight.detach().clone()
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        return model[0].weight.detach() - before

    moved, plain = momentum_step(True), momentum_step(False)
    assert plain.abs().max() > 1e-3
    torch.testing.assert_close(moved, plain, rtol=1e-10, atol=1e-13)


def test_sgd_momentum_with_rescale_trains_where_it_diverged():
    """Column scales, SGD(0.2, momentum 0.9), absorb: with the buffer transported as a gradient sum the scales
    reached 1e29 by step 47 (FloatingPointError); transported as a velocity it trains as keep does."""
    def run(state):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 5))
        po.polarize_model(model, scale="column", mode="absorb")
        opt = torch.optim.SGD(po.param_groups(model), lr=0.2, momentum=0.9)
        po.attach(opt, model, state=state, check="step")
        g = torch.Generator().manual_seed(0)
        x = torch.randn(256, 20, generator=g)
        y = (x @ torch.randn(20, 5, generator=g)).argmax(1)
        for _ in range(150):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        return float(loss.detach()), max(float(t.scale.detach().abs().max()) for t in po.polar_tensors(model))

    (loss, top), (kept, kept_top) = run("rescale"), run("keep")
    assert loss < 1e-3 and kept < 1e-3 and top < 2 * kept_top


@pytest.mark.parametrize("opt_name", ["adam", "adamw"])
def test_state_rescale_makes_adam_blind_to_absorb(opt_name):
    # After absorb, the gradient w.r.t. V is a·(old one) and w.r.t. s is (old one)/a. With moments
    # transported by "rescale", Adam's next step m̂/√v̂ in the new coordinates equals the step the
    # un-renormalized run takes; with "keep" the old moments mix with rescaled gradients and it does not.
    def next_step(state):
        model = mlp(0)
        po.polarize(model[0], scale="row", mode="absorb")
        opt = torch.optim.Adam(model.parameters(), lr=0.05, eps=0.0) if opt_name == "adam" else \
            torch.optim.AdamW(model.parameters(), lr=0.05, eps=0.0, weight_decay=0.0, amsgrad=True)
        deferred(opt, model)
        train(model, opt, 4)
        if state is not None:
            po.renormalize_(model, optimizer=opt, state=state)
        s, v = po.scale_of(model[0]), po.direction_of(model[0])
        before = s.detach().clone(), v.detach().clone()
        train(model, opt, 1, seed=9)
        return s.detach() - before[0], v.detach() - before[1]

    ds, dv = next_step(None)
    ds_r, dv_r = next_step("rescale")
    torch.testing.assert_close(ds_r, ds, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(dv_r, dv, rtol=1e-10, atol=1e-14)
    ds_k, dv_k = next_step("keep")
    assert (dv_k - dv).abs().max() > 1e-4 and (ds_k - ds).abs().max() > 1e-4


@pytest.mark.parametrize("direction", ["project", "absorb"])
def test_state_reset_drops_renormalized_state_only(direction):
    model = mlp(0)
    po.polarize(model[0], scale="row", mode=direction)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    deferred(opt, model)
    train(model, opt, 2)
    s, v = po.scale_of(model[0]), po.direction_of(model[0])
    other = model[2].weight
    po.renormalize_(model, optimizer=opt, state="reset")
    assert v not in opt.state and other in opt.state
    assert (s not in opt.state) == (direction == "absorb")


def test_state_keep_leaves_state():
    model = mlp(0)
    po.polarize(model[0], scale="row", mode="absorb")
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    deferred(opt, model)
    train(model, opt, 2)
    v = po.direction_of(model[0])
    before = _state_copy(opt, v)
    po.renormalize_(model, optimizer=opt, state="keep")
    for k, t in before.items():
        assert torch.equal(opt.state[v][k], t)


def test_state_policy_refusals():
    model = mlp(0)
    po.polarize(model[0], scale="row", mode="absorb")
    rms = torch.optim.RMSprop(model.parameters())
    with pytest.raises(ValueError, match="SGD, Adam, AdamW, SteepestDescent, not of RMSprop"):
        po.attach(rms, model, state="rescale")
    with pytest.raises(ValueError, match="'keep', 'reset', 'rescale'"):
        po.attach(torch.optim.Adam(model.parameters()), model, state="transport")
    with pytest.raises(ValueError, match="pass optimizer"):
        po.renormalize_(model, state="reset")
    with pytest.warns(UserWarning, match="sign descent"):
        po.attach(rms, model, state="reset")  # reset and keep work with any optimizer


def test_state_rescale_refuses_unknown_state_key():
    class AdamWithExtra(torch.optim.Adam):
        def step(self, closure=None):
            out = super().step(closure)
            for group in self.param_groups:
                for p in group["params"]:
                    self.state[p]["trace"] = torch.zeros_like(p)
            return out

    model = mlp(0)
    po.polarize(model[0], scale="row", mode="absorb")
    opt = AdamWithExtra(model.parameters(), lr=0.01)
    model(torch.randn(2, 6, dtype=torch.float64)).sum().backward()
    opt.step()
    v = po.direction_of(model[0])
    v_before, exp_avg = v.detach().clone(), opt.state[v]["exp_avg"].clone()
    with pytest.raises(ValueError, match="'trace' of 0.weight"):
        po.renormalize_(model, optimizer=opt, state="rescale")
    # refused before anything moved: V was not renormalized, the moments were not scaled
    assert torch.equal(v.detach(), v_before) and (v.detach().norm(dim=1) - 1).abs().max() > 1e-6
    assert torch.equal(opt.state[v]["exp_avg"], exp_avg)
