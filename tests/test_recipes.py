"""Recipes: each equals its peer (torch's Muon, torch's weight_norm, the Hyperball formula computed here),
every recipe resumes bitwise from a checkpoint, ties and the hidden-matrix choice, bad input refused."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import polaropt as po


class TinyGPT(nn.Module):
    """Embedding tied to the head, fused qkv, a conv, LayerNorm: the shapes recipes must sort."""

    def __init__(self, vocab=20, d=16):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.conv = nn.Conv1d(d, d, 3, padding=1)
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, x):
        h = self.emb(x)
        q, k, v = self.qkv(h).chunk(3, -1)
        h = h + self.proj(v * torch.sigmoid(q * k))
        h = h + self.conv(h.transpose(1, 2)).transpose(1, 2)
        return self.head(self.ln(h))


def data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 20, (4, 8), generator=g), torch.randint(0, 20, (4, 8), generator=g)


def model(seed=0):
    torch.manual_seed(seed)
    return TinyGPT().double()


def train(m, opt, steps, seed=0):
    for t in range(steps):
        x, y = data(seed + t)
        opt.zero_grad()
        F.cross_entropy(m(x).flatten(0, 1), y.flatten()).backward()
        opt.step()


def test_hidden_matrices_follow_the_fields_convention():
    m = model()
    assert [q for q, _ in po.hidden_matrices(m)] == ["qkv.weight", "proj.weight", "conv.weight"]
    assert [q for q, _ in po.hidden_matrices(m, exclude="conv.*")] == ["qkv.weight", "proj.weight"]
    assert [q for q, _ in po.hidden_matrices(m, include=["proj.weight", "head.weight"])] == ["emb.weight", "proj.weight"]
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))  # the last Linear is the head
    assert [q for q, _ in po.hidden_matrices(mlp)] == ["0.weight"]


@pytest.mark.parametrize("name", po.RECIPES)
def test_every_recipe_trains_keeps_ties_and_resumes_bitwise(name, tmp_path):
    m = model()
    opt = po.recipe(name, m, lr=1e-2, weight_decay=0.1)
    assert opt.polar_recipe == name
    train(m, opt, 3)
    torch.save({"model": m.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    resumed = model(seed=1)  # other weights: everything must come from the checkpoint
    ropt = po.recipe(name, resumed, lr=1e-2, weight_decay=0.1)
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    resumed.load_state_dict(ckpt["model"])
    ropt.load_state_dict(ckpt["opt"])
    train(m, opt, 2, seed=3)
    train(resumed, ropt, 2, seed=3)
    for (k, a), b in zip(m.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b) if torch.is_tensor(a) else a == b, (name, k)  # polar settings are extra state
    assert torch.equal(m.head.weight, m.emb.weight)  # the tie holds
    x, y = data(9)
    assert torch.isfinite(F.cross_entropy(m(x).flatten(0, 1), y.flatten()))


def test_muon_recipe_steps_equal_torch_muon():
    a, b = model(), model()
    opt = po.recipe("muon", a, lr=0.02, weight_decay=0.1)
    mats = [b.qkv.weight, b.proj.weight]
    rest = [p for p in b.parameters() if all(p is not q for q in mats + [b.conv.weight])]
    # torch's Muon takes 2-D matrices only; the conv kernel is the matrix out × in·k (tested in test_muon.py)
    peer = [torch.optim.Muon(mats, lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw"),
            po.Muon([b.conv.weight], lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw", dtype=torch.bfloat16),
            torch.optim.AdamW(decay_groups(rest, 0.1), lr=0.02)]
    for t in range(4):
        train(a, opt, 1, seed=t)
        x, y = data(t)
        for o in peer:
            o.zero_grad()
        F.cross_entropy(b(x).flatten(0, 1), y.flatten()).backward()
        for o in peer:
            o.step()
    for (k, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), k


def decay_groups(params, wd):
    """The usual convention every recipe follows: biases and norm gains (1-D) are not decayed."""
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": wd},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def test_weight_norm_recipe_is_torchs_weight_norm():
    a, b = model(), model()
    opt = po.recipe("adamw-weight-norm", a, lr=1e-2, weight_decay=0.1)
    wn = torch.nn.utils.parametrizations.weight_norm
    for mod in (b.qkv, b.proj, b.conv):
        wn(mod, "weight", dim=0)
    gains = [mod.parametrizations.weight.original0 for mod in (b.qkv, b.proj, b.conv)]
    dirs = [mod.parametrizations.weight.original1 for mod in (b.qkv, b.proj, b.conv)]
    rest = [p for p in b.parameters() if all(p is not q for q in gains + dirs)]
    peer = torch.optim.AdamW([{"params": dirs, "weight_decay": 0.1}, {"params": gains, "weight_decay": 0.0},
                              *decay_groups(rest, 0.1)], lr=1e-2)
    train(a, opt, 3)
    train(b, peer, 3)
    for (k, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), k


@pytest.mark.parametrize("base", ["adamw", "muon"])
def test_hyperball_step_is_the_formula(base):
    m = model()
    w0 = {k: m.get_parameter(k).detach().clone() for k in ("qkv.weight", "proj.weight")}
    opt = po.recipe(f"hyperball-{base}", m, lr=0.05)
    x, y = data(0)
    opt.zero_grad()
    F.cross_entropy(m(x).flatten(0, 1), y.flatten()).backward()
    grads = {k: m.get_parameter(k).grad.clone() for k in w0}
    opt.step()
    for k, w in w0.items():
        g = grads[k]
        if base == "adamw":  # Adam's first update, bias-corrected: m̂ = g, v̂ = g²
            u = g / (g.abs() + 1e-8)
        else:  # Muon's update of a fresh optimizer, measured on a copy
            c = w.clone().requires_grad_()
            c.grad = g.clone()
            torch.optim.Muon([c], lr=1.0, weight_decay=0.0, adjust_lr_fn="match_rms_adamw").step()
            u = w - c.detach()
        R = w.norm()
        moved = w - 0.05 * R * u / u.norm()
        expected = R * moved / moved.norm()
        torch.testing.assert_close(m.get_parameter(k).detach(), expected, rtol=1e-10, atol=1e-12)
        assert torch.allclose(m.get_parameter(k).norm(), R)


def test_hyperball_radius_is_the_start_norm_and_survives_a_checkpoint():
    m = model()
    r0 = m.qkv.weight.detach().norm().clone()
    opt = po.recipe("hyperball-adamw", m, lr=0.05)
    train(m, opt, 3)
    base = opt.optimizers[0]
    assert base.state[m.qkv.weight]["hyperball_radius"] == float(r0.double())
    assert torch.allclose(m.qkv.weight.norm(), r0)
    sd = copy.deepcopy(opt.state_dict())
    other = model(seed=5)  # another start norm: the checkpoint's radius must win
    oopt = po.recipe("hyperball-adamw", other, lr=0.05)
    other.load_state_dict(m.state_dict())
    oopt.load_state_dict(sd)
    train(other, oopt, 1, seed=7)
    assert oopt.optimizers[0].state[other.qkv.weight]["hyperball_radius"] == float(r0.double())
    assert torch.allclose(other.qkv.weight.norm(), r0)


def test_multipliers_start_at_the_weights_and_decay_only_v():
    m, plain = model(), model()
    x, _ = data(0)
    opt = po.recipe("multipliers", m, lr=1e-2, weight_decay=0.5)
    assert torch.equal(m(x), plain(x))
    groups = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    mult = m.qkv.parametrizations.weight[0]
    assert groups[id(mult.r)] == groups[id(mult.c)] == 0.0
    assert groups[id(m.qkv.parametrizations.weight.original)] == 0.5


def test_recipes_refuse_bad_input():
    with pytest.raises(ValueError, match="unknown recipe 'adam'; valid recipes are adamw, adamw-weight-norm"):
        po.recipe("adam", model(), lr=1e-3)
    with pytest.raises(ValueError, match="recipe 'muon' takes no option 'every'; its options are betas, check, check_every, direction_options, eps, "
                                         "radial_lr, rest_lr, restore"):
        po.recipe("muon", model(), lr=1e-3, every=2)
    with pytest.raises(ValueError, match="recipe 'adamw' takes no option 'rest_lr'; its options are betas, eps"):
        po.recipe("adamw", model(), lr=1e-3, rest_lr=1e-3)
    for name in ("muon", "adamw-weight-norm"):
        m = model()
        with pytest.raises(ValueError, match="rest_lr must be a positive finite number, got 0"):
            po.recipe(name, m, lr=1e-3, rest_lr=0)
        assert not any(torch.nn.utils.parametrize.is_parametrized(x) for x in m.modules())  # refused untouched
    with pytest.raises(ValueError, match="lr must be a positive finite number, got -1"):
        po.recipe("adamw", model(), lr=-1)
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        po.recipe("polar-absorb", model(), lr=1e-3, weight_decay=-0.1)
    with pytest.raises(ValueError, match="include pattern 'nope' matches no parameter"):
        po.recipe("muon", model(), lr=1e-3, include="nope")


@pytest.mark.parametrize("name", [r for r in po.RECIPES if r != "adamw"])
def test_rest_lr_steps_everything_but_the_hidden_matrices(name):
    """The benchmark fixes the embeddings', head's, biases' and gains' lr at tuned AdamW's while it searches a
    recipe's own lr: rest_lr must reach exactly those, and the hidden matrices (and their scales) keep lr."""
    m = model()
    opt = po.recipe(name, m, lr=1e-2, rest_lr=3e-4)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    rest = [m.emb.weight, m.qkv.bias, m.proj.bias, m.conv.bias, m.ln.weight, m.ln.bias]
    assert all(lr_of[id(p)] == 3e-4 for p in rest)
    hidden = [p for p in m.parameters() if all(p is not q for q in rest)]
    assert hidden and all(lr_of[id(p)] == 1e-2 for p in hidden)  # W, or its direction and scale (or multipliers)
    train(m, opt, 2)  # and it steps


