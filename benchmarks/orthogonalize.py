"""Accuracy and time of each orthogonalization backend (polaropt.orthogonalize), and of a Muon step:
torch.optim.Muon against polaropt.Muon (same-shaped matrices batched). Variants interleaved, median of
repeats, ratios in one run.

    python benchmarks/orthogonalize.py --repeats 7 --out benchmarks/results/orthogonalize.json

Accuracy is |σ − 1| over the output's singular values (an exact polar factor has all of them at 1): the
largest on a 256 × 784 Gaussian matrix (the field note's), the largest and the median over a stack of
``--blocks`` 256 × 256 ones (square Gaussian matrices have singular values down to ~10⁻⁴·‖G‖_F, below the
10⁻³ that Polar Express's coefficients are made for).
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch import nn
from torch.optim._muon import _zeropower_via_newtonschulz

import polaropt as po
from polaropt.orthogonalize import TORCH_COEFFICIENTS, orthogonalize, orthogonalize_many
from records import new_record, time_interleaved, write_record

BF16, F32 = torch.bfloat16, torch.float32
BACKENDS = {  # name -> (backend, steps, dtype)
    "torch-bf16": ("torch", 5, BF16),
    "torch-f32": ("torch", 5, F32),
    "polar-express-5-bf16": ("polar-express", 5, BF16),
    "polar-express-5-f32": ("polar-express", 5, F32),
    "polar-express-8-f32": ("polar-express", 8, F32),
    "newton-schulz-30-f32": ("newton-schulz", 30, F32),
    "svd": ("svd", 1, None),
}


def _errors(O: torch.Tensor) -> torch.Tensor:
    return (torch.linalg.svdvals(O.double()) - 1).abs()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blocks", type=int, default=12, help="same-shaped 256×256 matrices (a transformer's blocks)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--calls", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    dev = args.device
    sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)
    gen = torch.Generator().manual_seed(0)
    G = torch.randn(256, 784, generator=gen).to(dev)
    stack = [torch.randn(256, 256, generator=gen).to(dev) for _ in range(args.blocks)]
    record = new_record("orthogonalize", vars(args), dev)

    # 1. each backend: accuracy and time, on one matrix and on the stack (batched)
    accuracy = {}
    for name, (b, s, d) in BACKENDS.items():
        stacked = torch.cat([_errors(O) for O in orthogonalize_many(stack, b, s, d)])
        accuracy[name] = {"one": float(_errors(orthogonalize(G, b, s, d)).max()), "stack": float(stacked.max()),
                          "stack_median": float(stacked.median())}
    calls = {}
    for name, (b, s, d) in BACKENDS.items():
        calls[f"{name} one"] = lambda b=b, s=s, d=d: orthogonalize(G, b, s, d)
        calls[f"{name} stack"] = lambda b=b, s=s, d=d: orthogonalize_many(stack, b, s, d)
    calls["torch's NS, one at a time, stack"] = lambda: [_zeropower_via_newtonschulz(M, TORCH_COEFFICIENTS, 5, 1e-7)
                                                         for M in stack]
    times = time_interleaved(calls, repeats=args.repeats, calls=args.calls, sync=sync, rotate=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    record["results"]["backends"] = {
        name: {"max_sigma_error_one": accuracy[name]["one"], "max_sigma_error_stack": accuracy[name]["stack"],
               "median_sigma_error_stack": accuracy[name]["stack_median"],
               "median_ms_one": 1e3 * med[f"{name} one"], "median_ms_stack": 1e3 * med[f"{name} stack"],
               "stack_vs_torch_loop": med[f"{name} stack"] / med["torch's NS, one at a time, stack"]}
        for name in BACKENDS}
    record["results"]["torch_loop_stack_ms"] = 1e3 * med["torch's NS, one at a time, stack"]
    print(f"{'backend':<22} {'|σ−1| one':>10} {'|σ−1| stack':>11} {'median':>9} {'ms one':>8} {'ms stack':>9} "
          f"{'×torch loop':>11}")
    for name, r in record["results"]["backends"].items():
        print(f"{name:<22} {r['max_sigma_error_one']:10.2e} {r['max_sigma_error_stack']:11.2e} "
              f"{r['median_sigma_error_stack']:9.2e} "
              f"{r['median_ms_one']:8.2f} {r['median_ms_stack']:9.2f} {r['stack_vs_torch_loop']:11.3f}")
    print(f"torch's NS one at a time over the stack: {record['results']['torch_loop_stack_ms']:.2f} ms")

    # 2. one Muon step over the stack's shapes: torch.optim.Muon against polaropt.Muon
    def params():
        g = torch.Generator().manual_seed(1)
        ps = [nn.Parameter(torch.randn(256, 256, generator=g).to(dev)) for _ in range(args.blocks)]
        for q in ps:
            q.grad = torch.randn(256, 256, generator=g).to(dev)
        return ps
    opts = {"torch.optim.Muon": torch.optim.Muon(params(), lr=0.0),
            "po.Muon bf16 (= torch's bitwise)": po.Muon(params(), lr=0.0, dtype=BF16),
            "po.Muon default dtype": po.Muon(params(), lr=0.0),
            "po.Muon polar-express": po.Muon(params(), lr=0.0, backend="polar-express")}
    times = time_interleaved({k: o.step for k, o in opts.items()}, repeats=args.repeats, calls=args.calls,
                             sync=sync, rotate=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["torch.optim.Muon"]
    record["results"]["muon_step"] = {k: {"median_ms": 1e3 * m, "ratio_to_torch": m / base} for k, m in med.items()}
    for k, m in med.items():
        print(f"{k:<34} {1e3 * m:8.2f} ms  ×{m / base:.3f} of torch.optim.Muon")
    write_record(record, args.out)
    return record


if __name__ == "__main__":
    main()
