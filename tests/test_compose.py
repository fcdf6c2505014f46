"""compose(): every cell of direction rule × radial rule × scale trains a real model or is refused naming why; the
named methods equal references written from their update rules; Lion."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import polaropt as po
from polaropt.recipes import DIRECTIONS, RADIALS


class Net(nn.Module):
    """Embedding + tied head, a fused qkv, a conv and an LSTM: the shapes the grid must handle."""

    def __init__(self, d=16, vocab=20):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.qkv = nn.Linear(d, 3 * d)
        self.conv = nn.Conv1d(d, d, 3, padding=1)
        self.lstm = nn.LSTM(d, d, batch_first=True)
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, x):
        h = self.emb(x)
        q, k, v = self.qkv(h).chunk(3, -1)
        h = h + v * torch.sigmoid(q * k)
        h = h + self.conv(h.transpose(1, 2)).transpose(1, 2)
        h = h + self.lstm(h)[0]
        return self.head(self.ln(h))


def batch(t):
    g = torch.Generator().manual_seed(t)
    return torch.randint(0, 20, (4, 8), generator=g), torch.randint(0, 20, (4, 8), generator=g)


def loss(m, t):
    x, y = batch(t)
    return F.cross_entropy(m(x).flatten(0, 1), y.flatten())


def train(m, opt, steps=3, start=0):
    for t in range(start, start + steps):
        opt.zero_grad()
        loss(m, t).backward()
        opt.step()


def net():
    torch.manual_seed(0)
    return Net().double()


def _slice_norms(m, name):
    module = m.get_submodule(name)
    dims = po.polar_spec(module).dims if po.is_polarized(module) else tuple(range(module.weight.ndim))
    return torch.linalg.vector_norm(module.weight.detach(), dim=dims)


SCALED = [r for r in RADIALS if r not in ("none", "multipliers")]
CELLS = ([(d, r, "out") for d in DIRECTIONS for r in ("none", "multipliers")]
         + [(d, r, s) for d in DIRECTIONS for r in SCALED for s in ("tensor", "out", "in", "element")])
LR = {"adamw": 1e-2, "muon": 1e-2, "normuon": 1e-2, "lion": 1e-3, "l2": 1e-1, "linf": 1e-4, "rms": 1e-4,
      "spectral": 1e-3}
REFUSED = {("fixed", "element"): "fixes every entry's magnitude", ("normalize", "element"): "each slice is one entry",
           ("retract", "element"): "each slice is one entry"}


@pytest.mark.parametrize("direction,radial,scale", CELLS)
def test_every_cell_trains_a_real_model_or_is_refused_naming_why(direction, radial, scale):
    m = net()
    exclude = "lstm.*" if radial == "multipliers" else None  # it wraps one module's own `weight`, refused on an LSTM
    if (radial, scale) in REFUSED:
        with pytest.raises(ValueError, match=REFUSED[radial, scale]):
            po.compose(m, direction=direction, radial=radial, scale=scale, lr=LR[direction])
        assert not any(torch.nn.utils.parametrize.is_parametrized(x) for x in m.modules())  # nothing half-done
        return
    opt = po.compose(m, direction=direction, radial=radial, scale=scale, lr=LR[direction], weight_decay=0.01,
                     exclude=exclude)
    before = {k: v.detach().clone() for k, v in m.state_dict().items() if torch.is_tensor(v) and v.is_floating_point()}
    fixed = ("qkv", "conv") if radial == "fixed" else ()
    norms = {q: _slice_norms(m, q) for q in fixed}
    train(m, opt)
    assert torch.isfinite(loss(m, 9))
    assert torch.equal(m.head.weight, m.emb.weight)  # the tie holds
    moved = [k for k, v in m.state_dict().items() if k in before and not torch.equal(v, before[k])]
    assert any("qkv" in k for k in moved) and any("conv" in k for k in moved), moved
    for t in po.polar_tensors(m):
        if t.polar.mode in ("project", "absorb") or radial == "retract":  # on the sphere after every step
            n = torch.linalg.vector_norm(t.direction.detach(), dim=t.polar.dims) if t.polar.dims else t.direction.abs()
            torch.testing.assert_close(n, torch.ones_like(n), rtol=1e-9, atol=1e-9)
    for q, n0 in norms.items():  # fixed: every slice of W keeps its norm
        torch.testing.assert_close(_slice_norms(m, q), n0, rtol=1e-9, atol=1e-12)


def test_the_cells_name_their_choices():
    m = net()
    with pytest.raises(ValueError, match=r"unknown direction rule 'sgd'; valid choices are 'adamw', 'muon'"):
        po.compose(m, direction="sgd", lr=1e-3)
    with pytest.raises(ValueError, match=r"unknown radial rule 'sphere'; valid choices are 'none', 'free'"):
        po.compose(m, radial="sphere", lr=1e-3)
    with pytest.raises(ValueError, match=r"unknown scale 'rows'; valid choices are 'tensor', 'row'"):
        po.compose(m, radial="absorb", scale="rows", lr=1e-3)
    with pytest.raises(ValueError, match=r"radial_lr must be a positive finite number, got 0"):
        po.compose(m, radial="absorb", lr=1e-3, radial_lr=0)


def test_the_radial_lr_steps_the_scales_alone():
    a, b = net(), net()
    oa = po.compose(a, direction="muon", radial="absorb", scale="tensor", lr=1e-2)
    ob = po.compose(b, direction="muon", radial="absorb", scale="tensor", lr=1e-2, radial_lr=1e-1)
    lrs = {g["lr"] for o in ob.optimizers for g in o.param_groups if g.get("polar_role") == "scale"}
    assert lrs == {1e-1}
    train(a, oa, 1)
    train(b, ob, 1)
    assert torch.equal(po.direction_of(a.qkv), po.direction_of(b.qkv))  # the first direction step is the same
    assert not torch.equal(po.scale_of(a.qkv), po.scale_of(b.qkv))


def _adam_direction(state, g, t):
    """Adam's bias-corrected update (HeavyBall's hyperball step with an Adam base)."""
    m1, v = state.setdefault("adam", (torch.zeros_like(g), torch.zeros_like(g)))
    m1.lerp_(g, 0.1)
    v.mul_(0.999).addcmul_(g, g, value=0.001)
    return (m1 / (1 - 0.9 ** (t + 1))) / ((v / (1 - 0.999 ** (t + 1))).sqrt() + 1e-8)


def _muon_direction(state, g, t):
    """Muon's update: Nesterov momentum, torch's own Newton–Schulz (its lr adjustment is a scalar N(u) removes)."""
    from torch.optim._muon import _zeropower_via_newtonschulz

    from polaropt.orthogonalize import TORCH_COEFFICIENTS

    buf = state.setdefault("buf", torch.zeros_like(g))
    buf.lerp_(g, 0.05)
    u = _zeropower_via_newtonschulz(g.lerp(buf, 0.95).reshape(g.shape[0], -1), TORCH_COEFFICIENTS, 5, 1e-7)
    return u.to(g.dtype).reshape(g.shape)


@pytest.mark.parametrize("name,direction", [("hyperball-adamw", _adam_direction), ("hyperball-muon", _muon_direction)])
def test_hyperball_equals_its_formula_over_50_steps(name, direction):
    """W ← R·N(W − η·R·N(u)) with u the base's update, written out here (Hyperball; MuonH with Muon's)."""
    m = net()
    ref = {q: m.get_parameter(q).detach().clone() for q in ("qkv.weight", "conv.weight", "lstm.weight_ih_l0")}
    R = {q: w.norm() for q, w in ref.items()}
    states = {q: {} for q in ref}
    opt = po.recipe(name, m, lr=0.02)
    for t in range(50):
        opt.zero_grad()
        loss(m, t).backward()
        grads = {q: m.get_parameter(q).grad.clone() for q in ref}
        opt.step()
        for q, g in grads.items():
            u = direction(states[q], g, t)
            moved = ref[q] - 0.02 * R[q] * u / u.norm()
            ref[q] = R[q] * moved / moved.norm()
            torch.testing.assert_close(m.get_parameter(q).detach(), ref[q], rtol=1e-8, atol=1e-10,
                                       msg=lambda msg: f"step {t} {q}: {msg}")


def test_fixed_row_norms_are_kept_and_the_step_on_v_is_normalized():
    m = net()
    opt = po.compose(m, direction="adamw", radial="fixed", scale="row", lr=0.05)
    rows0 = m.qkv.weight.detach().norm(dim=1)
    v0 = po.direction_of(m.qkv).detach().clone()
    train(m, opt, 1)
    torch.testing.assert_close(m.qkv.weight.detach().norm(dim=1), rows0, rtol=1e-12, atol=1e-12)
    # V moved by η·N(u) (norm 0.05 per tensor), then each row back on the sphere: a step of about η
    assert 0.03 < (po.direction_of(m.qkv).detach() - v0).norm() < 0.06


def test_normuon_recipe_is_po_muon_with_normuon_on_the_hidden_matrices():
    a, b = net(), net()
    opt = po.recipe("normuon", a, lr=0.02, weight_decay=0.1)
    mats = [b.qkv.weight, b.conv.weight, b.lstm.weight_ih_l0, b.lstm.weight_hh_l0]
    rest = [p for p in b.parameters() if all(p is not q for q in mats)]
    peer = [po.Muon(mats, lr=0.02, weight_decay=0.1, normuon=True, adjust_lr_fn="match_rms_adamw"),
            torch.optim.AdamW([{"params": [p for p in rest if p.ndim >= 2], "weight_decay": 0.1},
                               {"params": [p for p in rest if p.ndim < 2], "weight_decay": 0.0}], lr=0.02)]
    for t in range(5):
        train(a, opt, 1, start=t)
        for o in peer:
            o.zero_grad()
        loss(b, t).backward()
        for o in peer:
            o.step()
    for (k, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), k


def test_lion_is_its_update_rule():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(5, 3))
    ref, m = w.detach().clone(), torch.zeros(5, 3)
    opt = po.Lion([w], lr=0.01, betas=(0.9, 0.99), weight_decay=0.1)
    for t in range(20):
        g = torch.randn(5, 3, generator=torch.Generator().manual_seed(t))
        w.grad = g.clone()
        opt.step()
        c = 0.9 * m + 0.1 * g
        ref = ref * (1 - 0.01 * 0.1) - 0.01 * torch.sign(c)
        m = 0.99 * m + 0.01 * g
        torch.testing.assert_close(w.detach(), ref, rtol=1e-6, atol=1e-7)
    assert math.isclose(float((w.detach() - ref).abs().max()), 0.0, abs_tol=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    (dict(direction="muon", radial="absorb", direction_options={"backend": "nope"}), "unknown backend 'nope'"),
    (dict(direction="muon", radial="absorb", direction_options={"bogus": 1}),
     r"direction 'muon' takes no option 'bogus' in direction_options; its options are .*backend"),
    (dict(direction="muon", radial="multipliers", exclude="lstm.*", direction_options={"batch_dims": 2}),
     "has no matrix after"),
    (dict(radial="absorb", check="bogus"), "unknown check 'bogus'"),
    (dict(radial="absorb", every=0), "every must be a positive int"),
    (dict(radial="normalize", every=2), "state= and every= set the renormalization"),
    (dict(direction="muon", radial="absorb", state="nope"), "unknown state policy 'nope'"),
    (dict(direction="lion", radial="project", direction_options={"betas": (0.9, 1.5)}), "betas must be"),
])
def test_a_refused_cell_leaves_the_model_as_it_came(kwargs, match):
    # review finding: the model was parametrized before the direction optimizer or attach refused
    m = net()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        po.compose(m, lr=1e-2, **kwargs)
    assert not any(torch.nn.utils.parametrize.is_parametrized(x) for x in m.modules())
    assert m.state_dict().keys() == before.keys() and all(torch.equal(m.state_dict()[k], v) for k, v in before.items())
    po.compose(m, lr=1e-2, direction=kwargs.get("direction", "adamw"), radial=kwargs["radial"],
               exclude=kwargs.get("exclude"))  # a retry works


@pytest.mark.parametrize("name", ["hyperball-adamw", "muon", "polar-normalize", "multipliers"])
def test_every_cell_is_guarded_against_nan(name):
    # review finding: the Hyperball cells had no NaN check, and a NaN gradient froze the weight silently
    m = net()
    opt = po.recipe(name, m, lr=1e-2, exclude="lstm.*" if name == "multipliers" else None)
    train(m, opt, 2)
    opt.zero_grad()
    loss(m, 2).backward()
    next(p for p in m.parameters() if p.ndim >= 2 and p.grad is not None and p is not m.emb.weight).grad[0, 0] = \
        float("nan")
    opt.step()
    with pytest.raises(FloatingPointError, match="NaN or Inf entered in the last"):
        opt.state_dict()  # a checkpoint never holds it
    with pytest.raises(FloatingPointError):
        po.check_finite(opt)


@pytest.mark.parametrize("cell", [dict(direction="adamw", radial="fixed", scale="tensor"),
                                  dict(direction="muon", radial="fixed", scale="tensor"),
                                  dict(direction="normuon", radial="fixed", scale="row")])
def test_a_bfloat16_hyperball_run_resumes_bit_for_bit(cell, tmp_path):
    # review finding: torch's load cast the float32 base state to bfloat16, so the resumed run drifted (4e-3)
    def make():
        torch.manual_seed(0)
        m = Net().to(torch.bfloat16)
        return m, po.compose(m, lr=1e-2, **cell)

    def run(m, opt, start, stop):
        for t in range(start, stop):
            opt.zero_grad()
            x, y = batch(t)
            F.cross_entropy(m(x).float().flatten(0, 1), y.flatten()).backward()
            opt.step()
    a, oa = make()
    run(a, oa, 0, 3)
    torch.save({"model": a.state_dict(), "opt": oa.state_dict()}, tmp_path / "ckpt.pt")
    b, ob = make()
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    b.load_state_dict(ckpt["model"])
    ob.load_state_dict(ckpt["opt"])
    run(a, oa, 3, 6)
    run(b, ob, 3, 6)
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k


def test_stochastic_rounding_takes_nothing_from_the_global_generator():
    m = net().to(torch.bfloat16)
    opt = po.compose(m, radial="fixed", scale="tensor", lr=1e-2)
    opt.zero_grad()
    x, y = batch(0)
    F.cross_entropy(m(x).float().flatten(0, 1), y.flatten()).backward()
    state = torch.get_rng_state()
    opt.step()
    assert torch.equal(torch.get_rng_state(), state)


def test_a_cell_refused_after_parametrizing_takes_its_parametrizations_off():
    m = net()
    with torch.no_grad():
        m.ln.weight[0] = float("nan")  # not a hidden matrix: polarizing goes through, attach's first read refuses
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(FloatingPointError, match=r"NaN or Inf at attach: 1 tensor holds one now \(ln.weight\)"):
        po.compose(m, direction="muon", radial="absorb", lr=1e-2)
    assert not any(torch.nn.utils.parametrize.is_parametrized(x) for x in m.modules())
    assert m.state_dict().keys() == before.keys()
    for k, v in before.items():  # the weights as they came (recomposed from s and V: to rounding)
        torch.testing.assert_close(m.state_dict()[k], v, equal_nan=True, rtol=1e-12, atol=1e-12)


def _same_batches(model, twin, opt, steps=50, start=0):
    """Yield each step's number after one batch's gradients reached both the model (its optimizer zeroed first)
    and its twin."""
    gen = torch.Generator().manual_seed(1)
    for t in range(start, start + steps):
        x = torch.randn(16, 12, generator=gen, dtype=torch.float64)
        opt.zero_grad()
        twin.zero_grad()
        for m in (model, twin):
            m(x).square().mean().backward()
        yield t


def _mlp_and_twin():
    """A small MLP (two hidden matrices and a head) and a plain copy for a reference written out."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 32), nn.Tanh(), nn.Linear(32, 24), nn.Tanh(), nn.Linear(24, 5)).double()
    return model, copy.deepcopy(model)


