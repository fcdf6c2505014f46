"""DistributedDataParallel: 2 gloo processes on CPU train a polarized model and stay bitwise equal."""

import sys

import pytest
import torch
import torch.distributed as dist
from torch import nn

import polaropt as po
import spawned

STEPS = 50


def _train_every_mode(rank, out_dir):
    results = {}
    for direction in po.MODES:
        torch.manual_seed(1234 + rank)  # different init per rank: DDP must broadcast rank 0's
        model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 4))
        po.polarize(model[0], scale="row", mode=direction)
        po.polarize(model[2], scale="tensor", mode=direction)
        ddp = nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.Adam(po.param_groups(ddp.module, scale={"lr": 1e-3}), lr=1e-2)
        state = "rescale" if direction == "absorb" else "keep"
        po.attach(opt, ddp, state=state)
        g = torch.Generator().manual_seed(rank)  # different data per rank
        for _ in range(STEPS):
            x, y = torch.randn(8, 10, generator=g), torch.randn(8, 4, generator=g)
            opt.zero_grad()
            nn.functional.mse_loss(ddp(x), y).backward()
            opt.step()
        results[direction] = {k: v.detach().clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}
    return results


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch built without gloo")
@pytest.mark.skipif(sys.platform == "win32", reason="spawned gloo workers are not tested on Windows")
def test_ddp_ranks_stay_bitwise_equal(tmp_path):
    r0, r1 = spawned.spawn(_train_every_mode, tmp_path, world=2)
    assert set(r0) == set(po.MODES)
    for direction in po.MODES:
        for key, a in r0[direction].items():
            assert torch.equal(a, r1[direction][key]), (direction, key)
        # training moved the weights, and renormalizing modes stayed on the sphere
        v = r0[direction]["0.parametrizations.weight.original1"]
        if direction in ("project", "absorb"):
            torch.testing.assert_close(v.norm(dim=1), torch.ones(16))


