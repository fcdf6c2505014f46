"""Time of one renormalization of a deep polarized MLP: vectorized (foreach) vs the per-tensor loop.

    python benchmarks/renorm.py --layers 64 --width 256 --repeats 9 --out benchmarks/results/renorm.json
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch import nn

import polaropt as po
from records import new_record, time_interleaved, write_record


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=64)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--calls", type=int, default=50, help="renormalizations per repeat")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(args.width, args.width) for _ in range(args.layers)]).to(args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    for layer in model:
        po.polarize(layer, "weight", scale="row", mode="absorb")
        po.polarize(layer, "bias", scale="tensor", mode="absorb")
    variants = {"foreach": lambda: po.renormalize_(model, foreach=True),
                "loop": lambda: po.renormalize_(model, foreach=False)}
    times = time_interleaved(variants, repeats=args.repeats, calls=args.calls, sync=sync)
    med = {v: statistics.median(t) for v, t in times.items()}
    record = new_record("renorm", vars(args), args.device)
    record["results"] = {v: {"median_ms": 1e3 * med[v], "ratio_to_loop": med[v] / med["loop"],
                             "times_ms": [1e3 * t for t in times[v]]} for v in variants}
    for v in variants:
        print(f"{v:<8} {1e3 * med[v]:8.3f} ms   ×{med[v] / med['loop']:.3f} of loop")
    write_record(record, args.out)
    return record


if __name__ == "__main__":
    main()