def _muown_reference(W, G, g, m_u, adam, t, lr, momentum=0.95, betas=(0.9, 0.95), eps=1e-8):
    """AngularMuown's step as its docstring states it (fhueb/angular-muown), no angular decay, W = diag(g)·U:
    the tangent gradient of U, momentum (a sum) with Nesterov, the polar factor, U's rows renormalized, Adam on g."""
    U = W / g
    grad_g = (G * U).sum(dim=1, keepdim=True)
    grad_u = g * (G - U * grad_g)
    m_u.mul_(momentum).add_(grad_u)
    Q = po.orthogonalize(grad_u + momentum * m_u, "polar-express", 5)
    U = U - lr * math.sqrt(max(1, W.shape[0] / W.shape[1])) * Q
    m_g, v_g = adam
    m_g.mul_(betas[0]).add_(grad_g, alpha=1 - betas[0])
    v_g.mul_(betas[1]).addcmul_(grad_g, grad_g, value=1 - betas[1])
    g = g - lr * (m_g / (1 - betas[0] ** t)) / ((v_g / (1 - betas[1] ** t)).sqrt() + eps)
    return g * U / U.norm(dim=1, keepdim=True), g


def test_muown_equals_its_update_rule_over_50_steps():
    model, twin = _mlp_and_twin()  # the reference: plain weights, the rule written out, AdamW on the rest
    hidden = [twin[0].weight, twin[2].weight]
    rest = [p for p in twin.parameters() if all(p is not h for h in hidden)]
    aux = torch.optim.AdamW(rest, lr=0.01, betas=(0.9, 0.95), weight_decay=0.0)
    state = [(w.detach().norm(dim=1, keepdim=True), torch.zeros_like(w),
              (torch.zeros(w.shape[0], 1, dtype=w.dtype), torch.zeros(w.shape[0], 1, dtype=w.dtype))) for w in hidden]
    opt = po.recipe("muown", model, lr=0.01, direction_options={"dtype": torch.float64})
    for t in _same_batches(model, twin, opt, start=1):
        opt.step()
        aux.step()
        with torch.no_grad():
            for k, w in enumerate(hidden):
                g, m_u, adam = state[k]
                new, g = _muown_reference(w.detach(), w.grad, g, m_u, adam, t, 0.01)
                w.copy_(new)
                state[k] = (g, m_u, adam)
        got = po.plain_state_dict(model)
        for name, b in twin.state_dict().items():
            torch.testing.assert_close(got[name], b, rtol=1e-9, atol=1e-11, msg=lambda m: f"step {t} {name}: {m}")


