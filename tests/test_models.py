"""The shapes people train: a small GPT (tied embedding/head, fused qkv, LayerNorm), a CNN and an LSTM,
each polarized whole with ``polarize_model`` in every mode and trained with AdamW + a cosine schedule."""

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import polaropt as po

VOCAB, D, T = 48, 32, 12


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.qkv = nn.Linear(D, 3 * D)  # fused q, k, v
        self.proj = nn.Linear(D, D)
        self.fc, self.out = nn.Linear(D, 4 * D), nn.Linear(4 * D, D)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, 2, D // 2).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, D)
        x = x + self.proj(y)
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok_emb, self.pos_emb = nn.Embedding(VOCAB, D), nn.Embedding(T, D)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.ln_f = nn.LayerNorm(D)
        self.lm_head = nn.Linear(D, VOCAB, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # tied

    def forward(self, idx):
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(), nn.Flatten())
        self.head = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        return self.head(self.features(x))


class LSTMLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 16)
        self.lstm = nn.LSTM(16, 24, num_layers=2, batch_first=True)
        self.head = nn.Linear(24, VOCAB)

    def forward(self, idx):
        return self.head(self.lstm(self.emb(idx))[0])


def batch(kind, step):
    """Learnable toy data: images are a class template plus noise; text follows t -> (3t + 1) mod VOCAB."""
    g = torch.Generator().manual_seed(1000 + step)
    if kind == "cnn":
        templates = torch.randn(10, 1, 10, 10, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
        y = torch.randint(0, 10, (16,), generator=g)
        return templates[y] + 0.5 * torch.randn(16, 1, 10, 10, generator=g, dtype=torch.float64), y
    idx = [torch.randint(0, VOCAB, (8,), generator=g)]
    for _ in range(T):
        idx.append((3 * idx[-1] + 1) % VOCAB)
    idx = torch.stack(idx, 1)
    return idx[:, :-1], idx[:, 1:]


def loss_of(model, kind, step):
    x, y = batch(kind, step)
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


MODELS = {"gpt": GPT, "cnn": CNN, "lstm": LSTMLM}
EXPECTED = {  # what polarize_model must find: every matrix, each tied weight under both names
    "gpt": ["tok_emb.weight", "lm_head.weight", "pos_emb.weight"]
           + [f"blocks.{i}.{n}.weight" for i in range(2) for n in ("qkv", "proj", "fc", "out")],
    "cnn": ["features.0.weight", "features.3.weight", "head.weight"],
    "lstm": ["emb.weight", "lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.weight_ih_l1", "lstm.weight_hh_l1",
             "head.weight"],
}


def build(kind, mode, seed=0):
    torch.manual_seed(seed)
    model = MODELS[kind]().double()
    names = po.polarize_model(model, mode=mode)
    opt = torch.optim.AdamW(po.param_groups(model, weight_decay=0.01), lr=1e-2)
    po.attach(opt, model)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=30)
    return model, opt, sched, names


