"""What happens around optimizer.step(): the stale-direction check, attach(every=k), the gradient guard,
state policies across two optimizers, and parameters that polarize replaced."""

import io

import pytest
import torch
from torch import nn

import polaropt as po


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def polar_mlp(seed=0, **spec):
    model = mlp(seed)
    po.polarize(model[0], **spec)
    return model


def step(model, opt, seed=0, x=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 6, generator=g, dtype=torch.float64) if x is None else x
    opt.zero_grad()
    model(x).square().mean().backward()
    opt.step()


def tensors(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}


def opt_state(opt):
    return {(id(p), k): v.clone() for p, st in opt.state.items() for k, v in st.items() if torch.is_tensor(v)}


# ----- a renormalized mode never silently trains as "free" -----------------------------------------

@pytest.mark.parametrize("mode", ["project", "absorb"])
@pytest.mark.parametrize("batch", [2, 40])  # 2 rows: nn.Linear's folded path; 40: W is formed
@pytest.mark.parametrize("optimizer", ["adam", "sgd", "steepest"])
def test_forgotten_attach_raises_at_the_next_forward(mode, batch, optimizer):
    model = polar_mlp(scale="row", mode=mode)
    opt = {"adam": lambda p: torch.optim.Adam(p, lr=0.1), "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
           "steepest": lambda p: po.SteepestDescent(p, lr=0.1)}[optimizer](model.parameters())
    x = torch.randn(batch, 6, dtype=torch.float64)
    step(model, opt, x=x)  # the first forward is fine: nothing was stepped yet
    with pytest.raises(RuntimeError, match=rf"Linear\.weight is polarized with mode='{mode}'.*po\.attach"):
        model(x)
    po.renormalize_(model)  # renormalizing by hand is the other supported way
    model(x)


@pytest.mark.parametrize("mode", ["free", "normalize"])
def test_modes_without_renormalization_need_no_attach(mode):
    model = polar_mlp(scale="row", mode=mode)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    for t in range(3):
        step(model, opt, seed=t)


def test_loading_a_checkpoint_is_not_a_step():
    model = polar_mlp(scale="row", mode="absorb")
    other = polar_mlp(1, scale="row", mode="absorb")
    model.load_state_dict(other.state_dict())  # copies into V in place: must not count as a step
    model(torch.randn(2, 6, dtype=torch.float64))


def test_attach_every_k_renormalizes_every_k_steps_and_survives_a_checkpoint():
    def build():
        model = polar_mlp(scale="row", mode="project")
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        po.attach(opt, model, every=3)
        return model, opt

    model, opt = build()
    v = po.direction_of(model[0])
    on_sphere = []
    for t in range(7):
        step(model, opt, seed=t)  # forwards between renormalizations are allowed
        on_sphere.append(bool(torch.allclose(v.norm(dim=1), torch.ones(5, dtype=torch.float64), rtol=1e-12)))
    assert on_sphere == [False, False, True, False, False, True, False]
    assert opt.param_groups[0]["polar_steps"] == 7
    buf = io.BytesIO()
    torch.save({"m": model.state_dict(), "o": opt.state_dict()}, buf)
    step(model, opt, seed=7)
    step(model, opt, seed=8)  # the 9th step renormalizes
    resumed, opt2 = build()
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    resumed.load_state_dict(ck["m"])
    opt2.load_state_dict(ck["o"])
    step(resumed, opt2, seed=7)
    step(resumed, opt2, seed=8)
    assert torch.equal(po.direction_of(resumed[0]), v)
    torch.testing.assert_close(v.norm(dim=1), torch.ones(5, dtype=torch.float64), rtol=1e-12, atol=0)


@pytest.mark.parametrize("every", [0, -1, 1.5, True])
def test_attach_every_refusals(every):
    model = polar_mlp(mode="absorb")
    with pytest.raises(ValueError, match="every must be a positive int"):
        po.attach(torch.optim.SGD(model.parameters(), lr=0.1), model, every=every)


def test_reset_at_every_step_warns_and_makes_adam_sign_descent():
    model = polar_mlp(scale="row", mode="absorb")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with pytest.warns(UserWarning, match="sign descent"):
        po.attach(opt, model, state="reset")
    v = po.direction_of(model[0])
    for t in range(3):
        before = v.detach().clone()
        opt.zero_grad()
        model(torch.randn(4, 6, dtype=torch.float64)).square().mean().backward()
        g = v.grad.clone()
        opt.step()
        # the step on V before renormalization was lr·sign(g) (fresh moments every step): undo the division
        a = (before - 1e-3 * torch.sign(g)).norm(dim=1, keepdim=True)
        torch.testing.assert_close(v.detach() * a, before - 1e-3 * torch.sign(g), rtol=1e-6, atol=1e-9)
    with _no_warning():
        po.attach(torch.optim.SGD(model.parameters(), lr=0.1), model, state="reset")  # SGD: nothing to lose


