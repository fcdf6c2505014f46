import math

import pytest
import torch
from torch import nn

import polaropt as po


def model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2), nn.Linear(2, 2)).double()
    po.polarize(m[0], scale="row", mode="absorb")
    po.polarize(m[1], scale="tensor", mode="normalize", trainable_scale=False)
    return m


def test_param_groups_partition_the_trainable_parameters():
    m = model()
    groups = po.param_groups(m, scale={"lr": 1e-3}, direction={"lr": 1e-2})
    tags = [(g["polar_role"], g.get("polar_decay")) for g in groups]
    # absorb: s (no decay), V (carries W's decay); normalize with a fixed s: V only, no decay
    assert tags == [("scale", False), ("direction", True), ("direction", False), ("rest", None), ("rest", None)]
    assert groups[0]["params"] == [po.scale_of(m[0])]  # the frozen scale of m[1] is left out
    assert groups[1]["params"] == [po.direction_of(m[0])] and groups[2]["params"] == [po.direction_of(m[1])]
    assert groups[0]["weight_decay"] == 0.0 and groups[2]["weight_decay"] == 0.0
    assert "weight_decay" not in groups[1] and "weight_decay" not in groups[3]  # the optimizer's default
    assert groups[3]["params"] == [m[2].weight]
    assert {id(p) for p in groups[4]["params"]} == {id(m[0].bias), id(m[1].bias), id(m[2].bias)}  # 1-D: no decay
    assert groups[4]["weight_decay"] == 0.0
    opt = torch.optim.AdamW(groups, lr=5.0, weight_decay=0.3)
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-2, 1e-2, 5.0, 5.0]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 0.3, 0.0, 0.3, 0.0]
    everything = po.param_groups(m, no_decay=None)  # polaropt <= 0.3: the rest decays as one group
    assert [g["polar_role"] for g in everything] == ["scale", "direction", "direction", "rest"]


def test_param_groups_weight_decay_argument_and_rest_override():
    groups = po.param_groups(model(), weight_decay=0.2, rest={"weight_decay": 0.0})
    assert [g["weight_decay"] for g in groups] == [0.0, 0.2, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="places W's decay"):
        po.param_groups(model(), direction={"weight_decay": 0.1})
    with pytest.raises(ValueError, match="weight_decay must be a non-negative number"):
        po.param_groups(model(), weight_decay=-1)


def test_param_groups_split_scales_and_empty_groups():
    m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    for layer in m:
        po.polarize(layer, "weight")
        po.polarize(layer, "bias", scale="element", mode="free", init="one")
    groups = po.param_groups(m, split_scales=True)
    # no empty 'rest'; the polar biases are 1-D, kept from decay: their V in the group that carries none
    assert [g["polar_role"] for g in groups] == ["scale"] * 4 + ["direction"] * 2
    assert groups[-1]["params"] == [po.direction_of(m[0], "bias"), po.direction_of(m[1], "bias")]
    assert [g["polar_role"] for g in po.param_groups(m, split_scales=True, no_decay=None)] == (
        ["scale"] * 4 + ["direction"])


# ----- weight decay shrinks W by exactly (1 - lr·λ) per step in every mode --------------------------

