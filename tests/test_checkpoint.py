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


# ----- polar settings travel with the checkpoint -------------------------------------------------------

@pytest.mark.parametrize("change", [dict(mode="free"), dict(scale="tensor"), dict(trainable_scale=False)])
def test_loading_into_a_differently_polarized_model_names_both_settings(change):
    spec = dict(scale="row", mode="absorb", trainable_scale=True)
    src = po.polarize(nn.Sequential(nn.Linear(4, 3))[0], **spec)
    ckpt = src.state_dict()
    other = po.polarize(nn.Linear(4, 3), **{**spec, **change})
    key, value = next(iter(change.items()))
    with pytest.raises((ValueError, RuntimeError), match=rf"(weight was polarized with .*{key}=|size mismatch)"):
        other.load_state_dict(ckpt)
    if key != "scale":  # a scale change also changes s's shape, which torch reports itself
        with pytest.raises(ValueError, match=rf"checkpoint's weight was polarized with mode='absorb', scale='row', "
                                             rf"trainable_scale=True, batch_dims=0, but this model's has .*{key}={value!r}"):
            other.load_state_dict(ckpt)


def test_nested_names_in_the_settings_error():
    a, b = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)), nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    po.polarize_model(a, mode="absorb")
    po.polarize_model(b, mode="project")
    with pytest.raises(ValueError, match=r"checkpoint's 0\.weight was polarized with mode='absorb'"):
        b.load_state_dict(a.state_dict())


class _Shapes(nn.Module):
    """Embedding, conv, LSTM, Linear and an untied head: every kind of polar owner, for the state-dict tests."""

    def __init__(self, tied=False):
        super().__init__()
        self.emb, self.conv, self.lstm = nn.Embedding(12, 6), nn.Conv1d(6, 6, 3, padding=1), nn.LSTM(6, 6)
        self.fc, self.head = nn.Linear(6, 6), nn.Linear(6, 12, bias=False)
        if tied:
            self.head.weight = self.emb.weight

    def forward(self, x):
        h = self.conv(self.emb(x).transpose(1, 2)).transpose(1, 2)
        return self.head(self.fc(self.lstm(h)[0]))


def _polar_shapes(tied=False, **kw):
    torch.manual_seed(0)
    model = _Shapes(tied)
    po.polarize_model(model, **{"scale": "row", "mode": "absorb", **kw})
    return model


@pytest.mark.parametrize("tied", [False, True])
def test_a_polar_state_dict_holds_tensors_only_and_its_settings_still_travel(tied):
    model = _polar_shapes(tied)
    sd = model.state_dict()
    assert all(torch.is_tensor(v) for v in sd.values()), {k: type(v) for k, v in sd.items() if not torch.is_tensor(v)}
    extra = [k for k in sd if k.endswith("._extra_state")]
    assert len(extra) == 6 and all(sd[k].dtype == torch.int64 and sd[k].shape == (5,) for k in extra)
    assert po.decode_settings(sd["emb.parametrizations.weight.0._extra_state"]) == {
        "mode": "absorb", "scale": "row", "trainable_scale": True, "batch_dims": 0}
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    other = _Shapes(tied)  # the LSTM's weights alone polarized otherwise
    po.polarize_model(other, scale="row", mode="absorb", exclude=["lstm.*"])
    po.polarize_model(other, scale="row", mode="project", include=["lstm.*"])
    with pytest.raises(ValueError, match=r"checkpoint's lstm\.weight_ih_l0 was polarized with mode='absorb', "
                                         r"scale='row', trainable_scale=True, batch_dims=0, but this model's has "
                                         r"mode='project'"):
        other.load_state_dict(torch.load(buf, weights_only=True))


def test_checkpoints_of_polaropt_0_3_hold_the_settings_as_a_dict_and_still_load():
    model = _polar_shapes()
    old = {k: ({"mode": "absorb", "scale": "row", "trainable_scale": True, "batch_dims": 0}
               if k.endswith("._extra_state") else v) for k, v in model.state_dict().items()}
    _polar_shapes().load_state_dict(old)
    old["fc.parametrizations.weight.0._extra_state"]["mode"] = "free"
    with pytest.raises(ValueError, match=r"checkpoint's fc\.weight was polarized with mode='free'"):
        _polar_shapes().load_state_dict(old)


@pytest.mark.parametrize("bad", [torch.tensor([9, 3, 1, 1, 0]), torch.tensor([1, 7, 1, 1, 0]), torch.zeros(5),
                                 torch.tensor([1, 3, 1]), "absorb", torch.tensor([1, 3, 1, 7, 0]),
                                 torch.tensor([1, 3, 1, 1, 0]) + 0.5, torch.tensor([1, 3, 1, 1, 0]) * (1 + 0j)])
def test_a_settings_entry_that_is_not_one_is_named(bad):
    model = _polar_shapes()
    sd = model.state_dict()
    sd["conv.parametrizations.weight.0._extra_state"] = bad
    with pytest.raises(ValueError, match=r"checkpoint's conv\.weight was polarized with .*but this model's has "
                                         r"mode='absorb', scale='row'"):
        model.load_state_dict(sd)