def test_recipe_handles_remove_the_hooks():
    m = model()
    opt = po.recipe("hyperball-adamw", m, lr=0.05)
    for h in opt.polar_handles:
        h.remove()
    train(m, opt, 2)
    assert not torch.allclose(m.qkv.weight.norm(), model().qkv.weight.norm())  # plain AdamW now: the norm moves


def test_a_scheduler_on_a_recipe_reaches_every_inner_optimizer():
    m = model()
    opt = po.recipe("muon", m, lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 ** t)
    train(m, opt, 1)
    sched.step()
    assert {g["lr"] for o in opt.optimizers for g in o.param_groups} == {0.05}


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x, use_b):
        return self.head(self.b(self.a(x)) if use_b else self.a(x))


@pytest.mark.parametrize("name", ["hyperball-adamw", "hyperball-muon"])
def test_hyperball_leaves_a_tensor_without_gradient_alone_and_starts_it_later(name):
    torch.manual_seed(0)
    m = Branchy()
    b0 = m.b.weight.detach().clone()
    opt = po.recipe(name, m, lr=0.05)
    x = torch.randn(8, 4)
    for use_b in (False, True, True):
        opt.zero_grad()
        m(x, use_b).square().sum().backward()
        opt.step()
        if not use_b:
            assert torch.equal(m.b.weight, b0)  # no gradient: untouched, no state written
    assert torch.allclose(m.b.weight.norm(), b0.norm())