class _EmbedMLP(nn.Module):
    """An embedding, two hidden matrices with biases, a LayerNorm and a head: every kind Scion treats apart."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 12)
        self.body = nn.Sequential(nn.Linear(12, 32), nn.Tanh(), nn.Linear(32, 24), nn.LayerNorm(24))
        self.head = nn.Linear(24, 5)

    def forward(self, idx):
        return self.head(self.body(self.emb(idx)))


@pytest.mark.parametrize("weight_decay", [1.0, 0.0])
def test_scion_equals_its_reference_update_over_50_steps(weight_decay):
    """Scion (LIONS-EPFL/scion), every parameter: d ← (1 − α)d + α·g with α = 0.1, W ← (1 − γλ)W − γ·ρ·lmo(d)
    (λ = 1 its constrained step, 0 unconstrained); lmo: √(d_out/d_in)·polar(d) for the hidden matrices (ρ = 3),
    sign(d)/d_in for the head (ρ = 10), each embedding row over its RMS (ρ = 1), vectors over their RMS (ρ = 1)."""
    torch.manual_seed(0)
    model = _EmbedMLP().double()
    twin = copy.deepcopy(model)
    opt = po.recipe("scion", model, lr=0.01, weight_decay=weight_decay,
                    direction_options={"dtype": torch.float64, "scale": 3.0, "backend": "svd"})

    def lmo(name, d):
        if name in ("body.0.weight", "body.2.weight"):
            return 3.0 * math.sqrt(d.shape[0] / d.shape[1]) * po.orthogonalize(d, "svd")
        if name == "head.weight":
            return 10.0 * torch.sign(d) / d.shape[1]
        if name == "emb.weight":
            return d / (d.square().mean(dim=1, keepdim=True).sqrt() + 1e-8)
        return d / (d.square().mean().sqrt() + 1e-8)

    bufs = {q: torch.zeros_like(w) for q, w in twin.named_parameters()}
    gen = torch.Generator().manual_seed(1)
    for t in range(50):
        idx = torch.randint(0, 10, (16,), generator=gen)
        opt.zero_grad()
        twin.zero_grad()
        for m in (model, twin):
            m(idx).square().mean().backward()
        opt.step()
        with torch.no_grad():
            for q, w in twin.named_parameters():
                d = bufs[q].mul_(0.9).add_(w.grad, alpha=0.1)
                w.mul_(1 - 0.01 * weight_decay).sub_(0.01 * lmo(q, d))
        for name, b in twin.state_dict().items():
            torch.testing.assert_close(model.state_dict()[name], b, rtol=1e-9, atol=1e-11,
                                       msg=lambda m: f"step {t} {name}: {m}")


def test_scion_rest_options_and_refusals():
    m = _EmbedMLP().double()
    with pytest.raises(ValueError, match=r"unknown rest_options 'head'; valid are head_scale, embed_scale, "
                                         r"vector_scale, momentum"):
        po.recipe("scion", m, lr=0.01, rest_options={"head": 1.0})
    with pytest.raises(ValueError, match=r"rest='scion' steps the parameters around plain hidden matrices.*"
                                         r"radial='absorb'"):
        po.compose(m, direction="muon", radial="absorb", lr=0.01, rest="scion")
    with pytest.raises(ValueError, match=r"unknown rest rule 'lion'; valid choices are 'adamw', 'scion'"):
        po.compose(m, lr=0.01, rest="lion")
    with pytest.raises(ValueError, match=r"rest_options are Scion's"):
        po.compose(m, lr=0.01, rest_options={"momentum": 0.5})
    assert not any(po.is_polarized(mod) for mod in m.modules())
    opt = po.recipe("scion", m, lr=0.01, rest_options={"head_scale": 2.0, "momentum": 1.0})
    scion = [o for o in opt.optimizers if isinstance(o, po.ScionLMO)][0]
    assert {g["norm"]: g["scale"] for g in scion.param_groups} == {"sign": 2.0, "colnorm": 1.0, "bias_rms": 1.0}
    with pytest.raises(ValueError, match=r"Scion's 'sign' oracle takes matrices, got a parameter of shape \(3,\)"):
        po.ScionLMO([{"params": [nn.Parameter(torch.ones(3))], "norm": "sign"}])
    with pytest.raises(ValueError, match=r"unknown Scion norm 'spectral'; valid choices are 'sign', 'colnorm', "
                                         r"'bias_rms'"):
        po.ScionLMO([nn.Parameter(torch.ones(3, 3))], norm="spectral")
    for bad, message in (({"momentum": 0.0}, r"momentum α must be a number in \(0, 1\].*got 0.0"),
                         ({"momentum": True}, r"momentum α must be a number"),
                         ({"head_scale": -1.0}, r"Scion's head_scale must be a finite number >= 0, got -1.0")):
        fresh = _EmbedMLP().double()
        with pytest.raises(ValueError, match=message):
            po.recipe("scion", fresh, lr=0.01, rest_options=bad)
    # a refused group leaves the optimizer as it was
    scion_opt = po.ScionLMO([nn.Parameter(torch.ones(3))])
    for group, message in (({"params": [nn.Parameter(torch.ones(3))], "norm": "bogus"}, "unknown Scion norm 'bogus'"),
                           ({"params": [nn.Parameter(torch.ones(3))], "norm": "sign"}, "takes matrices")):
        with pytest.raises(ValueError, match=message):
            scion_opt.add_param_group(group)
        assert len(scion_opt.param_groups) == 1
    hb = po.HyperballAdamW([nn.Parameter(torch.randn(3, 3))], lr=0.1)
    with pytest.raises(ValueError, match="weight decay 0.1 on a fixed-norm matrix"):
        hb.add_param_group({"params": [nn.Parameter(torch.randn(3, 3))], "weight_decay": 0.1})
    assert len(hb.param_groups) == 1 and len(hb.names) == 1


def test_scion_oracles_keep_a_zero_row_zero_in_float16():
    """ε = 1e-8 rounds to 0 in float16: a token absent from the batch (a zero row) must not become 0/0."""
    from polaropt.scion import lmo_bias_rms, lmo_colnorm

    g = torch.zeros(3, 4, dtype=torch.float16)
    g[0] = 1.0
    out = lmo_colnorm(g)
    assert torch.isfinite(out).all() and torch.equal(out[1:], g[1:]) and torch.allclose(out[0].float(), torch.ones(4))
    assert torch.equal(lmo_bias_rms(torch.zeros(5, dtype=torch.float16)), torch.zeros(5, dtype=torch.float16))


def test_absorb_muon_equals_liu_absorb_with_torchs_muon_over_50_steps():
    """W = s·V, s one scalar per matrix: torch's Muon steps V on ∂L/∂V = s·∇W, AdamW steps s on ⟨∇W, V⟩, then
    Liu's absorb a = ‖V‖, V ← V/a, s ← a·s (written out on a plain twin)."""
    model, twin = _mlp_and_twin()
    hidden = [twin[0].weight, twin[2].weight]
    rest = [p for p in twin.parameters() if all(p is not h for h in hidden)]
    s = [nn.Parameter(w.detach().norm().reshape(1, 1)) for w in hidden]  # the polar split of W at the start
    v = [nn.Parameter(w.detach() / w.detach().norm()) for w in hidden]
    muon = torch.optim.Muon(v, lr=0.01, weight_decay=0.0, adjust_lr_fn="match_rms_adamw")
    aux = torch.optim.AdamW([{"params": s, "weight_decay": 0.0}, {"params": [p for p in rest if p.ndim >= 2]},
                             {"params": [p for p in rest if p.ndim < 2], "weight_decay": 0.0}], lr=0.01,
                            weight_decay=0.0)
    opt = po.recipe("absorb-muon", model, lr=0.01)
    for t in _same_batches(model, twin, opt):
        opt.step()
        with torch.no_grad():
            for w, si, vi in zip(hidden, s, v):
                vi.grad, si.grad = si * w.grad, (w.grad * vi).sum().reshape(1, 1)
        muon.step()
        aux.step()
        with torch.no_grad():
            for w, si, vi in zip(hidden, s, v):
                a = vi.norm()
                vi.div_(a)
                si.mul_(a)
                w.copy_(si * vi)
        got = po.plain_state_dict(model)
        for name, b in twin.state_dict().items():
            torch.testing.assert_close(got[name], b, rtol=1e-9, atol=1e-11, msg=lambda m: f"step {t} {name}: {m}")