def train(model, opt, sched, kind, start, n):
    losses = []
    for step in range(start, start + n):
        opt.zero_grad()
        loss = loss_of(model, kind, step)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    return losses


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("mode", po.MODES)
@pytest.mark.parametrize("kind", list(MODELS))
def test_whole_model_trains_keeps_ties_and_round_trips(kind, mode):
    torch.manual_seed(0)
    plain = MODELS[kind]().double()
    model, opt, sched, names = build(kind, mode)
    assert sorted(names) == sorted(EXPECTED[kind])
    # every polarized matrix adds its row scales and nothing else; the tied weight counts once
    scales = sum(t.scale.numel() for t in po.polar_tensors(model))
    assert n_params(model) == n_params(plain) + scales
    with torch.no_grad():
        x, _ = batch(kind, 0)
        torch.testing.assert_close(model(x), plain(x), rtol=1e-12, atol=1e-12)  # polarize keeps W

    losses = train(model, opt, sched, kind, 0, 15)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    losses += train(model, opt, sched, kind, 15, 15)
    assert losses[-1] < 0.8 * losses[0], losses  # it learns (plain AdamW: ×0.02–0.6 here)
    if kind == "gpt":
        assert torch.equal(model.tok_emb.weight, model.lm_head.weight)  # still one weight
        assert model.tok_emb.parametrizations.weight is model.lm_head.parametrizations.weight
    if mode in ("project", "absorb"):
        for t in po.polar_tensors(model):
            n = torch.linalg.vector_norm(t.direction, dim=t.polar.dims, keepdim=True)
            torch.testing.assert_close(n, torch.ones_like(n), rtol=1e-12, atol=0)

    # resume from the checkpoint in a fresh model: the same 15 steps, bitwise
    resumed, opt2, sched2, _ = build(kind, mode, seed=7)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    resumed.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    sched2.load_state_dict(ckpt["sched"])
    train(resumed, opt2, sched2, kind, 15, 15)
    for (key, a), (_, b) in zip(model.state_dict().items(), resumed.state_dict().items()):
        assert (a == b) if isinstance(a, dict) else torch.equal(a, b), key

    # export: a plain state dict that the unpolarized architecture loads strictly, same outputs
    plain.load_state_dict(po.plain_state_dict(model), strict=True)
    model.eval(), plain.eval()
    with torch.no_grad():
        x, _ = batch(kind, 3)
        torch.testing.assert_close(plain(x), model(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", list(MODELS))
def test_plain_checkpoint_into_a_polar_model(kind):
    torch.manual_seed(3)
    pretrained = MODELS[kind]().double()
    model, *_ = build(kind, "absorb", seed=5)  # other values: the load must replace them
    result = po.load_plain_state_dict(model, pretrained.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    pretrained.eval(), model.eval()
    with torch.no_grad():
        x, _ = batch(kind, 0)
        torch.testing.assert_close(model(x), pretrained(x), rtol=1e-12, atol=1e-12)
    for t in po.polar_tensors(model):  # split by polarize's rule: unit directions
        n = torch.linalg.vector_norm(t.direction, dim=t.polar.dims, keepdim=True)
        torch.testing.assert_close(n, torch.ones_like(n), rtol=1e-12, atol=0)


# ----- polarize_model: what it selects, and what it refuses -------------------------------------------

def test_polarize_model_include_exclude_and_one_dim_tensors():
    torch.manual_seed(0)
    model = GPT().double()
    names = po.polarize_model(model, include=["blocks.*"], exclude="*.proj.weight", mode="free")
    assert names == [f"blocks.{i}.{n}.weight" for i in range(2) for n in ("qkv", "fc", "out")]
    assert not po.is_polarized(model.tok_emb) and not po.is_polarized(model.blocks[0].proj)
    # 1-D tensors only when named exactly; a callable sees (qualname, module, tensor)
    more = po.polarize_model(model, include=["ln_f.weight", "blocks.0.proj.weight"], scale="tensor", mode="free")
    assert more == ["blocks.0.proj.weight", "ln_f.weight"]  # in module order
    picked = po.polarize_model(model, include=lambda q, m, t: isinstance(m, nn.Embedding), mode="free")
    assert picked == ["tok_emb.weight", "lm_head.weight", "pos_emb.weight"]


@pytest.mark.parametrize("kwargs,match", [
    (dict(include="*.nothing"), r"include pattern '\*\.nothing' matches no parameter of the model; its parameters are"),
    (dict(exclude="head.*"), r"exclude pattern 'head\.\*' matches no parameter"),
    (dict(include="*.bias"), r"matches only tensors with fewer than 2 dims .*named exactly"),
    (dict(direction="absorb"), r"unknown polarize setting\(s\) 'direction'; valid are 'scale', 'mode'"),
    (dict(mode="sphere"), r"unknown mode 'sphere'; valid choices are 'free', 'normalize', 'project', 'absorb'"),
    (dict(include=[3]), r"glob patterns"),
])
def test_polarize_model_refusals_leave_the_model_as_it_was(kwargs, match):
    torch.manual_seed(0)
    model = GPT().double()
    before = n_params(model)
    with pytest.raises((ValueError, TypeError), match=match):
        po.polarize_model(model, **kwargs)
    assert not list(po.polar_tensors(model)) and n_params(model) == before


def test_polarize_model_validates_everything_before_polarizing_anything():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight[1, 0] = float("nan")  # a NaN cannot be split
    with pytest.raises(ValueError, match=r"1\.weight holds NaN or Inf"):
        po.polarize_model(model)
    assert not po.is_polarized(model[0])


# ----- tied weights ------------------------------------------------------------------------------------

def test_polarizing_one_owner_of_a_tie_is_refused_and_the_second_joins():
    torch.manual_seed(0)
    model = GPT().double()
    before = n_params(model)
    po.polarize(model.tok_emb, scale="row", mode="absorb")
    with pytest.raises(ValueError, match=r"lm_head\.weight still holds the Parameter that tok_emb\.weight had"):
        po.param_groups(model)
    with pytest.raises(ValueError, match=r"lm_head\.weight still holds"):
        po.attach(torch.optim.SGD(po.polar_tensors(model).__next__().module.parameters(), lr=0.1), model)
    with pytest.raises(ValueError, match=r"lm_head\.weight still holds"):
        po.polarize_model(model)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)  # the orphan is in it
    loss_of(model, "gpt", 0).backward()
    with pytest.raises(RuntimeError, match=r"updates a Parameter of shape \(48, 32\) that polaropt\.polarize replaced"):
        opt.step()
    with pytest.raises(ValueError, match=r"shares its Parameter with Embedding\.weight, which is already polarized"):
        po.polarize(model.lm_head, scale="row", mode="free")
    po.polarize(model.lm_head, scale="row", mode="absorb")  # joins: one s, one V
    assert model.lm_head.parametrizations.weight is model.tok_emb.parametrizations.weight
    assert n_params(model) == before + VOCAB
    with pytest.raises(ValueError, match="shared by 2 modules .*unpolarize_model"):
        po.unpolarize(model.lm_head)


def test_unpolarize_model_keeps_the_tie():
    torch.manual_seed(0)
    model = GPT().double()
    before = n_params(model)
    po.polarize_model(model)
    w = model.tok_emb.weight.detach().clone()
    assert sorted(po.unpolarize_model(model)) == sorted(EXPECTED["gpt"])
    assert model.lm_head.weight is model.tok_emb.weight and isinstance(model.tok_emb.weight, nn.Parameter)
    assert torch.equal(model.tok_emb.weight.detach(), w) and n_params(model) == before


# ----- re-initialization -------------------------------------------------------------------------------

def hf_style_init(module):
    """What Hugging Face's _init_weights does."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        module.weight.data.normal_(mean=0.0, std=0.02)
        if getattr(module, "bias", None) is not None:
            module.bias.data.zero_()


@pytest.mark.parametrize("kind", list(MODELS))
def test_reinitialize_runs_plain_initializers_and_keeps_ties_and_leaves(kind):
    torch.manual_seed(0)
    model = MODELS[kind]().double()
    po.polarize_model(model, mode="absorb")
    leaves = [(t.scale, t.direction) for t in po.polar_tensors(model)]
    with torch.no_grad():  # the pitfall: these write into a recomputed W that is thrown away
        w0 = [getattr(t.module, t.name).clone() for t in po.polar_tensors(model)]
        for t in po.polar_tensors(model):
            getattr(t.module, t.name).data.normal_()
            nn.init.zeros_(getattr(t.module, t.name))
    assert all(torch.equal(getattr(t.module, t.name), w) for t, w in zip(po.polar_tensors(model), w0))

    torch.manual_seed(1)
    po.reinitialize_(model, lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None)
    torch.manual_seed(1)
    plain = MODELS[kind]().double()
    plain.apply(lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None)
    plain.load_state_dict(po.plain_state_dict(model), strict=True)
    # the polar model now holds a fresh init: same distribution as torch's, not the old weights
    for t, w in zip(po.polar_tensors(model), w0):
        assert not torch.allclose(getattr(t.module, t.name), w)
    assert [(t.scale, t.direction) for t in po.polar_tensors(model)] == leaves  # the optimizer's leaves
    for t in po.polar_tensors(model):
        n = torch.linalg.vector_norm(t.direction, dim=t.polar.dims, keepdim=True)
        torch.testing.assert_close(n, torch.ones_like(n), rtol=1e-12, atol=0)

    po.reinitialize_(model, hf_style_init)
    emb = model.tok_emb if kind == "gpt" else model.emb if kind == "lstm" else model.head
    assert 0.015 < float(emb.weight.detach().std()) < 0.025
    if kind == "gpt":
        assert torch.equal(model.tok_emb.weight, model.lm_head.weight)


def test_reinitialize_failure_restores_the_polar_form():
    model = po.polarize(nn.Linear(3, 2), scale="row", mode="absorb")
    s, v = po.scale_of(model).detach().clone(), po.direction_of(model).detach().clone()

    def broken(m):
        nn.init.zeros_(m.weight)
        raise KeyError("boom")

    with pytest.raises(KeyError):
        po.reinitialize_(model, broken)
    assert po.is_polarized(model) and torch.equal(po.scale_of(model), s) and torch.equal(po.direction_of(model), v)
    with pytest.raises(ValueError, match="NaN or Inf"):  # a NaN cannot be split
        po.reinitialize_(model, lambda m: nn.init.constant_(m.weight, float("nan")))
    assert torch.equal(po.scale_of(model), s) and torch.equal(po.direction_of(model), v)
    po.reinitialize_(model, lambda m: nn.init.zeros_(m.weight))  # zero-init (an output projection): s = 0
    assert torch.equal(po.scale_of(model), torch.zeros_like(s)) and torch.equal(model.weight, torch.zeros(2, 3))


def test_meta_device_is_refused_with_initialize_first():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"meta device.*initialize first, then polarize"):
        po.polarize(model[0])
    with pytest.raises(ValueError, match=r"0\.weight is on the meta device"):
        po.polarize_model(model)
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    for m in model:
        m.reset_parameters()
    po.polarize_model(model)
    assert all(float(t.scale.detach().abs().max()) < 10 for t in po.polar_tensors(model))


def test_multihead_attention_and_conv_transpose():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=True).double()
    up = nn.ConvTranspose2d(6, 3, 2, stride=2).double()
    model = nn.ModuleDict({"mha": mha, "up": up})
    q = torch.randn(2, 5, 16, dtype=torch.float64)
    x = torch.randn(1, 6, 4, 4, dtype=torch.float64)
    y_attn, y_up = mha(q, q, q)[0], up(x)
    assert po.polarize_model(model) == ["mha.in_proj_weight", "mha.out_proj.weight", "up.weight"]
    torch.testing.assert_close(mha(q, q, q)[0], y_attn, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(up(x), y_up, rtol=1e-12, atol=1e-12)
    # the default scale="out" is per output channel: dim 1 of a ConvTranspose weight (in, out/groups, kh, kw)
    assert po.scale_of(up).shape == (1, 3, 1, 1) and po.polar_spec(up).scale == "column"
    opt = torch.optim.AdamW(po.param_groups(model, weight_decay=0.01), lr=1e-2)
    po.attach(opt, model)
    for _ in range(3):
        opt.zero_grad()
        (mha(q, q, q)[0].square().mean() + up(x).square().mean()).backward()
        opt.step()
    mha.eval()
    with torch.no_grad():  # eval mode may take torch's fused attention path: it must read the polar weight
        torch.testing.assert_close(mha(q, q, q)[0], nn.functional.multi_head_attention_forward(
            q.transpose(0, 1), q.transpose(0, 1), q.transpose(0, 1), 16, 4, mha.in_proj_weight, mha.in_proj_bias,
            None, None, False, 0.0, mha.out_proj.weight, mha.out_proj.bias, training=False,
            need_weights=False)[0].transpose(0, 1), rtol=1e-10, atol=1e-12)


# ----- review findings: reused modules, one-entry slices, re-init that assigns ------------------------

def test_a_module_used_at_two_places_exports_and_imports_under_both_names():
    torch.manual_seed(0)
    lin = nn.Linear(4, 4).double()
    model = nn.Sequential(lin, nn.ReLU(), lin)
    plain = nn.Sequential(nn.Linear(4, 4), nn.ReLU()).double()
    plain.append(plain[0])
    assert po.polarize_model(model) == ["0.weight", "2.weight"]
    assert list(po.plain_state_dict(model)) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    plain.load_state_dict(po.plain_state_dict(model), strict=True)
    x = torch.randn(3, 4, dtype=torch.float64)
    torch.testing.assert_close(plain(x), model(x), rtol=1e-12, atol=1e-12)
    again = nn.Sequential(lin2 := nn.Linear(4, 4).double(), nn.ReLU(), lin2)
    po.polarize_model(again)
    assert po.load_plain_state_dict(again, plain.state_dict()) == ([], [])
    torch.testing.assert_close(again(x), plain(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("build,kwargs", [
    (lambda: nn.Sequential(nn.Linear(1, 4)), dict(scale="row")),
    (lambda: nn.Sequential(nn.Linear(4, 1)), dict(scale="column")),
    (lambda: nn.Sequential(nn.Conv1d(1, 3, 1)), dict(scale="row")),
    (lambda: nn.Sequential(nn.LayerNorm(4)), dict(scale="row", include="0.weight")),
])
def test_normalize_on_one_entry_slices_is_refused(build, kwargs):
    with pytest.raises(ValueError, match="every slice of V has one entry, so V/‖V‖ = sign"):
        po.polarize_model(build(), mode="normalize", **kwargs)


def test_reinitialize_reads_a_parameter_that_fn_assigns():
    layer = po.polarize(nn.Linear(4, 3), scale="row")
    po.reinitialize_(layer, lambda m: setattr(m, "weight", nn.Parameter(torch.full((3, 4), 0.5)))
                     if isinstance(m, nn.Linear) else None)
    torch.testing.assert_close(layer.weight, torch.full((3, 4), 0.5))
    with pytest.raises(ValueError, match=r"changed the shape of weight from \(3, 4\) to \(2, 2\)"):
        po.reinitialize_(layer, lambda m: setattr(m, "weight", nn.Parameter(torch.ones(2, 2))))
    torch.testing.assert_close(layer.weight, torch.full((3, 4), 0.5))  # left as it was
    assert po.is_polarized(layer)


def test_messages_for_padding_rows_sparse_embeddings_and_the_old_keyword():
    emb = nn.Sequential(nn.Embedding(10, 4, padding_idx=0))
    assert po.polarize_model(emb) == ["0.weight"]  # the padding row: s = 0 (it was refused)
    opt = torch.optim.AdamW(po.param_groups(emb), lr=0.1)
    po.attach(opt, emb)
    for _ in range(3):
        opt.zero_grad()
        emb(torch.tensor([[0, 1, 2, 0]])).square().sum().backward()
        opt.step()
    assert torch.equal(emb[0].weight[0], torch.zeros(4))  # padding_idx gets no gradient: it stays 0
    with pytest.raises(ValueError, match=r"sparse=True.*no sparse backward"):
        po.polarize_model(nn.Sequential(nn.Embedding(10, 4, sparse=True)), mode="normalize")
    with pytest.raises(TypeError, match=r"'direction' \(renamed to mode= in polaropt 0\.2\.0\)"):
        po.polarize(nn.Linear(3, 2), direction="absorb")


def test_unpolarize_model_changes_nothing_when_one_tensor_is_stale():
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    po.polarize(model[0], mode="free")
    po.polarize(model[2], mode="absorb")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(5, 4)).square().mean().backward()
    opt.step()  # attach forgotten: 2.weight is stale
    with pytest.raises(RuntimeError, match="po.attach"):
        po.unpolarize_model(model)
    assert po.is_polarized(model[0]) and po.is_polarized(model[2])


def test_reinitialize_refuses_stacked_parametrizations_and_undoes_one_fn_adds():
    class Two(nn.Module):
        def forward(self, w):
            return 2 * w

    layer = po.polarize(nn.Linear(4, 3), scale="row")
    torch.nn.utils.parametrize.register_parametrization(layer, "weight", Two())
    w = layer.weight.detach().clone()
    with pytest.raises(ValueError, match="stacked above the polar one"):
        po.reinitialize_(layer, lambda m: None)
    torch.testing.assert_close(layer.weight, w)

    model = nn.Sequential(nn.Linear(4, 3))
    po.polarize_model(model)
    s, v = po.scale_of(model[0]).detach().clone(), po.direction_of(model[0]).detach().clone()
    with pytest.raises(ValueError, match=r"fn parametrized 0\.weight itself"):
        po.reinitialize_(model, lambda m: torch.nn.utils.parametrize.register_parametrization(m, "weight", Two())
                         if isinstance(m, nn.Linear) else None)
    assert po.is_polarized(model[0]) and len(model[0].parametrizations.weight) == 1
    assert torch.equal(po.scale_of(model[0]), s) and torch.equal(po.direction_of(model[0]), v)


# ---- a copy is a copy ----------------------------------------------------------------------------------

class _CopyNet(nn.Module):
    """An embedding, a conv, an LSTM and a Linear, with the head tied to the embedding."""

    def __init__(self):
        super().__init__()
        self.emb, self.conv = nn.Embedding(20, 8), nn.Conv1d(8, 8, 3, padding=1)
        self.lstm, self.fc = nn.LSTM(8, 8, batch_first=True), nn.Linear(8, 8)
        self.head = nn.Linear(8, 20, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, x):
        h = self.conv(self.emb(x).transpose(1, 2)).transpose(1, 2)
        return self.head(self.fc(self.lstm(h)[0]))


def _copy_pair(mode):
    torch.manual_seed(0)
    model = _CopyNet()
    po.polarize_model(model, scale="row", mode=mode)
    return model, copy.deepcopy(model), torch.randint(0, 20, (2, 5))


def _reinit(m):
    if isinstance(m, (nn.Linear, nn.Conv1d, nn.Embedding)):
        nn.init.normal_(m.weight)


CHANGES = {"unpolarize_model": po.unpolarize_model, "reinitialize_": lambda m: po.reinitialize_(m, _reinit)}


@pytest.mark.parametrize("change", list(CHANGES))
@pytest.mark.parametrize("mode", ["absorb", "normalize"])
def test_a_deepcopy_changed_leaves_the_original_intact_and_the_reverse(mode, change):
    """torch's parametrize shares one generated class between a module and its deepcopy; removing the
    copy's parametrization deleted the property `weight` from the original's class too."""
    model, clone, x = _copy_pair(mode)
    for a, b in ((model, clone), (clone, model)):
        a, b = copy.deepcopy(a), b  # a fresh copy each way: change it, use the other
        weights, out = po.plain_state_dict(b), b(x)  # every W, read through its owner's property
        assert torch.equal(a(x), out)  # the copy computes what the original does (the LSTM's weights too)
        CHANGES[change](a)
        a(x)
        assert torch.equal(b(x), out)
        after = po.plain_state_dict(b)
        assert after.keys() == weights.keys() and all(torch.equal(after[k], weights[k]) for k in weights)
        assert b.lstm.weight_hh_l0.shape == (32, 8) and po.is_polarized(b.lstm, "weight_hh_l0")
    po.unpolarize_model(model)  # both changed at last: the copy still works
    assert clone(x).shape == (2, 5, 20)


def test_a_copy_of_a_polarized_module_has_its_own_class_and_copies_of_copies_too():
    layer = po.polarize(nn.Linear(4, 3), scale="row", mode="absorb")
    first = copy.deepcopy(layer)
    second = copy.deepcopy(first)
    assert len({type(layer), type(first), type(second)}) == 3
    assert all(type(m).__name__ == "ParametrizedLinear" and type(m).__bases__ == (nn.Linear,)
               for m in (layer, first, second))
    po.unpolarize(first)
    assert type(first) is nn.Linear
    assert torch.equal(layer.weight, second.weight) and po.is_polarized(layer) and po.is_polarized(second)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the path that reads .weight on a folded Linear
        layer(torch.randn(2, 4)), second(torch.randn(2, 4))


def test_averaged_model_copies_and_its_module_can_be_unpolarized():
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    model, _, x = _copy_pair("absorb")
    opt = torch.optim.AdamW(po.param_groups(model), lr=1e-2)
    po.attach(opt, model)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    for _ in range(3):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
        ema.update_parameters(model)
    before = model(x)
    po.unpolarize_model(ema.module)  # export the average as a plain model
    assert torch.equal(model(x), before) and po.is_polarized(model.emb)
    assert ema(x).shape == before.shape
    opt.zero_grad()
    model(x).square().mean().backward()
    opt.step()  # the original trains on


@pytest.mark.parametrize("name", ["adamw-weight-norm", "multipliers"])
def test_a_recipe_models_copy_is_independent(name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 10))
    po.recipe(name, model, lr=1e-2)
    clone = copy.deepcopy(model)
    x = torch.randint(0, 10, (3,))
    out = model(x)
    for m in clone.modules():
        for t in list(getattr(m, "parametrizations", {}) or {}):
            torch.nn.utils.parametrize.remove_parametrizations(m, t)
    assert torch.equal(model(x), out)


def test_copies_under_parametrize_cached_read_their_own_weights():
    """torch's property keys cached()'s cache by the module it was made for: a copy sharing it read (and sent its
    gradient to) the original's W (found by review)."""
    from torch.nn.utils import parametrize

    layer = po.polarize(nn.Linear(4, 3), scale="row", mode="absorb")
    clone = copy.deepcopy(layer)
    with torch.no_grad():
        po.scale_of(clone).mul_(10)
    x = torch.randn(2, 4)
    with parametrize.cached():
        a, b = layer(x), clone(x)
        assert not torch.equal(a, b) and clone.weight is not layer.weight
        b.sum().backward()
    assert po.direction_of(clone).grad is not None and po.direction_of(layer).grad is None


def test_polarizing_a_torch_deepcopy_of_a_parametrized_module_leaves_the_original_alone():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = torch.nn.utils.parametrizations.weight_norm(nn.Linear(4, 3))
    clone = copy.deepcopy(layer)  # torch's own deepcopy: one class for both
    po.polarize(clone, "bias", scale="tensor", mode="free")
    assert not hasattr(type(layer), "bias") and layer(torch.randn(2, 4)).shape == (2, 3)


LAYOUTS = {  # module, its weight's output dim
    "linear": (lambda: nn.Linear(6, 4), 0), "conv": (lambda: nn.Conv2d(3, 5, 3), 0),
    "conv_transpose": (lambda: nn.ConvTranspose2d(6, 3, 2), 1), "embedding": (lambda: nn.Embedding(7, 4), 0),
    "lstm": (lambda: nn.LSTM(3, 4), 0)}


@pytest.mark.parametrize("kind", list(LAYOUTS))
def test_scale_out_and_in_follow_the_layers_layout(kind):
    make, out_dim = LAYOUTS[kind]
    for scale, dim in (("out", out_dim), ("in", 1 - out_dim)):
        module = make()
        name = "weight_ih_l0" if kind == "lstm" else "weight"
        w = getattr(module, name)
        po.polarize(module, name, scale=scale)
        s = module.parametrizations[name].original0
        expected = [1] * w.ndim
        expected[dim] = w.shape[dim]
        assert list(s.shape) == expected, (kind, scale)
        assert po.polar_spec(module, name).scale == ("row", "column")[dim]


def test_scale_out_on_transformers_conv1d_is_per_output_feature():
    """GPT-2's Conv1D stores its weight as (in, out): row scales were one per input feature, silently."""
    pytorch_utils = pytest.importorskip("transformers.pytorch_utils")
    layer = pytorch_utils.Conv1D(8, 5)  # nf = 8 outputs, nx = 5 inputs: weight (5, 8)
    po.polarize_model(nn.Sequential(layer))
    assert po.scale_of(layer).shape == (1, 8)
    x = torch.randn(3, 5)
    out = layer(x)
    torch.testing.assert_close(out, x @ layer.weight + layer.bias)


def test_a_layout_scale_needs_a_layout():
    with pytest.raises(ValueError, match=r"unknown scale 'rows'; valid choices are 'tensor', 'row', 'column', "
                                         r"'element', 'out', 'in'"):
        po.polarize(nn.Linear(3, 2), scale="rows")
    with pytest.raises(ValueError, match=r"scale='in' on a tensor of shape \(2,\) with batch_dims=0: there is no "
                                         r"input dim"):
        po.polarize(nn.Linear(3, 2), "bias", scale="in", mode="free", init="one")
    copies = po.polarize(nn.Linear(3, 2), scale="out", batch_dims=1)  # the dims after the batch dims
    assert po.polar_spec(copies).scale == "row" and po.scale_of(copies).shape == (2, 3)


def test_layout_scales_on_grouped_convolutions_and_batched_or_one_dim_tensors():
    depthwise = nn.ConvTranspose2d(8, 8, 2, groups=8)
    po.polarize(depthwise, scale="out")
    assert po.scale_of(depthwise).shape == (8, 1, 1, 1)  # one input = one output channel per dim-0 slice
    with pytest.raises(ValueError, match=r"scale='out' on ConvTranspose2d\(groups=2\).*no dim has one scale per "
                                         r"output channel; use 'row'"):
        po.polarize(nn.ConvTranspose2d(4, 6, 2, groups=2), scale="out")
    with pytest.raises(ValueError, match=r"scale='in' on Conv2d\(groups=2\)"):
        po.polarize(nn.Conv2d(4, 6, 3, groups=2), scale="in")
    grouped = nn.Conv2d(4, 6, 3, groups=2)
    po.polarize(grouped, scale="out")  # dim 0 is the output channel, grouped or not
    assert po.scale_of(grouped).shape == (6, 1, 1, 1)
    norm = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    po.polarize_model(norm, include=["0.weight", "1.weight"], mode="free", init="one")  # a named 1-D gain
    assert po.polar_spec(norm[1]).scale == "row"
