"""polaropt.Muon: torch.optim.Muon bit for bit where the options match; conv kernels, batches of matrices and
NorMuon against references written from their update rules."""

import copy
import math

import pytest
import torch
from torch import nn

import polaropt as po
from polaropt.orthogonalize import orthogonalize


def _mlp():
    torch.manual_seed(0)
    # two 32×32 matrices share a shape (stacked into one chain), one is tall, one wide
    return nn.Sequential(nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(),
                         nn.Linear(32, 48), nn.Tanh(), nn.Linear(48, 5))


def _train(model, opt, steps=50, seed=1, shape=(16, 20)):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(*shape, generator=gen)
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()


def _matrices(model):
    return [p for p in model.parameters() if p.ndim >= 2]


@pytest.mark.parametrize("options", [
    {},
    {"adjust_lr_fn": "match_rms_adamw", "weight_decay": 0.01},
    {"nesterov": False, "momentum": 0.9, "adjust_lr_fn": "original"},
    {"ns_steps": 3, "eps": 1e-5},
])
def test_equals_torch_muon_bitwise_over_50_steps(options):
    a, b = _mlp(), _mlp()
    ref = torch.optim.Muon(_matrices(a), lr=0.02, **options)
    ours = po.Muon(_matrices(b), lr=0.02, dtype=torch.bfloat16, **options)
    _train(a, ref)
    _train(b, ours)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    assert all(torch.equal(ref.state[p]["momentum_buffer"], ours.state[q]["momentum_buffer"])
               for p, q in zip(_matrices(a), _matrices(b)))


def test_state_dicts_load_both_ways_with_torch_muon():
    a, b = _mlp(), _mlp()
    ref, ours = torch.optim.Muon(_matrices(a), lr=0.02), po.Muon(_matrices(b), lr=0.02, dtype=torch.bfloat16)
    _train(a, ref, steps=5)
    b.load_state_dict(a.state_dict())
    ours.load_state_dict(copy.deepcopy(ref.state_dict()))  # as from a checkpoint file (a live one shares tensors)
    _train(a, ref, steps=5, seed=2)
    _train(b, ours, steps=5, seed=2)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    back = torch.optim.Muon(_matrices(a), lr=0.02)  # and torch's Muon resumes from ours
    back.load_state_dict(copy.deepcopy(ours.state_dict()))
    _train(a, back, steps=5, seed=3)
    _train(b, ours, steps=5, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def _reference_step(W, G, buf, lr, beta=0.95, rows_cols=None):
    """One Muon step from the rule (Nesterov, no decay, 'original' scaling), on the matrix view."""
    buf.lerp_(G, 1 - beta)
    U = G.lerp(buf, beta)
    rows, cols = rows_cols
    O = orthogonalize(U.reshape(rows, cols), "polar-express", 5)
    return W - lr * math.sqrt(max(1, rows / cols)) * O.reshape(W.shape)


def test_a_conv_kernel_is_the_matrix_out_by_in_kh_kw():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3)
    W0 = conv.weight.detach().clone()
    opt = po.Muon([conv.weight], lr=0.1, weight_decay=0.0, backend="polar-express")
    buf = torch.zeros_like(W0)
    W = W0
    for _ in range(3):
        opt.zero_grad()
        conv(torch.randn(2, 3, 6, 6)).square().mean().backward()
        W = _reference_step(W, conv.weight.grad, buf, 0.1, rows_cols=(8, 27))
        opt.step()
        torch.testing.assert_close(conv.weight.detach(), W, rtol=1e-5, atol=1e-6)
    assert not torch.equal(W, W0)