def test_hyperball_uses_the_scheduled_lr_after_a_resume_and_the_loaded_norm():
    m = model()
    opt = po.recipe("hyperball-adamw", m, lr=0.01)
    train(m, opt, 1)
    pretrained = model(seed=3)  # weights loaded after recipe(): their norm is R, not the init's
    with torch.no_grad():
        pretrained.qkv.weight.mul_(3.0)
    fresh = model()
    fopt = po.recipe("hyperball-adamw", fresh, lr=0.01)
    fresh.load_state_dict(pretrained.state_dict())
    train(fresh, fopt, 1)
    assert torch.allclose(fresh.qkv.weight.norm(), pretrained.qkv.weight.norm())
    # after load_state_dict the groups are new dicts: η must follow them (as a scheduler sets them)
    twin = copy.deepcopy(m)
    topt = po.recipe("hyperball-adamw", model(), lr=0.01)
    resumed = model()
    ropt = po.recipe("hyperball-adamw", resumed, lr=0.01)
    resumed.load_state_dict(m.state_dict())
    ropt.load_state_dict(copy.deepcopy(opt.state_dict()))  # torch's state_dict shares the live tensors
    for o in (ropt, opt):
        for g in o.param_groups:
            g["lr"] = 0.5
    train(m, opt, 1, seed=1)
    train(resumed, ropt, 1, seed=1)
    assert torch.equal(m.qkv.weight, resumed.qkv.weight) and not torch.equal(m.qkv.weight, twin.qkv.weight)
    del topt