def _decay_ratio(build, steps=10, lr=0.1, wd=0.01, through_optimizer=False):
    """‖W‖ after ``steps`` zero-gradient AdamW steps over ‖W‖ before."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 5), nn.Conv1d(5, 4, 3), nn.Embedding(7, 5)).double()
    plain = build(m)
    if plain:
        opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=wd)
    elif through_optimizer:  # λ as the optimizer's default, which param_groups must place once
        opt = torch.optim.AdamW(po.param_groups(m), lr=lr, weight_decay=wd)
        po.attach(opt, m)
    else:
        opt = torch.optim.AdamW(po.param_groups(m, weight_decay=wd), lr=lr, weight_decay=0.5)
        po.attach(opt, m)
    weights = lambda: [m[0].weight, m[1].weight, m[2].weight]  # noqa: E731
    before = [w.detach().norm() for w in weights()]
    for _ in range(steps):
        for p in m.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
    return [float(w.detach().norm() / b) for w, b in zip(weights(), before)]


SCALED = [(sc, mo, tr) for sc in po.SCALES for mo in po.MODES for tr in (True, False)
          if not (mo == "normalize" and sc == "element") and not (mo in ("normalize", "project") and not tr)]


@pytest.mark.parametrize("through_optimizer", [False, True])
@pytest.mark.parametrize("scale,mode,trainable", SCALED, ids=[f"{a}-{b}-{'train' if c else 'fixed'}" for a, b, c in SCALED])
def test_weight_decay_shrinks_w_exactly_once(scale, mode, trainable, through_optimizer):
    expected = _decay_ratio(lambda m: True)
    assert expected[0] == pytest.approx((1 - 0.1 * 0.01) ** 10, rel=1e-12)  # plain AdamW's decoupled decay

    def build(m):
        for layer in m:
            po.polarize(layer, "weight", scale=scale, mode=mode, trainable_scale=trainable)
        return False

    got = _decay_ratio(build, through_optimizer=through_optimizer)
    for g, e in zip(got, expected):
        assert g == pytest.approx(e, rel=1e-6)


@pytest.mark.parametrize("mode", ["normalize", "project"])
def test_a_fixed_norm_weight_takes_no_decay(mode):
    # with a fixed scale, ‖W‖ = s by construction: there is nothing for decay to act on
    def build(m):
        for layer in m:
            po.polarize(layer, "weight", scale="row", mode=mode, trainable_scale=False)
        return False
    assert _decay_ratio(build) == pytest.approx([1.0, 1.0, 1.0], rel=1e-12)


@pytest.mark.parametrize("bad,err", [({"params": []}, ValueError), ([("lr", 1)], TypeError)])
def test_param_groups_refusals(bad, err):
    with pytest.raises(err):
        po.param_groups(model(), scale=bad)


def _effective_lrs(opt):
    """A pre-hook registered after polaropt's: the lr each group really steps with."""
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append([g["lr"] for g in o.param_groups]))
    return seen


def test_two_stage_freezes_then_releases_the_scales():
    m = model()
    opt = torch.optim.SGD(po.param_groups(m), lr=0.1)
    po.attach(opt, m, state="keep")
    sched = po.TwoStageLR(opt, freeze_steps=3)
    seen = _effective_lrs(opt)
    x = torch.randn(5, 4, dtype=torch.float64)
    for _ in range(6):
        w_before = m[0].weight.detach().clone()
        opt.zero_grad()
        m(x).square().sum().backward()
        opt.step()
        sched.step()
        assert opt.param_groups[0]["lr"] == 0.1  # between steps, the lr other schedulers see
        assert not torch.equal(m[0].weight.detach(), w_before)
    assert [lrs[0] > 0 for lrs in seen] == [False, False, False, True, True, True]
    assert all(lrs[1:] == [0.1] * (len(lrs) - 1) for lrs in seen)


def _chained(first, second_factory, steps=12):
    """Effective lrs per step with TwoStageLR/RadiusSquaredLR and a torch scheduler, in a given order."""
    torch.manual_seed(0)
    m = po.polarize(nn.Linear(3, 2).double(), scale="tensor", mode="normalize")
    opt = torch.optim.SGD(po.param_groups(m, split_scales=True), lr=0.1)
    ours, theirs = None, None
    if first == "ours":
        ours = po.TwoStageLR(opt, freeze_steps=4)
        theirs = second_factory(opt)
    else:
        theirs = second_factory(opt)
        ours = po.TwoStageLR(opt, freeze_steps=4)
    seen = _effective_lrs(opt)
    x = torch.randn(5, 3, dtype=torch.float64)
    for _ in range(steps):
        opt.zero_grad()
        m(x).square().sum().backward()
        opt.step()
        for sched in ((ours, theirs) if first == "ours" else (theirs, ours)):
            sched.step()
    return seen


