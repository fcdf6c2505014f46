import pytest
import torch
from torch import nn

import polaropt as po


def model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2), nn.Linear(2, 2)).double()
    po.polarize(m[0], scale="row", direction="absorb")
    po.polarize(m[1], scale="tensor", direction="normalize", trainable_scale=False)
    return m


def test_param_groups_partition_the_trainable_parameters():
    m = model()
    groups = po.param_groups(m, scale={"lr": 1e-3}, direction={"lr": 1e-2, "weight_decay": 0.1})
    roles = [g["polar_role"] for g in groups]
    assert roles == ["scale", "direction", "rest"]
    by_role = {g["polar_role"]: g for g in groups}
    assert by_role["scale"]["params"] == [po.scale_of(m[0])]  # the frozen scale of m[1] is left out
    assert by_role["direction"]["params"] == [po.direction_of(m[0]), po.direction_of(m[1])]
    rest = {id(p) for p in by_role["rest"]["params"]}
    assert rest == {id(m[0].bias), id(m[1].bias), id(m[2].weight), id(m[2].bias)}
    opt = torch.optim.AdamW(groups, lr=5.0)
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-2, 5.0]
    assert opt.param_groups[1]["weight_decay"] == 0.1


def test_param_groups_split_scales_and_empty_groups():
    m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    for layer in m:
        po.polarize(layer, "weight")
        po.polarize(layer, "bias", scale="element", direction="free", init="one")
    groups = po.param_groups(m, split_scales=True)
    assert [g["polar_role"] for g in groups] == ["scale"] * 4 + ["direction"]  # no empty 'rest'


@pytest.mark.parametrize("bad,err", [({"params": []}, ValueError), ([("lr", 1)], TypeError)])
def test_param_groups_refusals(bad, err):
    with pytest.raises(err):
        po.param_groups(model(), scale=bad)


def test_two_stage_freezes_then_releases_the_scales():
    m = model()
    opt = torch.optim.SGD(po.param_groups(m), lr=0.1)
    po.attach(opt, m, state="keep")
    sched = po.TwoStageLR(opt, freeze_steps=3)
    x = torch.randn(5, 4, dtype=torch.float64)
    history = []
    for _ in range(6):
        w_before = m[0].weight.detach().clone()
        opt.zero_grad()
        m(x).square().sum().backward()
        opt.step()
        sched.step()
        history.append(bool(opt.param_groups[0]["lr"] > 0))
        assert not torch.equal(m[0].weight.detach(), w_before)
    assert history == [False, False, True, True, True, True]  # lr for the step after this one


def test_two_stage_with_plain_gd_keeps_g_fixed():
    torch.manual_seed(0)
    m = po.polarize(nn.Linear(3, 1, bias=False).double(), scale="tensor", direction="normalize")
    opt = torch.optim.SGD(po.param_groups(m, scale={"lr": 0.1}), lr=0.1)
    sched = po.TwoStageLR(opt, freeze_steps=4)
    g0 = po.scale_of(m).detach().clone()
    x = torch.randn(6, 3, dtype=torch.float64)
    for step in range(8):
        opt.zero_grad()
        (m(x) - 1).square().sum().backward()
        opt.step()
        sched.step()
        frozen = torch.equal(po.scale_of(m).detach(), g0)
        assert frozen == (step < 4), step


def test_radius_squared_lr_follows_r2():
    torch.manual_seed(0)
    m = po.polarize(nn.Linear(3, 1, bias=False).double(), scale="tensor", direction="normalize")
    opt = torch.optim.SGD(po.param_groups(m, scale={"lr": 0.5}, direction={"lr": 0.2}), lr=0.1)
    sched = po.RadiusSquaredLR(opt)
    x = torch.randn(6, 3, dtype=torch.float64)
    for _ in range(5):
        r = float(po.scale_of(m).detach().squeeze())
        assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * r * r, rel=1e-12)
        assert opt.param_groups[1]["lr"] == 0.2
        opt.zero_grad()
        (m(x) - 3).square().sum().backward()
        opt.step()
        sched.step()
    assert float(po.scale_of(m).detach().squeeze()) != r


def test_schedules_need_scale_groups():
    m = model()
    with pytest.raises(ValueError, match="polar_role='scale'"):
        po.TwoStageLR(torch.optim.SGD(m.parameters(), lr=0.1), freeze_steps=2)
    with pytest.raises(ValueError, match="freeze_steps"):
        po.TwoStageLR(torch.optim.SGD(po.param_groups(m), lr=0.1), freeze_steps=-1)


def test_schedule_state_dict_roundtrip():
    m = model()
    opt = torch.optim.SGD(po.param_groups(m), lr=0.1)
    sched = po.TwoStageLR(opt, freeze_steps=3)
    for _ in range(2):
        opt.step()
        sched.step()
    m2 = model()
    opt2 = torch.optim.SGD(po.param_groups(m2), lr=0.1)
    sched2 = po.TwoStageLR(opt2, freeze_steps=3)
    sched2.load_state_dict(sched.state_dict())
    opt2.load_state_dict(opt.state_dict())
    for _ in range(2):
        for o, sc in ((opt, sched), (opt2, sched2)):
            o.step()
            sc.step()
        assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in opt2.param_groups]