def test_wrapping_recipes_refuse_what_they_cannot_wrap():
    lstm = nn.Sequential(nn.LSTM(4, 4), )
    for name in ("adamw-weight-norm", "multipliers"):
        with pytest.raises(ValueError, match=r"0.weight_ih_l0, 0.weight_hh_l0 is not one module's own `weight`"):
            po.recipe(name, lstm, lr=1e-3)
        shared = nn.Linear(4, 4)
        tied = nn.Sequential(shared, nn.ReLU(), nn.Linear(4, 4), nn.Linear(4, 2))
        tied[2].weight = shared.weight
        with pytest.raises(ValueError, match="is not one module's own `weight` \\(tied"):
            po.recipe(name, tied, lr=1e-3)
    with pytest.raises(ValueError, match="already parametrized"):
        m = model()
        po.recipe("multipliers", m, lr=1e-3)
        po.recipe("multipliers", m, lr=1e-3)
    with pytest.raises(ValueError, match="found no hidden matrix"):
        po.recipe("hyperball-adamw", nn.Linear(4, 2), lr=1e-3)


def test_recipe_optimizer_behaves_as_one_optimizer():
    m = model()
    opt = po.recipe("muon", m, lr=0.02)
    with pytest.raises(TypeError, match="add the group to one of them"):
        opt.add_param_group({"params": [nn.Parameter(torch.ones(3))]})
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=10, cycle_momentum=False)
    train(m, opt, 2)
    sched.step()
    assert len(opt.state) == sum(len(o.state) for o in opt.optimizers) > 0


@pytest.mark.parametrize("name,options", [("hyperball-adamw", {}), ("hyperball-muon", {}),
                                          ("hyperball-adamw", {"compile": True})])
def test_hyperball_refuses_a_zero_matrix_before_anything_moves(name, options):
    """Its radius is fixed at ‖W‖: a zero-initialized projection could never move, so the first step refuses,
    naming it, with every tensor as it was (the fused HyperballAdamW too, before it compiles anything)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 10))
    nn.init.zeros_(model[2].weight)
    opt = po.recipe(name, model, lr=1e-2, **options)
    model(torch.randint(0, 10, (4,))).square().sum().backward()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"2\.weight is all zeros at its first step.*radius R = ‖W‖ would be 0"):
        opt.step()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_zero_initialized_output_projection_trains_under_polar_absorb():
    """modded-nanogpt-style zero-init projections were refused by polarize; now s = 0 and W trains through s."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 8), nn.Linear(8, 10))
    nn.init.zeros_(model[3].weight)
    opt = po.recipe("polar-absorb", model, lr=1e-2)
    assert torch.equal(model[3].weight, torch.zeros(8, 32))
    for _ in range(3):
        opt.zero_grad()
        model(torch.randint(0, 10, (16,))).logsumexp(-1).mean().backward()
        opt.step()
    assert bool(model[3].weight.abs().sum() > 0) and bool(torch.isfinite(model[3].weight).all())


