"""Time per training step of an MLP 784-512-512-10 with Adam: plain vs polar modes vs torch's weight_norm.

Every polar variant runs with ``po.attach`` (the gradient guard before the step, renormalization
after it for project/absorb), as the README recommends. ``guard`` is the plain model with
``po.attach``: the cost of the NaN/Inf gradient guard alone. ``absorb-unfolded`` is ``absorb``
without the ``nn.Linear`` fast path of ``polaropt.fold`` (an internal switch, used only here).

Variants are interleaved in one process (round-robin over repeats), so machine noise hits them
alike; we report the median over repeats and the ratio to plain Adam.

    python benchmarks/overhead.py --repeats 7 --out benchmarks/results/overhead.json
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import polaropt as po
from polaropt import fold
from records import new_record, write_record

MODES = ("free", "normalize", "project", "absorb")
VARIANTS = ("plain", "guard", *MODES, "absorb-unfolded", "weight_norm")


def build(variant: str, seed: int = 0, device: str = "cpu"):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    model = model.to(device)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    if variant == "weight_norm":
        for m in linears:
            torch.nn.utils.parametrizations.weight_norm(m, "weight", dim=0)
    elif variant not in ("plain", "guard"):
        for m in linears:
            po.polarize(m, "weight", scale="row", mode=variant.removesuffix("-unfolded"))
            if variant.endswith("-unfolded"):
                fold.remove(m)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    if variant not in ("plain", "weight_norm"):
        po.attach(opt, model)
    return model, opt


def time_steps(model, opt, x, y, steps: int) -> float:
    loss_fn = nn.CrossEntropyLoss()
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
    sync()
    return (time.perf_counter() - t0) / steps


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[128, 1024])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--steps", type=int, default=30, help="timed steps per repeat")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--flush-denormal", action="store_true",
                   help="torch.set_flush_denormal(True): tiny Adam moments stop hitting slow denormal arithmetic")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="write the JSON record here")
    args = p.parse_args(argv)
    torch.set_flush_denormal(args.flush_denormal)
    record = new_record("overhead", vars(args), args.device)
    for batch in args.batches:
        g = torch.Generator().manual_seed(batch)
        x, y = torch.randn(batch, 784, generator=g), torch.randint(0, 10, (batch,), generator=g)
        x, y = x.to(args.device), y.to(args.device)
        runs = {v: build(v, device=args.device) for v in args.variants}
        for v, (model, opt) in runs.items():
            time_steps(model, opt, x, y, args.warmup)
        times = {v: [] for v in args.variants}
        for _ in range(args.repeats):
            for v, (model, opt) in runs.items():
                times[v].append(time_steps(model, opt, x, y, args.steps))
        med = {v: statistics.median(ts) for v, ts in times.items()}
        base = med.get("plain")
        # paired ratio: each repeat's time over plain's time in the same round, then the median;
        # robust to the machine slowing down or speeding up between rounds
        paired = {v: statistics.median(t / p for t, p in zip(times[v], times["plain"])) if base else None
                  for v in args.variants}
        record["results"][str(batch)] = {
            v: {"median_ms": 1e3 * med[v], "ratio_to_plain": (med[v] / base) if base else None,
                "paired_ratio_to_plain": paired[v], "times_ms": [1e3 * t for t in times[v]]}
            for v in args.variants}
    print("| variant | " + " | ".join(f"batch {b}: median ms | ×plain | paired ×plain" for b in args.batches) + " |")
    print("|---|" + "---|---|---|" * len(args.batches))
    for v in args.variants:
        cells = []
        for b in args.batches:
            r = record["results"][str(b)][v]
            cells.append(f"{r['median_ms']:.2f} | ×{r['ratio_to_plain']:.3f} | ×{r['paired_ratio_to_plain']:.3f}")
        print(f"| {v} | " + " | ".join(cells) + " |")
    write_record(record, args.out)
    return record


if __name__ == "__main__":
    main()