SCHEDULERS = {
    "cosine": lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=12),
    "linear-warmup": lambda opt: torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=5),
    "one-cycle": lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=12),
}


@pytest.mark.parametrize("name", list(SCHEDULERS))
@pytest.mark.parametrize("first", ["ours", "theirs"])
def test_two_stage_composes_with_torch_schedulers_in_either_order(name, first):
    alone = _alone(SCHEDULERS[name])
    seen = _chained(first, SCHEDULERS[name])
    for t, (lrs, ref) in enumerate(zip(seen, alone)):
        assert lrs[0] == (0.0 if t < 4 else pytest.approx(ref[0], rel=1e-12)), t  # the scale group
        assert lrs[1] == pytest.approx(ref[1], rel=1e-12), t  # the direction group: the scheduler's lr


def _alone(factory, steps=12):
    torch.manual_seed(0)
    m = po.polarize(nn.Linear(3, 2).double(), scale="tensor", mode="normalize")
    opt = torch.optim.SGD(po.param_groups(m, split_scales=True), lr=0.1)
    sched = factory(opt)
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("first", ["ours", "theirs"])
def test_radius_squared_composes_with_cosine_in_either_order(first):
    torch.manual_seed(0)
    m = po.polarize(nn.Linear(3, 1, bias=False).double(), scale="tensor", mode="normalize")
    opt = torch.optim.SGD(po.param_groups(m, scale={"lr": 0.05}, direction={"lr": 0.02}), lr=0.1)
    make = [lambda: po.RadiusSquaredLR(opt), lambda: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)]
    scheds = [f() for f in (make if first == "ours" else make[::-1])]
    seen = _effective_lrs(opt)
    x = torch.randn(6, 3, dtype=torch.float64)
    for t in range(8):
        r = float(po.scale_of(m).detach().squeeze())
        cos = 0.5 * (1 + math.cos(math.pi * t / 10))
        opt.zero_grad()
        (m(x) - 3).square().sum().backward()
        opt.step()
        assert math.isfinite(r) and seen[-1][0] == pytest.approx(0.05 * cos * r * r, rel=1e-12)
        assert seen[-1][1] == pytest.approx(0.02 * cos, rel=1e-12)
        for sched in scheds:
            sched.step()


def test_two_stage_with_plain_gd_keeps_g_fixed():
    torch.manual_seed(0)
    m = po.polarize(nn.Linear(3, 1, bias=False).double(), scale="tensor", mode="normalize")
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
    m = po.polarize(nn.Linear(3, 1, bias=False).double(), scale="tensor", mode="normalize")
    opt = torch.optim.SGD(po.param_groups(m, scale={"lr": 0.5}, direction={"lr": 0.2}), lr=0.1)
    sched = po.RadiusSquaredLR(opt)
    seen = _effective_lrs(opt)
    x = torch.randn(6, 3, dtype=torch.float64)
    for _ in range(5):
        r = float(po.scale_of(m).detach().squeeze())
        opt.zero_grad()
        (m(x) - 3).square().sum().backward()
        opt.step()
        sched.step()
        assert seen[-1][0] == pytest.approx(0.5 * r * r, rel=1e-12)
        assert seen[-1][1] == 0.2
        assert opt.param_groups[0]["lr"] == 0.5  # put back after the step
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


