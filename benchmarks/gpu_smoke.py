"""A GPU smoke check (run by hand on a CUDA machine; CI has no GPU): every direction mode trains on
CUDA, renormalized tensors stay on the sphere, absorb keeps W, and a NaN is caught.

    python benchmarks/gpu_smoke.py
"""

import torch
from torch import nn

import polaropt as po


def main() -> None:
    assert torch.cuda.is_available(), "needs a CUDA device"
    dev = "cuda"
    for dtype in (torch.float32, torch.bfloat16):
        for direction in po.MODES:
            torch.manual_seed(0)
            model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).to(dev, dtype)
            for layer in (model[0], model[2]):
                po.polarize(layer, scale="row", mode=direction)
            opt = torch.optim.Adam(po.param_groups(model, scale={"lr": 1e-3}), lr=1e-2)
            po.attach(opt, model, state="rescale")
            for _ in range(20):
                x = torch.randn(32, 64, device=dev, dtype=dtype)
                opt.zero_grad()
                model(x).float().square().mean().backward()
                opt.step()
            v = po.direction_of(model[0])
            n = v.float().norm(dim=1)
            if direction in ("project", "absorb"):
                assert (n - 1).abs().max() < (1e-2 if dtype == torch.bfloat16 else 1e-5), (direction, n)
            w = model[0].weight.detach().clone()
            po.renormalize_(model)
            if direction == "absorb":
                torch.testing.assert_close(model[0].weight, w, rtol=2e-2 if dtype == torch.bfloat16 else 1e-5, atol=1e-6)
            with torch.no_grad():
                v[0, 0] = float("nan")
            try:
                po.renormalize_(model)
                assert direction not in ("project", "absorb"), "NaN not caught"
            except FloatingPointError:
                assert direction in ("project", "absorb")
            print(f"ok {dtype} {direction}")


if __name__ == "__main__":
    main()
