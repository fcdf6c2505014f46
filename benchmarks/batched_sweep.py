"""Speed of a polar sweep run as one tensor program (``batch_dims=1``) against a per-config Python loop.

The liu-scaling experiment trains many (R, direction) configs of a 2D absorb problem. Batched,
all configs are copies in one (configs, 2) weight; looped, each config has its own model and
Adam. Both do the same arithmetic (tests/test_renorm.py holds a batched run equal to separate runs).

    python benchmarks/batched_sweep.py --configs 256 --steps 300 --repeats 3 --out benchmarks/results/batched_sweep.json
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch import nn

import polaropt as po
from records import new_record, time_interleaved, write_record


class Weights(nn.Module):
    def __init__(self, w0):
        super().__init__()
        self.weight = nn.Parameter(w0.clone())


def train(w0, target, steps, batch_dims):
    model = po.polarize(Weights(w0), scale="tensor", mode="absorb", init="norm", batch_dims=batch_dims)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    po.attach(opt, model)
    for _ in range(steps):
        opt.zero_grad()
        (model.weight - target).square().sum().backward()
        opt.step()
    return model.weight.detach()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", type=int, default=256)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    radii = 10 ** (1 + 3 * torch.rand(args.configs, 1, generator=g, dtype=torch.float64))
    angle = torch.rand(args.configs, 1, generator=g, dtype=torch.float64) * torch.pi / 2
    targets = radii * torch.cat([angle.cos(), angle.sin()], 1)
    w0 = torch.tensor([[-0.5, 0.0]], dtype=torch.float64).expand(args.configs, 2).clone()
    out = {}

    def batched():
        out["batched"] = train(w0, targets, args.steps, batch_dims=1)

    def loop():
        out["loop"] = torch.stack([train(w0[i], targets[i], args.steps, batch_dims=0) for i in range(args.configs)])

    times = time_interleaved({"batched": batched, "loop": loop}, repeats=args.repeats, calls=1)
    torch.testing.assert_close(out["batched"], out["loop"], rtol=1e-10, atol=1e-10)  # the same runs
    med = {k: statistics.median(v) for k, v in times.items()}
    record = new_record("batched_sweep", vars(args))
    record["results"] = {k: {"median_s": med[k], "times_s": v} for k, v in times.items()}
    record["results"]["speedup"] = med["loop"] / med["batched"]
    print(f"{args.configs} configs × {args.steps} steps: batched {med['batched']:.2f} s, loop {med['loop']:.2f} s, "
          f"speedup ×{med['loop'] / med['batched']:.0f}")
    write_record(record, args.out)


if __name__ == "__main__":
    main()