def test_multipliers_equal_their_parametrization_written_out_over_50_steps():
    """W_ij = r_i·V_ij·c_j (Falcon's row and column multipliers, r = c = 1 and V = W at the start), one AdamW:
    decay on V and the other matrices, none on r, c and the 1-D parameters."""
    model, twin = _mlp_and_twin()
    layers = (twin[0], twin[2])
    v = [nn.Parameter(m.weight.detach().clone()) for m in layers]
    r = [nn.Parameter(torch.ones(m.out_features, dtype=torch.float64)) for m in layers]
    c = [nn.Parameter(torch.ones(m.in_features, dtype=torch.float64)) for m in layers]
    rest = [p for p in twin.parameters() if all(p is not m.weight for m in layers)]
    ref = torch.optim.AdamW([{"params": v, "weight_decay": 0.1}, {"params": r + c, "weight_decay": 0.0},
                             {"params": [p for p in rest if p.ndim >= 2], "weight_decay": 0.1},
                             {"params": [p for p in rest if p.ndim < 2], "weight_decay": 0.0}], lr=0.01)
    opt = po.recipe("multipliers", model, lr=0.01, weight_decay=0.1)
    gen = torch.Generator().manual_seed(1)

    def forward(x):
        h = x
        for k, m in enumerate((twin[0], twin[2])):
            h = torch.tanh(nn.functional.linear(h, r[k][:, None] * v[k] * c[k][None, :], m.bias))
        return twin[4](h)
    for t in range(50):
        x = torch.randn(16, 12, generator=gen, dtype=torch.float64)
        opt.zero_grad()
        ref.zero_grad()
        model(x).square().mean().backward()
        forward(x).square().mean().backward()
        opt.step()
        ref.step()
        for k, m in enumerate((model[0], model[2])):
            torch.testing.assert_close(m.weight.detach(), (r[k][:, None] * v[k] * c[k][None, :]).detach(),
                                       rtol=1e-9, atol=1e-11, msg=lambda msg: f"step {t} layer {k}: {msg}")