class _ViT(nn.Module):
    """timm's VisionTransformer layout in small: a conv patch embedding, a cls token and position table held
    as bare parameters, pre-norm blocks with fused qkv, a head."""

    def __init__(self, d=16, patches=4):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, d, 4, stride=4)
        self.cls_token = nn.Parameter(torch.full((1, 1, d), 1e-5))
        self.pos_embed = nn.Parameter(torch.randn(1, patches + 1, d) * 0.02)
        self.blocks = nn.Sequential(*[nn.TransformerEncoderLayer(d, 2, 32, dropout=0.0, batch_first=True,
                                                                 norm_first=True) for _ in range(2)])
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, 10)

    def forward(self, x):
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


def test_hidden_matrices_are_layer_weights_not_tokens_or_tables():
    names = [q for q, _ in po.hidden_matrices(_ViT())]
    assert "cls_token" not in names and "pos_embed" not in names and "head.weight" not in names
    assert "patch_embed.proj.weight" in names and "blocks.0.self_attn.in_proj_weight" in names
    assert "blocks.1.linear2.weight" in names and "blocks.0.self_attn.out_proj.weight" in names


def test_hyperball_leaves_a_vits_cls_token_to_adamw():
    """It picked cls_token as a hidden matrix and held it at its 1e-5 radius."""
    torch.manual_seed(0)
    model = _ViT()
    opt = po.recipe("hyperball-adamw", model, lr=1e-2)
    before = model.cls_token.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(2, 3, 8, 8)).square().mean().backward()
        opt.step()
    assert model.cls_token.norm() > 10 * before.norm()


def test_recipes_keep_a_tied_parameter_named_only_under_its_second_owner_from_decay():
    """param_groups read every name of a tied parameter; the recipes read one, so they decayed it."""
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 3)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.head(self.b(self.a(x)))

        def no_weight_decay(self):
            return {"b.weight"}

    model = Tied()
    opt = po.recipe("adamw", model, lr=1e-2, weight_decay=0.1)
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decay[id(model.a.weight)] == 0.0 and decay[id(model.head.weight)] == 0.1


def _hyperball_travel(dtype, steps=100, lr=1e-4):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 256), nn.GELU(), nn.Linear(256, 10)).to(dtype)
    opt = po.recipe("hyperball-adamw", m, lr=lr)
    w0 = m[2].weight.detach().float().clone()
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        opt.zero_grad()
        m(torch.randn(32, 64, generator=gen).to(dtype)).float().square().mean().backward()
        opt.step()
    w = m[2].weight.detach().float()
    assert m[2].weight.dtype == dtype and opt.optimizers[0].state[m[2].weight]["exp_avg"].dtype == torch.float32
    return float((w - w0).norm() / w0.norm()), float(w.norm() / w0.norm() - 1), float((w != w0).float().mean())


def test_hyperball_on_bfloat16_weights_travels_as_float32_and_keeps_its_radius():
    # 0.3.0 stepped in bfloat16 and rounded each step to nearest: at lr 1e-4 most entries never moved (14% changed),
    # the weight travelled half as far as in float32 and the radius drifted 1.2e-3 in 100 steps
    travel32, drift32, _ = _hyperball_travel(torch.float32)
    travel16, drift16, changed = _hyperball_travel(torch.bfloat16)
    assert 0.7 < travel16 / travel32 < 1.6, (travel16, travel32)
    assert abs(drift32) < 1e-6 and abs(drift16) < 1e-4, (drift32, drift16)  # HeavyBall: 2e-5
    assert changed > 0.5


def test_stochastic_rounding_is_unbiased():
    from polaropt.hyperball import round_stochastic_

    x = torch.full((100_000,), 1.0 + 2 ** -10)  # a quarter of the way from 1 to the next bfloat16 (1 + 2^-7·…)
    out = round_stochastic_(torch.empty(100_000, dtype=torch.bfloat16), x, torch.Generator().manual_seed(0))
    assert set(out.float().unique().tolist()) == {1.0, 1.0 + 2 ** -7}
    assert abs(out.double().mean().item() - x[0].item()) < 2e-5  # E[round(x)] = x, to the sampling error
    assert out.to(torch.float32).eq(1.0).float().mean().item() == pytest.approx(0.875, abs=0.01)