def test_settings_cast_to_floating_point_by_a_converter_still_load_and_a_meta_load_skips_them():
    model = _polar_shapes()
    sd = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}  # a blanket dtype converter
    other = _polar_shapes()
    other.load_state_dict(sd)
    assert torch.equal(po.scale_of(other.fc), po.scale_of(model.fc).to(torch.bfloat16).float())
    meta = _polar_shapes().to("meta")  # polarized with values, then moved: loaded with assign=True later
    meta.load_state_dict({k: v.to("meta") for k, v in model.state_dict().items()}, assign=True)  # nothing to read
    assert po.scale_of(meta.fc).is_meta


@pytest.mark.parametrize("tied", [False, True])
def test_safetensors_round_trip(tied, tmp_path):
    """safetensors refused the dict settings entries; a tied weight goes through save_model/load_model, which
    drop and restore shared tensors (save_file refuses shared tensors in plain torch models too)."""
    st = pytest.importorskip("safetensors.torch")
    model, x = _polar_shapes(tied), torch.randint(0, 12, (4, 3))
    other = _polar_shapes(tied, init="one")  # different s and V, the same settings
    if tied:
        st.save_model(model, tmp_path / "m.safetensors")
        missing, unexpected = st.load_model(other, tmp_path / "m.safetensors")
        assert not unexpected
    else:
        st.save_file(model.state_dict(), tmp_path / "m.safetensors")
        other.load_state_dict(st.load_file(tmp_path / "m.safetensors"))
    assert torch.equal(other(x), model(x))
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), model.state_dict().values()))


def test_an_ema_that_treats_every_entry_as_a_tensor():
    """timm's ModelEmaV2/V3 iterate the state dict as tensors (V3: lerp the floating ones, copy the rest)."""
    model = _polar_shapes()
    ema = __import__("copy").deepcopy(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        for e, m in zip(ema.state_dict().values(), model.state_dict().values()):
            e.lerp_(m, 0.5) if e.is_floating_point() else e.copy_(m)
    v, v0 = po.direction_of(ema.fc), po.direction_of(model.fc) - 1.0
    assert torch.allclose(v, v0 + 0.5)


# ----- plain checkpoints in and out --------------------------------------------------------------------

def plain_and_polar(mode="absorb"):
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    polar = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    po.polarize_model(polar, mode=mode)
    return plain, polar


def test_plain_state_dict_has_the_plain_keys_in_order():
    plain, polar = plain_and_polar()
    assert list(po.plain_state_dict(polar)) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert set(po.plain_state_dict(polar)) == set(plain.state_dict())
    w = po.plain_state_dict(polar)["0.weight"]
    assert not w.requires_grad and torch.equal(w, polar[0].weight.detach())


def test_load_plain_state_dict_reports_keys_like_torch_and_changes_nothing_on_refusal():
    plain, polar = plain_and_polar()
    before = {k: v.clone() for k, v in polar.state_dict().items() if torch.is_tensor(v)}
    sd = plain.state_dict()
    bad = {k: v for k, v in sd.items() if k != "2.weight"} | {"extra": torch.zeros(1)}
    with pytest.raises(RuntimeError, match=r'(?s)Missing key\(s\) in state_dict: "2\.weight"\. .*Unexpected key\(s\) in state_dict: "extra"'):
        po.load_plain_state_dict(polar, bad)
    wrong = dict(sd) | {"0.weight": torch.zeros(8, 7, dtype=torch.float64)}
    with pytest.raises(RuntimeError, match=r"size mismatch for 0\.weight: .*\(8, 7\) .*\(8, 6\)"):
        po.load_plain_state_dict(polar, wrong)
    nan = dict(sd) | {"2.weight": torch.full((3, 8), float("nan"), dtype=torch.float64)}
    with pytest.raises(ValueError, match="NaN or Inf"):
        po.load_plain_state_dict(polar, nan)
    assert all(torch.equal(v, before[k]) for k, v in polar.state_dict().items() if torch.is_tensor(v))
    result = po.load_plain_state_dict(polar, bad, strict=False)
    assert result.missing_keys == ["2.weight"] and result.unexpected_keys == ["extra"]
    torch.testing.assert_close(polar[0].weight, plain[0].weight, rtol=1e-14, atol=1e-15)
    assert torch.equal(polar[2].parametrizations.weight.original1, before["2.parametrizations.weight.original1"])


def test_load_plain_state_dict_refuses_a_tie_the_checkpoint_does_not_have():
    emb, head = nn.Embedding(5, 4), nn.Linear(4, 5, bias=False)
    head.weight = emb.weight
    tied = nn.ModuleDict({"emb": emb, "head": head})
    po.polarize_model(tied)
    untied = {"emb.weight": torch.randn(5, 4), "head.weight": torch.randn(5, 4)}
    with pytest.raises(ValueError, match="one tied weight in this model, but the checkpoint holds different values"):
        po.load_plain_state_dict(tied, untied)