def test_a_step_refused_by_the_gradient_check_leaves_bfloat16_weights_as_they_were():
    # the Hyperball hooks swap a bf16 weight to a float32 copy for the step; their pre-hook ran before attach's
    # check, so a refused step left V in float32
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4)).to(torch.bfloat16)
    opt = po.compose(m, direction="adamw", radial="fixed", scale="row", lr=1e-2, check="step")
    x = torch.randn(4, 8).to(torch.bfloat16)
    v = po.direction_of(m[2])
    before = v.detach().clone()
    opt.zero_grad()
    m(x).float().square().mean().backward()
    v.grad[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="refused before AdamW wrote anything"):
        opt.step()
    assert v.dtype == v.grad.dtype == torch.bfloat16 and torch.equal(v, before)
    opt.zero_grad()
    m(x).float().square().mean().backward()
    opt.step()  # the next step goes through, in the weights' own dtype
    assert v.dtype == torch.bfloat16 and not torch.equal(v, before)


# ---- Hyperball-AdamW fused (compose(..., compile=True)) ----------------------------------------------------------

HIDDEN = ("qkv.weight", "conv.weight", "lstm.weight_ih_l0", "lstm.weight_hh_l0")


def _fused_pair(compile_fused):
    """The reference (AdamW + Hyperball's hooks) and HyperballAdamW on the same model."""
    ref, fused = net(), net()
    return (ref, po.recipe("hyperball-adamw", ref, lr=0.02),
            fused, po.recipe("hyperball-adamw", fused, lr=0.02, compile=compile_fused))


