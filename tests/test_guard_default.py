"""attach's NaN/Inf guard as it ships: the default keeps no copy of anything and restores nothing, a NaN never
reaches an optimizer checkpoint, check="off" means no check, and check="step" checks the gradients a closure
computes before the update."""

import gc

import pytest
import torch
from torch import nn

import polaropt as po


def _model(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Embedding(50, 64), nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 50))
    po.polarize_model(model, mode="absorb")
    return model


def _loss(model, seed=0):
    x = torch.randint(0, 50, (8, 5), generator=torch.Generator().manual_seed(seed))
    return nn.functional.cross_entropy(model(x).flatten(0, 1), ((x + 1) % 50).flatten())


def _live_bytes() -> int:
    """Bytes of every distinct tensor storage alive in this process."""
    import warnings

    gc.collect()
    seen = {}
    from torch._subclasses.fake_tensor import FakeTensor

    with warnings.catch_warnings():  # isinstance on every object touches deprecated torch attributes
        warnings.simplefilter("ignore")
        tensors = [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor) and not isinstance(obj, FakeTensor)]
    for obj in tensors:
        try:  # a functional tensor left by another test's torch.compile has no storage to read (a fake one holds none)
            st = obj.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
        except (RuntimeError, NotImplementedError):
            continue
    return sum(seen.values())


def _held_after_steps(**attach) -> int:
    model = _model()
    opt = torch.optim.AdamW(po.param_groups(model), lr=1e-2)
    handle = po.attach(opt, model, check_every=2, **attach)
    for t in range(5):  # two periodic reads, and a state_dict read
        opt.zero_grad(set_to_none=True)
        _loss(model, t).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    opt.state_dict()
    held = _live_bytes()
    handle.remove()
    del model, opt, handle
    return held


def test_the_default_check_keeps_no_copy():
    """attach() kept a snapshot of the parameters and the optimizer state (about 4x the parameters with AdamW,
    measured +390 MiB on 96 MiB of weights); the default now holds nothing beyond what the step itself does."""
    params = sum(p.numel() * p.element_size() for p in _model().parameters())
    off, default, restoring = (_held_after_steps(check="off"), _held_after_steps(),
                               _held_after_steps(restore=True))
    assert default - off <= 0.01 * params
    assert restoring - off >= 2 * params  # the measurement sees a copy where one is kept


def test_a_nan_is_raised_by_the_next_read_naming_the_steps_and_never_reaches_a_checkpoint():
    model = _model()
    opt = torch.optim.AdamW(po.param_groups(model), lr=1e-2)
    po.attach(opt, model, check_every=4)
    for t in range(2):
        opt.zero_grad()
        _loss(model, t).backward()
        opt.step()
    opt.zero_grad()
    _loss(model, 2).backward()
    po.direction_of(model[1]).grad[0, 0] = float("nan")  # step 3 writes it into V and Adam's moments
    opt.step()
    with pytest.raises(FloatingPointError, match=r"NaN or Inf entered in the last 3 step\(s\) of AdamW \(steps 1–3 "
                                                 r"since attach.*1\.parametrizations\.weight.*Nothing was restored: "
                                                 r"resume from your "
                                                 r"last checkpoint"):
        opt.state_dict()  # an optimizer checkpoint is read before it is returned
    opt.zero_grad()
    _loss(model, 3).backward()
    with pytest.raises(FloatingPointError, match=r"NaN or Inf entered in the last 4 step\(s\) of AdamW \(steps 1–4"):
        opt.step()  # training on (state_dict()'s read moved no schedule): step 4's periodic read raises
    with pytest.raises(FloatingPointError, match=r"steps 1–4"):
        opt.state_dict()  # still there: every later read says so, none hands the NaN to a checkpoint


def test_check_off_adds_no_read_and_no_check():
    model = _model()
    opt = torch.optim.AdamW(po.param_groups(model), lr=1e-2)
    po.attach(opt, model, check=None)
    opt.zero_grad()
    _loss(model).backward()
    po.direction_of(model[1]).grad[0, 0] = float("nan")
    opt.step()  # not refused: there is no check
    assert not torch.isfinite(po.direction_of(model[1])).all()
    opt.state_dict()  # not read either
    po.check_finite(opt)  # a no-op without a lazy check
    assert torch.allclose(po.direction_of(model[3]).norm(dim=1), torch.ones(50))  # still renormalized
    with pytest.raises(ValueError, match=r"restore=True keeps a copy for the lazy read.*check='step' has no lazy read"):
        po.attach(torch.optim.SGD(_model().parameters(), lr=0.1), _model(), check="step", restore=True)
    with pytest.raises(ValueError, match=r"unknown check 'never'; valid choices are 'lazy', 'step', 'off'"):
        po.attach(opt, model, check="never")