def _absorb_ddp(rank, restore=True):
    """A row-scaled absorb MLP under DDP, attached with a read every 5 steps, and this rank's data."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 4))
    po.polarize_model(model, mode="absorb", scale="row")
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-2)
    po.attach(opt, ddp, check_every=5, restore=restore)  # the snapshot and its restore, on every rank alike
    return model, ddp, opt, torch.Generator().manual_seed(rank)


def _step_with_rank_ones_bad_batch(ddp, opt, g, t, rank):
    x, y = torch.randn(8, 10, generator=g), torch.randn(8, 4, generator=g)
    if t == 12 and rank == 1:
        x[0, 0] = float("nan")  # one rank's bad batch: DDP's all-reduce spreads it to both
    opt.zero_grad()
    nn.functional.mse_loss(ddp(x), y).backward()
    opt.step()


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}


def _rank_zero_saves_then_a_nan(rank, out_dir):
    model, ddp, opt, g = _absorb_ddp(rank)
    raised_at, message = None, None
    for t in range(30):
        try:
            _step_with_rank_ones_bad_batch(ddp, opt, g, t, rank)
        except FloatingPointError as e:
            raised_at, message = t, str(e)
            break
        if rank == 0 and t in (3, 8):
            torch.save(opt.state_dict(), f"{out_dir}/opt.pt")  # the usual checkpoint: rank 0 alone
    return {"raised_at": raised_at, "message": message,
            "params": _params(model)}


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch built without gloo")
@pytest.mark.skipif(sys.platform == "win32", reason="spawned gloo workers are not tested on Windows")
def test_a_checkpoint_saved_on_rank_zero_alone_keeps_the_ranks_reads_together(tmp_path):
    # 0.3.0: rank 0's opt.state_dict() restarted its periodic schedule and took its own snapshot, so the
    # ranks found the NaN at different steps and restored different states (or hung in DDP's all-reduce)
    r0, r1 = spawned.spawn(_rank_zero_saves_then_a_nan, tmp_path, world=2, timeout=60)
    assert r0["raised_at"] == r1["raised_at"] == 14, (r0["raised_at"], r1["raised_at"])  # the read after step 15
    assert "restored to step 10" in r0["message"]
    for key, a in r0["params"].items():
        assert torch.isfinite(a).all() and torch.equal(a, r1["params"][key]), key


def _rank_zero_saves_over_a_nan_and_the_job_goes_on(rank, out_dir):
    model, ddp, opt, g = _absorb_ddp(rank)
    raised = []
    for t in range(30):
        try:
            _step_with_rank_ones_bad_batch(ddp, opt, g, t, rank)
        except FloatingPointError:
            raised.append(["step", t])  # the snapshot was restored: go on, as the error invites
            continue
        if rank == 0 and t == 13:
            try:
                torch.save(opt.state_dict(), f"{out_dir}/opt.pt")  # finds the NaN on rank 0 alone
            except FloatingPointError:
                raised.append(["state_dict", t])
    return {"raised": raised,
            "params": _params(model)}


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch built without gloo")
@pytest.mark.skipif(sys.platform == "win32", reason="spawned gloo workers are not tested on Windows")
def test_a_nan_found_by_rank_zeros_checkpoint_alone_leaves_the_ranks_reading_together(tmp_path):
    # f53e9e7: the failed read at rank 0's opt.state_dict() restarted rank 0's schedule, so from then on
    # each rank restored at its own steps and DDP's all-reduce gave the NaN back: every read raised
    r0, r1 = spawned.spawn(_rank_zero_saves_over_a_nan_and_the_job_goes_on, tmp_path, world=2, timeout=60)
    assert r0["raised"] == [["state_dict", 13], ["step", 14]], r0["raised"]
    assert r1["raised"] == [["step", 14]], r1["raised"]
    for key, a in r0["params"].items():
        assert torch.isfinite(a).all() and torch.equal(a, r1["params"][key]), key


def _default_check_finds_a_nan_on_every_rank(rank, out_dir):
    """The default attach (no snapshot): rank 1's bad batch at step 13; rank 0 saves its usual checkpoint
    at steps 4, 9 and 14."""
    model, ddp, opt, g = _absorb_ddp(rank, restore=False)
    raised = []
    for t in range(20):
        try:
            _step_with_rank_ones_bad_batch(ddp, opt, g, t, rank)
        except FloatingPointError as e:
            raised.append(["step", t, str(e)])
            break
        if rank == 0 and t in (3, 8, 13):
            try:
                sd = opt.state_dict()
            except FloatingPointError as e:
                raised.append(["state_dict", t, str(e)])
                continue
            torch.save(sd, f"{out_dir}/opt.pt")
            torch.save(model.state_dict(), f"{out_dir}/model.pt")
    saved = torch.load(f"{out_dir}/opt.pt", weights_only=True) if rank == 0 else None
    return {"raised": raised, "finite": all(bool(torch.isfinite(p).all()) for p in model.parameters()),
            "saved_finite": saved is None or all(bool(torch.isfinite(v).all()) for s in saved["state"].values()
                                                  for v in s.values() if torch.is_tensor(v))}


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch built without gloo")
@pytest.mark.skipif(sys.platform == "win32", reason="spawned gloo workers are not tested on Windows")
def test_the_default_check_raises_on_every_rank_together_and_no_checkpoint_holds_the_nan(tmp_path):
    r0, r1 = spawned.spawn(_default_check_finds_a_nan_on_every_rank, tmp_path, world=2, timeout=60)
    # rank 0's checkpoint at step 14 is refused before anything is written (the file holds step 9's) ...
    assert [r[:2] for r in r0["raised"]] == [["state_dict", 13], ["step", 14]], r0["raised"]
    assert "entered in the last 4 step(s) of AdamW (steps 11–14" in r0["raised"][0][2]
    # ... and the periodic read after step 15 raises on both ranks at once, naming the steps since the last read
    assert [r[:2] for r in r1["raised"]] == [["step", 14]], r1["raised"]
    for message in (r0["raised"][1][2], r1["raised"][0][2]):
        assert "entered in the last 5 step(s) of AdamW (steps 11–15" in message
        assert "Nothing was restored: resume from your last checkpoint" in message
        assert "0.parametrizations.weight.original" in message  # the tensors are named
    assert not r0["finite"] and not r1["finite"]  # the default keeps no copy: the NaN is still there
    assert r0["saved_finite"]