def test_hyperball_adamw_fused_equals_adamw_with_the_hooks_over_50_steps():
    """The fast path's function, run eagerly (compile=False inside), against the reference: every parameter of a
    model with a tied head, fused qkv, a conv and an LSTM, every step; and the same state keys."""
    ref, ropt, fused, fopt = _fused_pair(True)
    for opt in fopt.optimizers:
        if isinstance(opt, po.HyperballAdamW):
            opt.compile = False  # the same function eagerly: what the compiled one is tested equal to below
    scheds = [torch.optim.lr_scheduler.StepLR(o, step_size=7, gamma=0.5) for o in (ropt, fopt)]  # the group's lr
    for t in range(50):
        train(ref, ropt, 1, start=t)
        train(fused, fopt, 1, start=t)
        for sched in scheds:
            sched.step()
        for (q, a), b in zip(ref.named_parameters(), fused.parameters()):
            torch.testing.assert_close(b, a, rtol=1e-8, atol=1e-10, msg=lambda msg: f"step {t} {q}: {msg}")
    for q in HIDDEN:
        assert torch.allclose(fused.get_parameter(q).norm(), net().get_parameter(q).norm(), rtol=1e-12)
    def keys(opt):
        return [[sorted(s) for s in sd["state"].values()] for sd in opt.state_dict()["optimizers"]]
    assert keys(ropt) == keys(fopt) and "hyperball_radius" in keys(fopt)[0][0]


