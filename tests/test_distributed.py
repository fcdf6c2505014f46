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