def _closure_step(opt_name, accumulate, polar=True):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    if polar:
        po.polarize_model(model, mode="free")
    opt = {"sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
           "adamw": lambda p: torch.optim.AdamW(p, lr=0.1),
           "lbfgs": lambda p: torch.optim.LBFGS(p, lr=0.1)}[opt_name](model.parameters())
    po.attach(opt, model, check="step")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = torch.tensor([[float("nan"), 0, 0, 0]])

    def closure():  # Lightning's automatic optimization: zero, forward, backward inside step()
        opt.zero_grad()
        loss = 0
        for x in ([torch.randn(3, 4), bad] if accumulate else [bad]):  # gradient accumulation over micro-batches
            micro = model(x).square().mean() / (2 if accumulate else 1)
            micro.backward()
            loss = loss + micro.detach()
        return loss

    with pytest.raises(FloatingPointError):
        opt.step(closure)
    after = model.state_dict()
    return all(torch.equal(before[k], after[k]) for k in before), opt


@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("opt_name", ["sgd", "adamw", "lbfgs"])
@pytest.mark.parametrize("polar", [True, False])
def test_check_step_refuses_a_closures_nan_gradient_before_anything_is_written(opt_name, accumulate, polar):
    """The closure ran after the check, so a NaN gradient was accepted and written (plain torch, free)."""
    unchanged, opt = _closure_step(opt_name, accumulate, polar)
    assert unchanged
    assert not any(opt.state[p] for p in opt.state if opt_name != "lbfgs")  # no moment written either


def test_a_closure_in_its_place_and_other_positional_arguments_pass_through():
    """step(closure, scale) raised 'got multiple values for argument closure'; step(grads) was taken for a closure."""
    class Scaled(torch.optim.SGD):
        def step(self, closure=None, scale=1.0):
            loss = closure() if closure is not None else None
            for g in self.param_groups:
                for p in g["params"]:
                    if p.grad is not None:
                        p.grad.mul_(scale)
            super().step()
            return loss

    model = nn.Sequential(nn.Linear(4, 2))
    po.polarize_model(model, mode="free")
    opt = Scaled(model.parameters(), lr=0.1)
    po.attach(opt, model, check="step")

    def closure():
        opt.zero_grad()
        loss = model(torch.randn(3, 4)).square().mean()
        loss.backward()
        return loss

    assert opt.step(closure, 2.0) is not None and opt.step(closure=closure, scale=0.5) is not None


def test_a_refused_closure_step_puts_the_step_time_lr_back():
    model = nn.Sequential(nn.Linear(4, 2))
    po.polarize_model(model, mode="free")
    opt = torch.optim.SGD(po.param_groups(model), lr=0.1)
    po.attach(opt, model, check="step")
    po.TwoStageLR(opt, freeze_steps=5)

    def closure():
        opt.zero_grad()
        model(torch.tensor([[float("nan"), 0, 0, 0]])).sum().backward()

    with pytest.raises(FloatingPointError):
        opt.step(closure)
    assert [g["lr"] for g in opt.param_groups] == [0.1] * len(opt.param_groups)  # not left multiplied by 0


def test_lbfgs_that_moved_parameters_before_a_bad_closure_call_says_so():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 1))
    po.polarize_model(model, mode="free")
    opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=5)
    po.attach(opt, model, check="step")
    calls = []

    def closure():
        opt.zero_grad()
        calls.append(1)
        x = torch.randn(8, 4) * (float("nan") if len(calls) == 2 else 1.0)  # the line search's trial point
        loss = model(x).square().mean()
        loss.backward()
        return loss

    with pytest.raises(FloatingPointError, match=r"the step was stopped, but LBFGS had already changed .* in this "
                                                 r"step \(between calls of its closure\); those are not restored"):
        opt.step(closure)


def test_a_nan_in_parameters_added_since_the_last_read_is_named_as_theirs():
    model = _model()
    opt = torch.optim.SGD(po.param_groups(model), lr=0.1)
    po.attach(opt, model)
    head = nn.Parameter(torch.full((3,), float("nan")))
    opt.add_param_group({"params": [head]})
    with pytest.raises(FloatingPointError, match=r"NaN or Inf in parameters added since the last clean read"):
        po.check_finite(opt)