def test_hyperball_adamw_compiled_equals_its_eager_function():
    """torch.compile's fused kernels against the same function run eagerly, float32, with a scheduled lr (a new lr
    must not need a new compile, nor reuse a stale one)."""
    pytest.importorskip("torch._inductor")
    import shutil

    if not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        pytest.skip("torch.compile on a CPU needs a C++ compiler")
    models, opts = [], []
    for compiled in (True, False):
        torch.manual_seed(0)
        m = Net().float()
        opt = po.recipe("hyperball-adamw", m, lr=0.02, compile=True)
        opt.optimizers[0].compile = compiled
        models.append(m)
        opts.append((opt, torch.optim.lr_scheduler.StepLR(opt.optimizers[0], step_size=3, gamma=0.5)))
    for t in range(8):
        for m, (opt, sched) in zip(models, opts):
            train(m, opt, 1, start=t)
            sched.step()
        for a, b in zip(*(m.parameters() for m in models)):
            torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-6)


def test_hyperball_adamw_fused_and_the_reference_load_each_others_checkpoints():
    """The same state keys and meaning: a reference checkpoint resumes under the fused optimizer and back (a
    deepcopy stands for torch.save/load: torch's load_state_dict shares tensors of the same dtype and device)."""
    def resumed_equal(src, sopt, dst, dopt, start, steps):
        """dst and its optimizer take src's checkpoint, then both train on and stay equal."""
        dst.load_state_dict(src.state_dict())
        dopt.load_state_dict(copy.deepcopy(sopt.state_dict()))
        train(src, sopt, steps, start=start)
        train(dst, dopt, steps, start=start)
        for a, b in zip(src.parameters(), dst.parameters()):
            torch.testing.assert_close(b, a, rtol=1e-8, atol=1e-10)

    ref, ropt, fused, fopt = _fused_pair(True)
    fopt.optimizers[0].compile = False  # its eager function (the compiled one is tested equal to it above)
    train(ref, ropt, 5)
    resumed_equal(ref, ropt, fused, fopt, 5, 5)
    back = net()  # and back: the fused state into the reference
    resumed_equal(fused, fopt, back, po.recipe("hyperball-adamw", back, lr=0.02), 10, 3)


@pytest.mark.parametrize("kwargs,message", [
    (dict(direction="muon", radial="fixed", scale="tensor"), r"direction='muon', radial='fixed', scale='tensor' has no "
                                                             r"fused form"),
    (dict(direction="adamw", radial="fixed", scale="row"), r"scale='row' has no fused form"),
    (dict(direction="adamw", radial="fixed", scale="tensor", direction_options={"amsgrad": True}),
     r"takes AdamW's betas and eps only, got amsgrad"),
])
def test_compile_is_refused_where_there_is_no_fused_form(kwargs, message):
    m = net()
    with pytest.raises(ValueError, match=message):
        po.compose(m, lr=0.01, compile=True, **kwargs)
    assert not any(po.is_polarized(mod) for mod in m.modules())
    with pytest.raises(ValueError, match=r"recipe 'muon' takes no option 'compile'"):
        po.recipe("muon", m, lr=0.01, compile=True)