class _no_warning:
    def __enter__(self):
        import warnings
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


# ----- the gradient guard: refused before anything is written, in every mode ------------------------

@pytest.mark.parametrize("mode", po.MODES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_gradient_changes_no_parameter_and_no_state(mode, bad):
    model = mlp()
    po.polarize_model(model, mode=mode)
    opt = torch.optim.AdamW(po.param_groups(model, weight_decay=0.1), lr=0.01)
    po.attach(opt, model, state="rescale" if mode != "normalize" else "keep", check="step")
    step(model, opt, seed=0)  # build some optimizer state
    params, state = tensors(model), opt_state(opt)
    opt.zero_grad()
    model(torch.randn(4, 6, dtype=torch.float64)).square().mean().backward()
    model[2].bias.grad[0] = bad  # one bad entry in a plain parameter's gradient
    with pytest.raises(FloatingPointError, match=r"non-finite gradient .*in 2\.bias; the step was refused before AdamW"):
        opt.step()
    assert all(torch.equal(v, params[k]) for k, v in tensors(model).items())
    assert all(torch.equal(v, state[k]) for k, v in opt_state(opt).items())


def test_inf_in_a_project_scale_is_caught():
    model = polar_mlp(scale="row", mode="project")
    with torch.no_grad():
        po.scale_of(model[0])[0] = float("inf")
    with pytest.raises(FloatingPointError, match=r"0\.weight and changed nothing"):
        po.renormalize_(model)


def test_normalize_zero_slice_is_named_by_the_guard():
    model = polar_mlp(scale="row", mode="normalize")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    po.attach(opt, model, check="step")
    with torch.no_grad():
        po.direction_of(model[0])[2] = 0  # pruning a unit by zeroing its direction
    model(torch.randn(4, 6, dtype=torch.float64)).square().mean().backward()
    with pytest.raises(FloatingPointError, match=r"0\.weight \(1 slice\(s\) of V are exactly zero"):
        opt.step()


def test_normalize_zero_slice_is_clamped_off_the_fused_path():
    # bfloat16 takes the general path, which divides by max(‖V‖, eps): a zero slice stays zero
    layer = po.polarize(nn.Linear(6, 5).to(torch.bfloat16), scale="row", mode="normalize")
    with torch.no_grad():
        po.direction_of(layer)[2] = 0
    assert torch.equal(layer.weight[2], torch.zeros(6, dtype=torch.bfloat16))
    assert torch.isfinite(layer.weight).all()


# ----- state policies need s and V in one optimizer ---------------------------------------------------

@pytest.mark.parametrize("state", ["rescale", "reset"])
def test_state_policy_refuses_s_and_v_in_two_optimizers(state):
    model = polar_mlp(scale="row", mode="absorb")
    groups = po.param_groups(model)
    opt_s = torch.optim.Adam([g for g in groups if g["polar_role"] == "scale"], lr=1e-3)
    opt_v = torch.optim.Adam([g for g in groups if g["polar_role"] != "scale"], lr=1e-2)
    with pytest.raises(ValueError, match=r"only V is in this optimizer \(s is in another one or none\)"):
        po.attach(opt_v, model, state=state)
    with pytest.raises(ValueError, match=r"only s is in this optimizer"):
        po.attach(opt_s, model, state=state)
    po.attach(opt_v, model, state="keep")  # keep touches no state: fine
    # a fixed scale has no moments to transport
    fixed = polar_mlp(scale="row", mode="absorb", trainable_scale=False)
    po.attach(torch.optim.Adam(fixed.parameters(), lr=1e-2), fixed, state="rescale")


# ----- a Parameter polarize replaced is never trained silently ----------------------------------------

def test_optimizer_built_before_polarize_is_refused():
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    po.polarize(model[0], mode="free")
    model(torch.randn(2, 6, dtype=torch.float64)).sum().backward()
    before = tensors(model)
    with pytest.raises(RuntimeError, match=r"Parameter of shape \(5, 6\) that polaropt.polarize replaced .*Linear\.weight"):
        opt.step()
    assert all(torch.equal(v, before[k]) for k, v in tensors(model).items())


def test_polarizing_a_weight_an_optimizer_already_stepped_is_refused():
    """The watch list built at the first step is rebuilt when a tensor it holds is replaced."""
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    step(model, opt)
    po.polarize(model[2], mode="free")
    model(torch.randn(2, 6, dtype=torch.float64)).sum().backward()
    with pytest.raises(RuntimeError, match=r"Parameter of shape \(3, 5\) that polaropt.polarize replaced"):
        opt.step()


def test_what_concerns_another_optimizer_leaves_this_ones_key_alone():
    """guard.signature keys an optimizer's cached watch list and renormalization plan: it moves when
    a tensor that optimizer holds is polarized, unpolarized or replaced by a load, not when another model's is
    (an eval copy polarized, copied, loaded or unpolarized on one rank alone must not recompile,
    or desynchronize, the training step there)."""
    import copy

    from polaropt import guard
    model = polar_mlp(scale="row", mode="absorb")
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    po.attach(opt, model)
    step(model, opt)
    key = guard.signature(opt)
    other = mlp(1)
    po.polarize_model(other, mode="absorb")
    copy.deepcopy(other).load_state_dict(other.state_dict(), assign=True)
    other.load_state_dict(other.state_dict())
    po.unpolarize_model(other)
    copy.deepcopy(model)
    assert guard.signature(opt) == key
    model.load_state_dict(model.state_dict())  # in place: the same tensors, nothing to rebuild
    assert guard.signature(opt) == key
    model.load_state_dict(model.state_dict(), assign=True)  # this optimizer's own leaves replaced: rebuild
    assert guard.signature(opt) != key
    key = guard.signature(opt)
    po.unpolarize(model[0])
    assert guard.signature(opt) != key


def test_an_in_place_load_into_a_copied_model_moves_no_version():
    """A deepcopy fills its ParametrizationList after the Polar, so its leaves are recorded when an
    optimizer first steps them; a load in place then changes nothing (b2256a7 bumped at the first)."""
    import copy

    from polaropt import guard
    model = copy.deepcopy(polar_mlp(scale="row", mode="absorb"))
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    po.attach(opt, model)
    step(model, opt)
    key = guard.signature(opt)
    model.load_state_dict(model.state_dict())
    assert guard.signature(opt) == key


def test_a_copied_optimizer_builds_its_own_watch_list():
    import copy
    model = polar_mlp(scale="row", mode="absorb")
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    po.attach(opt, model)
    step(model, opt)
    twin_model, twin_opt = copy.deepcopy((model, opt))  # one deepcopy: the optimizer holds the copy's leaves
    assert "_polar_watch" not in twin_opt.__dict__ or twin_opt.__dict__["_polar_watch"] is None
    step(twin_model, twin_opt)  # nothing renormalizes the copy: the copied watch list must see it
    with pytest.raises(RuntimeError, match="mode='absorb'.*po.attach"):
        twin_model(torch.randn(2, 6, dtype=torch.float64))


def test_a_deepcopy_is_guarded_like_the_original():
    import copy
    model = copy.deepcopy(polar_mlp(scale="row", mode="absorb"))
    plist = model[0].parametrizations.weight
    assert po.polar_spec(model[0])._plist is plist  # the copy's own ParametrizationList
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    step(model, opt)
    with pytest.raises(RuntimeError, match="mode='absorb'.*po.attach"):
        step(model, opt)
    po.renormalize_(model)
    po.attach(opt, model)
    step(model, opt)
    step(model, opt)


def test_a_finite_gradient_whose_sum_overflows_is_not_refused():
    model = polar_mlp(scale="row", mode="free")
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    po.attach(opt, model, check="step")
    for p in model.parameters():
        p.grad = torch.full_like(p, 1e308)  # finite entries; their sum overflows float64
    opt.step()  # the alarm is confirmed per tensor, and there is nothing non-finite


def test_the_guard_catches_inf_that_meets_minus_inf():
    model = polar_mlp(scale="row", mode="free")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    po.attach(opt, model, check="step")
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    model[2].weight.grad[0, :2] = torch.tensor([float("inf"), -float("inf")])
    with pytest.raises(FloatingPointError, match=r"in 2\.weight"):
        opt.step()


@pytest.mark.parametrize("make", [
    lambda p: torch.optim.AdamW(p, lr=1e-2, fused=True),  # fused kernels do not bump version counters
    lambda p: torch.optim.Adam(p, lr=1e-2, foreach=True),
    lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, fused=True),
], ids=["adamw-fused", "adam-foreach", "sgd-fused"])
def test_any_optimizer_implementation_is_watched(make):
    model = polar_mlp(scale="row", mode="project")
    opt = make(model.parameters())
    step(model, opt)
    with pytest.raises(RuntimeError, match="mode='project'.*po.attach"):
        step(model, opt)


