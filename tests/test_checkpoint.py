import io

import pytest
import torch
from torch import nn

import polaropt as po

from cases import OPTIMIZERS, make_optimizer


def build(direction, scale, opt_name, state, trainable_scale=True):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    po.polarize(model[0], scale=scale, mode=direction, trainable_scale=trainable_scale)
    po.polarize(model[2], scale="tensor", mode=direction, init="norm")
    opt = make_optimizer(opt_name, po.param_groups(model, scale={"lr": 3e-3}), lr=1e-2)
    if direction in ("project", "absorb"):
        # reset renormalizes every 3rd step (every=1 would make Adam sign descent): the step count
        # must come back with the optimizer's state_dict for the resumed run to renormalize at step 9
        po.attach(opt, model, state=state, every=3 if state == "reset" else 1)
    sched = po.TwoStageLR(opt, freeze_steps=4)
    return model, opt, sched


def steps(model, opt, sched, start, n):
    for t in range(start, start + n):
        g = torch.Generator().manual_seed(t)  # the data of step t does not depend on the process
        x, y = torch.randn(16, 6, generator=g), torch.randn(16, 3, generator=g)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        sched.step()


# free/normalize never renormalize, so only "keep" applies to them
MODES = [(d, st) for d in po.MODES for st in po.STATES if d in ("project", "absorb") or st == "keep"]


@pytest.mark.parametrize("direction,state", MODES)
@pytest.mark.parametrize("opt_name", OPTIMIZERS)
def test_checkpoint_resume_is_bitwise(direction, state, opt_name):
    scale = "element" if direction in ("free", "absorb") else "row"
    ref = build(direction, scale, opt_name, state)
    steps(*ref, 0, 6)
    buf = io.BytesIO()
    torch.save({"model": ref[0].state_dict(), "opt": ref[1].state_dict(), "sched": ref[2].state_dict()}, buf)
    steps(*ref, 6, 6)

    resumed = build(direction, scale, opt_name, state)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    resumed[0].load_state_dict(ckpt["model"])
    resumed[1].load_state_dict(ckpt["opt"])
    resumed[2].load_state_dict(ckpt["sched"])
    steps(*resumed, 6, 6)
    for (name, a), (_, b) in zip(ref[0].state_dict().items(), resumed[0].state_dict().items()):
        assert (a == b) if isinstance(a, dict) else torch.equal(a, b), name
    assert set(ref[0].state_dict()) == {"0.bias", "0.parametrizations.weight.original0",
                                        "0.parametrizations.weight.original1", "0.parametrizations.weight.0._extra_state",
                                        "2.bias", "2.parametrizations.weight.original0",
                                        "2.parametrizations.weight.original1", "2.parametrizations.weight.0._extra_state"}