def test_a_schedule_that_raises_leaves_no_multiplied_lr_behind():
    import gc

    class Raising(po.TwoStageLR):
        def factors(self, optimizer):
            raise RuntimeError("boom")

    m = model()
    opt = torch.optim.SGD(po.param_groups(m), lr=0.1)
    lrs = [g["lr"] for g in opt.param_groups]
    two = po.TwoStageLR(opt, freeze_steps=10)  # applied first: the scale group's lr × 0
    bad = Raising(opt, freeze_steps=0)         # then this one raises, inside the pre-hook
    m(torch.randn(4, 4, dtype=torch.float64)).sum().backward()
    with pytest.raises(RuntimeError, match="boom"):
        opt.step()
    del bad
    gc.collect()  # the raising schedule is gone; the next step first puts the lrs back
    opt.step()
    assert [g["lr"] for g in opt.param_groups] == lrs
    assert two.last_epoch == 0


class _TimmStyle(nn.Module):
    """timm's convention: the model names parameters that must not decay in ``no_weight_decay()``."""

    def __init__(self):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.randn(1, 5, 4))
        self.cls_token = nn.Parameter(torch.randn(1, 1, 4))
        self.fc, self.norm = nn.Linear(4, 4), nn.LayerNorm(4)

    def no_weight_decay(self):
        return {"pos_embed", "cls_token"}


def _decays(groups):
    return {id(p): g.get("weight_decay") for g in groups for p in g["params"]}


def test_param_groups_honour_no_weight_decay_and_one_dim_parameters_even_once_polarized():
    """After polarizing, timm's names no longer matched (parametrizations.pos_embed.original1), so pos_embed was
    decayed; norms and biases were decayed too."""
    m = _TimmStyle()
    po.polarize_model(m, scale="tensor")  # pos_embed, cls_token and fc.weight are polar now
    d = _decays(po.param_groups(m, weight_decay=0.1))
    for name in ("pos_embed", "cls_token"):
        t = next(t for t in po.polar_tensors(m) if t.qualname == name)
        assert d[id(t.scale)] == 0.0 and d[id(t.direction)] == 0.0, name
    fc = next(t for t in po.polar_tensors(m) if t.qualname == "fc.weight")
    assert d[id(fc.direction)] == 0.1 and d[id(fc.scale)] == 0.0  # absorb: W's decay on V
    assert d[id(m.fc.bias)] == d[id(m.norm.weight)] == d[id(m.norm.bias)] == 0.0
    patterns = _decays(po.param_groups(m, weight_decay=0.1, no_decay=["fc.*"]))
    assert patterns[id(fc.direction)] == 0.0 and patterns[id(m.norm.weight)] == 0.1
    with pytest.raises(TypeError, match=r"no_decay takes 'auto', None, glob patterns or a callable"):
        po.param_groups(m, no_decay=[3])


class _MViTStyle(_TimmStyle):
    """Some timm models build the set from named_parameters(), which after polarizing names the leaves."""

    def no_weight_decay(self):
        return {n for n, _ in self.named_parameters() if any(k in n for k in ("pos_embed", "cls_token"))}


def test_no_weight_decay_names_of_the_polar_leaves_count_for_their_tensor():
    m = _MViTStyle()
    po.polarize_model(m, scale="tensor")
    d = _decays(po.param_groups(m, weight_decay=0.1))
    t = next(t for t in po.polar_tensors(m) if t.qualname == "pos_embed")
    assert d[id(t.scale)] == 0.0 and d[id(t.direction)] == 0.0


def test_a_tied_plain_parameter_named_under_its_second_owner_is_kept_from_decay():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 3)
            self.b.weight = self.a.weight

        def no_weight_decay(self):
            return {"b.weight"}

    m = Tied()
    assert _decays(po.param_groups(m, weight_decay=0.1))[id(m.a.weight)] == 0.0


def test_radius_squared_lr_warns_about_scales_that_start_at_zero():
    m = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    nn.init.zeros_(m[1].weight)
    po.polarize_model(m, scale="tensor", mode="normalize")
    opt = torch.optim.SGD(po.param_groups(m, split_scales=True), lr=0.1)
    with pytest.warns(UserWarning, match=r"RadiusSquaredLR: the scales of param group\(s\) \[1\] are all 0"):
        po.RadiusSquaredLR(opt)