def test_a_deepcopy_of_a_stale_model_is_stale():
    import copy
    model = polar_mlp(scale="row", mode="absorb")
    step(model, torch.optim.SGD(model.parameters(), lr=0.5))
    with pytest.raises(RuntimeError, match="po.attach"):
        copy.deepcopy(model)(torch.randn(2, 6, dtype=torch.float64))


def test_polarization_does_not_keep_a_model_alive():
    import gc
    import weakref
    model = polar_mlp(scale="row", mode="absorb")
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    po.attach(opt, model)
    step(model, opt)
    refs = [weakref.ref(po.direction_of(model[0])), weakref.ref(model)]
    del model, opt
    gc.collect()
    assert all(r() is None for r in refs)


def test_unpolarize_that_fails_leaves_the_guard_in_place():
    model = polar_mlp(scale="row", mode="absorb")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    step(model, opt)  # attach forgotten: stale
    with pytest.raises(RuntimeError, match="po.attach"):
        po.unpolarize(model[0])
    assert po.is_polarized(model[0]) and po.polar_spec(model[0])._owners == 1
    po.renormalize_(model)
    step(model, opt)
    with pytest.raises(RuntimeError, match="po.attach"):  # still watched
        step(model, opt)


def test_grad_scaler_with_a_fused_optimizer_skips_overflow_steps_without_raising():
    model = polar_mlp(scale="row", mode="absorb").float()
    opt = torch.optim.AdamW(po.param_groups(model), lr=1e-3, fused=True)
    po.attach(opt, model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 126)
    before = tensors(model)
    opt.zero_grad()
    scaler.scale(model(torch.randn(8, 6)).square().sum() * 100).backward()
    scaler.step(opt)  # the scaled gradients overflow: the fused kernel skips the update
    scaler.update()
    assert all(torch.equal(v, before[k]) for k, v in tensors(model).items())
    assert scaler.get_scale() < 2.0 ** 126
    model(torch.randn(2, 6))  # the skipped step is not a step: nothing stale
    for _ in range(3):  # and ordinary steps go on
        opt.zero_grad()
        scaler.scale(model(torch.randn(8, 6)).square().mean()).backward()
        scaler.step(opt)
        scaler.update()
    torch.testing.assert_close(po.direction_of(model[0]).norm(dim=1), torch.ones(5))


