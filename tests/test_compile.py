import shutil

import pytest
import torch
from torch import nn

import polaropt as po


def _can_compile() -> str | None:
    if not hasattr(torch, "compile"):
        return "this torch has no torch.compile"
    if shutil.which("c++") is None and shutil.which("g++") is None and shutil.which("clang++") is None:
        return "torch.compile's CPU backend (inductor) needs a C++ compiler, and none is on PATH"
    return None


@pytest.mark.skipif(_can_compile() is not None, reason=str(_can_compile()))
def test_compiled_forward_matches_eager():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    po.polarize(model[0], scale="row", mode="normalize")
    po.polarize(model[2], scale="column", mode="absorb")
    x = torch.randn(5, 8)
    compiled = torch.compile(model)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)
    compiled(x).sum().backward()
    assert po.direction_of(model[0]).grad is not None