def test_batch_dims_orthogonalize_each_head_alone():
    torch.manual_seed(0)
    heads = nn.Parameter(torch.randn(4, 8, 16))  # 4 heads, each an 8×16 matrix
    apart = [nn.Parameter(h.detach().clone()) for h in heads]
    joint = po.Muon([heads], lr=0.05, weight_decay=0.0, batch_dims=1, backend="polar-express")
    alone = po.Muon(apart, lr=0.05, weight_decay=0.0, backend="polar-express")
    for step in range(5):
        g = torch.randn(4, 8, 16, generator=torch.Generator().manual_seed(step))
        heads.grad = g.clone()
        for i, p in enumerate(apart):
            p.grad = g[i].clone()
        joint.step()
        alone.step()
    torch.testing.assert_close(heads.detach(), torch.stack([p.detach() for p in apart]), rtol=1e-5, atol=1e-6)
    # without batch_dims the 4 heads are one 4 × 128 matrix: a different update
    flat = nn.Parameter(torch.randn(4, 8, 16))
    flat.grad = torch.randn(4, 8, 16)
    before = flat.detach().clone()
    po.Muon([flat], lr=0.05, weight_decay=0.0, backend="svd").step()
    O = (before - flat.detach()).reshape(4, 128) / 0.05
    torch.testing.assert_close(O @ O.T, torch.eye(4), rtol=1e-4, atol=1e-4)


def _normuon_reference(W, G, buf, v, lr, beta=0.95, beta2=0.95):
    """NorMuon's step as the field note states it (zichongli5/NorMuon `normuon_update`): Muon's direction,
    each row divided by the root of its running mean square, the Frobenius norm put back."""
    buf.lerp_(G, 1 - beta)
    O = orthogonalize(G.lerp(buf, beta), "torch", 5, torch.float32)
    norm = O.norm()
    v.lerp_(O.square().mean(dim=-1, keepdim=True), 1 - beta2)
    O = O / (v.sqrt() + 1e-10)
    O = O * (norm / (O.norm() + 1e-10))
    return W - lr * math.sqrt(max(1, W.shape[0] / W.shape[1])) * O


def test_normuon_equals_its_update_rule_over_50_steps():
    torch.manual_seed(0)
    lin = nn.Linear(24, 40)
    W = lin.weight.detach().clone()
    buf, v = torch.zeros_like(W), torch.zeros(40, 1)
    opt = po.Muon([lin.weight], lr=0.02, weight_decay=0.0, normuon=True, dtype=torch.float32)
    gen = torch.Generator().manual_seed(1)
    for _ in range(50):
        opt.zero_grad()
        lin(torch.randn(8, 24, generator=gen)).square().mean().backward()
        W = _normuon_reference(W, lin.weight.grad, buf, v, 0.02)
        opt.step()
    torch.testing.assert_close(lin.weight.detach(), W, rtol=1e-5, atol=1e-6)
    assert opt.state[lin.weight]["second_momentum_buffer"].shape == (40, 1)  # one entry per row


def test_real_layers_step():
    torch.manual_seed(0)
    lstm, conv, attn = nn.LSTM(6, 8), nn.Conv1d(4, 6, 3), nn.MultiheadAttention(8, 2)
    params = [lstm.weight_ih_l0, lstm.weight_hh_l0, conv.weight, attn.in_proj_weight, attn.out_proj.weight]
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.randn_like(p)
    po.Muon(params, lr=0.01).step()
    assert all(not torch.equal(p, b) and torch.isfinite(p).all() for p, b in zip(params, before))


def test_bad_input_names_the_value_and_the_choices():
    w = nn.Parameter(torch.randn(3, 3))
    with pytest.raises(ValueError, match=r"unknown backend 'qr'; valid choices are 'torch', 'polar-express'"):
        po.Muon([w], backend="qr")
    with pytest.raises(ValueError, match=r"unknown adjust_lr_fn 'rms'; valid choices are None, 'original'"):
        po.Muon([w], adjust_lr_fn="rms")
    with pytest.raises(ValueError, match=r"shape \(3,\) has no matrix .*give vectors and scalars to AdamW"):
        po.Muon([nn.Parameter(torch.randn(3))])
    with pytest.raises(ValueError, match=r"shape \(3, 3\) has no matrix after batch_dims=1"):
        po.Muon([w], batch_dims=1)
    with pytest.raises(ValueError, match=r"lr must be a finite number >= 0, got -1"):
        po.Muon([w], lr=-1)


def test_a_refused_param_group_is_not_added():
    w, v = nn.Parameter(torch.randn(4, 4)), nn.Parameter(torch.randn(5))
    opt = po.Muon([w], lr=0.1)
    with pytest.raises(ValueError, match=r"shape \(5,\) has no matrix"):
        opt.add_param_group({"params": [v]})
    assert len(opt.param_groups) == 1