def test_compile_refuses_bfloat16_weights_naming_them():
    m = Net().to(torch.bfloat16)
    with pytest.raises(ValueError, match=r"HyperballAdamW steps float32/float64 weights; qkv.weight is torch.bfloat16: "
                                         r"use recipe\('hyperball-adamw'\) without compile="):
        po.recipe("hyperball-adamw", m, lr=0.01, compile=True)


class _Deep(nn.Module):
    """11 hidden matrices (more than one compiled call takes), one of them non-contiguous, and a residual block
    whose zero-initialized projection is left out of the hidden matrices: the matrix before it gets an exactly zero
    gradient at the first step."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(8, 8) for _ in range(10))
        self.layers[3].weight = nn.Parameter(torch.randn(8, 8, dtype=torch.float64).t())  # a transposed view
        self.fc, self.proj = nn.Linear(8, 16), nn.Linear(16, 8)
        nn.init.zeros_(self.proj.weight)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.head(x + self.proj(torch.relu(self.fc(x))))


@pytest.mark.parametrize("adam", [{}, {"betas": (0.8, 0.95), "eps": 1e-6}])
def test_hyperball_adamw_fused_in_chunks_with_a_zero_update_and_a_transposed_matrix(adam):
    """Chunked calls (8 + 2 flat matrices), a non-contiguous matrix stepped in its own shape, and a zero update
    (fc's gradient is 0 while proj is 0) that leaves W as it is, as the hooks do; with AdamW's betas and eps too."""
    models, opts = [], []
    for compile_fused in (False, True):
        torch.manual_seed(0)
        m = _Deep().double()
        opts.append(po.recipe("hyperball-adamw", m, lr=0.02, exclude=["proj.weight"], compile=compile_fused, **adam))
        models.append(m)
    fused = [o for o in opts[1].optimizers if isinstance(o, po.HyperballAdamW)][0]
    fused.compile = False  # its eager function (the compiled one is tested equal to it above)
    assert len(fused.param_groups[0]["params"]) == 11 and not models[1].layers[3].weight.is_contiguous()
    fc0 = models[1].fc.weight.detach().clone()
    gen = torch.Generator().manual_seed(3)
    for t in range(20):
        x = torch.randn(5, 8, generator=gen, dtype=torch.float64)
        for m, o in zip(models, opts):
            o.zero_grad()
            m(x).square().mean().backward()
            o.step()
        if t == 0:
            assert torch.equal(models[1].fc.weight, fc0)  # a zero update: not moved, finite
        for (q, a), b in zip(models[0].named_parameters(), models[1].parameters()):
            torch.testing.assert_close(b, a, rtol=1e-8, atol=1e-10, msg=lambda msg: f"step {t} {q}: {msg}")


def test_hyperball_adamw_steps_eagerly_when_dynamo_refuses_another_compiled_code():
    """The compiled step is one function for the process; past dynamo's limit of compiled codes the optimizer warns
    once and steps eagerly, with nothing moved by the refused call."""
    import torch._dynamo

    torch._dynamo.reset()
    steps = []
    try:
        with torch._dynamo.config.patch(recompile_limit=1):
            for n in (1, 2):  # a list of 1 and of 2 flat matrices: two compiled codes, one over the limit
                torch.manual_seed(0)
                ws = [nn.Parameter(torch.randn(4, 4)) for _ in range(n)]
                opt = po.HyperballAdamW(ws, lr=0.1)
                for w in ws:
                    w.grad = torch.ones_like(w)
                before = [w.detach().clone() for w in ws]
                if n == 2:
                    with pytest.warns(UserWarning, match="reached its limit of compiled codes.*now steps eagerly"):
                        opt.step()
                else:
                    opt.step()
                steps.append(opt.state[ws[0]]["step"].item())
                for w, b in zip(ws, before):
                    assert not torch.equal(w, b) and torch.allclose(w.norm(), b.norm())
    finally:
        torch._dynamo.reset()
    assert steps == [1.0, 1.0]


def test_hyperball_adamw_fused_keeps_the_hooks_param_groups_for_checkpoints():
    """A model whose no_weight_decay() names a hidden matrix: the hooks' AdamW holds two groups, so must the fused
    optimizer, or a checkpoint of one does not load into the other."""
    class Named(_Deep):
        def no_weight_decay(self):
            return {"layers.0.weight"}

    opts = []
    for compile_fused in (False, True):
        torch.manual_seed(0)
        m = Named().double()
        opts.append(po.recipe("hyperball-adamw", m, lr=0.02, exclude=["proj.weight"], compile=compile_fused))
        m(torch.randn(2, 8, dtype=torch.float64)).sum().backward()
        opts[-1].step()
    assert [len(g["params"]) for g in opts[0].optimizers[0].param_groups] == \
        [len(g["params"]) for g in opts[1].optimizers[0].param_groups] == [10, 1]
    opts[1].load_state_dict(copy.deepcopy(opts[0].state_dict()))
    opts[0].load_state_dict(copy.deepcopy(opts[1].state_dict()))
