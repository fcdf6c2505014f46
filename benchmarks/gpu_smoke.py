"""A GPU smoke check (run by hand on a CUDA machine; CI has no GPU): every mode trains on CUDA,
renormalized tensors stay on the sphere, absorb keeps W, and a NaN gradient is refused before the
optimizer writes anything.

    python benchmarks/gpu_smoke.py                  # on a CUDA machine
    python benchmarks/gpu_smoke.py --device cpu     # the same checks on CPU
"""

import argparse

import torch
from torch import nn

import polaropt as po


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    dev = p.parse_args(argv).device
    assert dev != "cuda" or torch.cuda.is_available(), "needs a CUDA device (or pass --device cpu)"
    for dtype in (torch.float32, torch.bfloat16):
        for mode in po.MODES:
            torch.manual_seed(0)
            model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).to(dev, dtype)
            po.polarize_model(model, scale="row", mode=mode)
            opt = torch.optim.Adam(po.param_groups(model, scale={"lr": 1e-3}), lr=1e-2)
            po.attach(opt, model, state="rescale")
            for _ in range(20):
                x = torch.randn(32, 64, device=dev, dtype=dtype)
                opt.zero_grad()
                model(x).float().square().mean().backward()
                opt.step()
            v = po.direction_of(model[0])
            n = v.float().norm(dim=1)
            if mode in ("project", "absorb"):
                assert (n - 1).abs().max() < (1e-2 if dtype == torch.bfloat16 else 1e-5), (mode, n)
            w = model[0].weight.detach().clone()
            po.renormalize_(model)
            if mode == "absorb":
                torch.testing.assert_close(model[0].weight, w, rtol=2e-2 if dtype == torch.bfloat16 else 1e-5, atol=1e-6)
            opt.zero_grad()
            model(torch.randn(32, 64, device=dev, dtype=dtype)).float().square().mean().backward()
            po.direction_of(model[0]).grad[0, 0] = float("nan")
            before = [t.detach().clone() for t in model.parameters()]
            try:
                opt.step()
                raise AssertionError(f"NaN gradient not refused ({mode})")
            except FloatingPointError:
                assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before)), "a refused step wrote"
            print(f"ok {dtype} {mode}")


if __name__ == "__main__":
    main()
