"""Time of one renormalization of a deep polarized MLP: vectorized (foreach) vs the per-tensor loop.

    python benchmarks/renorm.py --layers 64 --width 256 --repeats 9 --out benchmarks/results/renorm.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import polaropt as po


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
        po.polarize(layer, "weight", scale="row", direction="absorb")
        po.polarize(layer, "bias", scale="tensor", direction="absorb")
    variants = {"foreach": True, "loop": False}
    times = {v: [] for v in variants}
    for _ in range(args.repeats):
        for name, foreach in variants.items():
            sync()
            t0 = time.perf_counter()
            for _ in range(args.calls):
                po.renormalize_(model, foreach=foreach)
            sync()
            times[name].append((time.perf_counter() - t0) / args.calls)
    med = {v: statistics.median(t) for v, t in times.items()}
    record = {"benchmark": "renorm", "config": vars(args), "torch": torch.__version__,
              "python": platform.python_version(), "threads": torch.get_num_threads(), "device": args.device,
              "results": {v: {"median_ms": 1e3 * med[v], "ratio_to_loop": med[v] / med["loop"],
                              "times_ms": [1e3 * t for t in times[v]]} for v in variants}}
    for v in variants:
        print(f"{v:<8} {1e3 * med[v]:8.3f} ms   ×{med[v] / med['loop']:.3f} of loop")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=1))
    return record


if __name__ == "__main__":
    main()