def test_swap_tensors_conversion_works():
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        model = polar_mlp(scale="row", mode="absorb").float()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        po.attach(opt, model)
        model.double()
        assert po.direction_of(model[0]).dtype == torch.float64 and po.scale_of(model[0]).dtype == torch.float64
        model.load_state_dict(polar_mlp(1, scale="row", mode="absorb").state_dict())
        step(model, opt)
        step(model, opt)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(False)


def test_a_parametrization_stacked_above_a_polar_one_is_still_renormalized_and_grouped():
    class Double(nn.Module):
        def forward(self, w):
            return 2 * w

    model = polar_mlp(scale="row", mode="absorb")
    torch.nn.utils.parametrize.register_parametrization(model[0], "weight", Double())
    groups = po.param_groups(model, weight_decay=0.1)
    assert [g["polar_role"] for g in groups] == ["scale", "direction", "rest", "rest"]  # the biases: 1-D, no decay
    opt = torch.optim.AdamW(groups, lr=0.05)
    po.attach(opt, model)
    for t in range(3):
        step(model, opt, seed=t)
    torch.testing.assert_close(po.direction_of(model[0]).norm(dim=1), torch.ones(5, dtype=torch.float64))


@pytest.mark.parametrize("make", [lambda p: torch.optim.SGD(p, lr=0.5), lambda p: torch.optim.LBFGS(p, lr=0.5)],
                         ids=["sgd", "lbfgs"])
def test_a_closure_step_is_watched(make):
    model = polar_mlp(scale="row", mode="absorb")
    opt = make(model.parameters())
    x = torch.randn(5, 6, dtype=torch.float64)

    def closure():
        opt.zero_grad()
        loss = model(x).square().mean()
        loss.backward()
        return loss

    opt.zero_grad()
    opt.step(closure)  # the gradient appears inside the step
    with pytest.raises(RuntimeError, match="po.attach"):
        model(x)
    po.renormalize_(model)
    po.attach(opt, model)
    for _ in range(2):
        opt.step(closure)
    model(x)
    torch.testing.assert_close(po.direction_of(model[0]).norm(dim=1), torch.ones(5, dtype=torch.float64))
