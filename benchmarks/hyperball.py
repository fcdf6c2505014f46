"""Time per training step of Hyperball against AdamW: polaropt's ``hyperball-adamw`` recipe (AdamW + hooks),
the same recipe with ``compile=True`` (``po.HyperballAdamW``, fused by torch.compile), HeavyBall's
``HyperBallAdamW`` (as HeavyBall ships it: its own compiled kernels) on the same hidden matrices, and torch's
AdamW on everything, as a user gets it (foreach) and with ``fused=True`` (torch's single-kernel AdamW), on
``benchmarks/overhead.py``'s MLP and small GPT. Variants interleaved, median of repeats, ratio to AdamW. HeavyBall is a benchmark-only dependency (``pip install --no-deps heavyball==3.2.1``
plus ``opt-einsum``); without it that row is left out.

    python benchmarks/hyperball.py --model mlp --batch 128 --repeats 15 --out benchmarks/results/hyperball_mlp.json
    python benchmarks/hyperball.py --model gpt --batch 8 --repeats 15 --out benchmarks/results/hyperball_gpt.json
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import polaropt as po
from overhead import batch_of, make_model
from records import new_record, time_interleaved, write_record


def build(variant: str, kind: str, width: int, seq: int):
    torch.manual_seed(0)
    model = make_model(kind, width, seq)
    if variant == "adamw":
        return model, po.recipe("adamw", model, lr=1e-3)
    if variant == "adamw-fused":
        return model, torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0, fused=True)
    if variant == "hyperball-adamw":
        return model, po.recipe("hyperball-adamw", model, lr=1e-3)
    if variant == "hyperball-compiled":
        return model, po.recipe("hyperball-adamw", model, lr=1e-3, compile=True)
    import heavyball

    hidden = [p for _, p in po.hidden_matrices(model)]
    rest = [p for p in model.parameters() if all(p is not q for q in hidden)]
    return model, po.RecipeOptimizer([heavyball.HyperBallAdamW(hidden, lr=1e-3), torch.optim.AdamW(rest, lr=1e-3)],
                                     "heavyball")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("mlp", "gpt"), default="mlp")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--steps", type=int, default=10, help="training steps per round")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    variants = ["adamw", "adamw-fused", "hyperball-adamw", "hyperball-compiled"]
    try:
        import heavyball  # noqa: F401

        variants.append("heavyball")
    except ImportError:
        print("heavyball is not installed: its row is left out")
    x, y = batch_of(args.model, args.batch, args.seq, "cpu")
    steps, first = {}, {}
    for v in variants:
        model, opt = build(v, args.model, args.width, args.seq)

        def step(model=model, opt=opt):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        t0 = time.perf_counter()
        step()  # state created, the compiled kernels built (time it with an empty TORCHINDUCTOR_CACHE_DIR)
        first[v] = time.perf_counter() - t0
        for _ in range(args.warmup - 1):
            step()
        steps[v] = step
    times = time_interleaved(steps, repeats=args.repeats, calls=args.steps, rotate=True)
    med = {v: statistics.median(t) for v, t in times.items()}
    record = new_record("hyperball", vars(args))
    record["results"] = {v: {"median_ms": 1e3 * med[v], "ratio_to_adamw": med[v] / med["adamw"],
                             "ratio_to_fused_adamw": med[v] / med["adamw-fused"], "first_step_s": first[v],
                             "times_ms": [1e3 * t for t in times[v]]} for v in variants}
    for v in variants:
        print(f"{v:<20} {1e3 * med[v]:8.2f} ms  ×{med[v] / med['adamw']:.3f} of AdamW  "
              f"×{med[v] / med['adamw-fused']:.3f} of fused AdamW  (first step {first[v]:.1f} s)")
    write_record(record, args.out)
    return record


if __name__ == "__main__":
    main()
