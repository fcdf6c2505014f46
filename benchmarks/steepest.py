"""Time of one SteepestDescent step on a stack of square weight matrices: spectral via SVD vs via
Newton–Schulz, with l2 (plain gradient descent) and linf for scale. Variants interleaved, median of repeats.

    python benchmarks/steepest.py --layers 8 --width 512 --repeats 7 --out benchmarks/results/steepest.json
"""

from __future__ import annotations

import argparse
import statistics

import torch

import polaropt as po
from records import new_record, time_interleaved, write_record


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--calls", type=int, default=5, help="steps per repeat")
    p.add_argument("--ns-steps", type=int, default=30)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(args.width, args.width, generator=gen).to(args.device))
              for _ in range(args.layers)]
    for q in params:
        q.grad = torch.randn(args.width, args.width, generator=gen).to(args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    variants = {
        "l2": dict(norm="l2"),
        "linf": dict(norm="linf"),
        "spectral-svd": dict(norm="spectral", orthogonalize="svd"),
        "spectral-ns": dict(norm="spectral", orthogonalize="newton_schulz", ns_steps=args.ns_steps),
    }
    opts = {v: po.SteepestDescent(params, lr=0.0, **kw) for v, kw in variants.items()}  # lr 0: params stay put
    times = time_interleaved({v: opt.step for v, opt in opts.items()}, repeats=args.repeats, calls=args.calls,
                             sync=sync)
    med = {v: statistics.median(t) for v, t in times.items()}
    record = new_record("steepest", vars(args), args.device)
    record["results"] = {v: {"median_ms": 1e3 * med[v], "ratio_to_svd": med[v] / med["spectral-svd"],
                             "times_ms": [1e3 * t for t in times[v]]} for v in variants}
    for v in variants:
        print(f"{v:<13} {1e3 * med[v]:9.3f} ms   ×{med[v] / med['spectral-svd']:.3f} of spectral-svd")
    write_record(record, args.out)
    return record


if __name__ == "__main__":
    main()
