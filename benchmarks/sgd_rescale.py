"""SGD with momentum on absorb, per state policy: the Fashion-MNIST CNN of `polaropt bench` (width 8, batch 64),
SGD(lr 0.05, momentum 0.9) with cosine decay over 150 steps, every weight polarized (absorb). `rescale-gradient`
transports the momentum buffer as a gradient sum (x a on V, the rule of polaropt <= 0.3), `rescale` as a velocity
(x 1/a on V, today's). Prints the largest scale and the loss every 10 steps, or the step a run diverged at.
Needs Fashion-MNIST (apt-get install -y dataset-fashion-mnist).

    python benchmarks/sgd_rescale.py --scale column --out benchmarks/results/sgd_rescale_column.json
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

import polaropt as po
import polaropt.transport as transport
from records import new_record, write_record

VARIANTS = ("keep", "rescale", "rescale-gradient")


def run(variant: str, scale: str, steps: int) -> dict:
    from polaropt.experiments.bench import tasks

    order = transport.MOMENT_ORDER["momentum_buffer"]
    transport.MOMENT_ORDER["momentum_buffer"] = 1 if variant == "rescale-gradient" else order
    try:
        task = tasks.build("fmnist-cnn", width=8, batch=64)
        model = task.model(0)
        po.polarize_model(model, scale=scale, mode="absorb")
        opt = torch.optim.SGD(po.param_groups(model), lr=0.05, momentum=0.9)
        po.attach(opt, model, state=variant.split("-")[0], check="step")
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        trace, diverged = [], None
        for t, (x, y) in enumerate(task.batches(0, steps)):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            try:
                opt.step()
            except FloatingPointError:
                diverged = t
                break
            sched.step()
            top = max(float(p.scale.detach().abs().max()) for p in po.polar_tensors(model))
            if t % 10 == 0 or t == steps - 1:
                trace.append({"step": t, "loss": float(loss.detach()), "max_scale": top})
            if not math.isfinite(top):
                diverged = t
                break
        return {"trace": trace, "diverged_at": diverged}
    finally:
        transport.MOMENT_ORDER["momentum_buffer"] = order


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", default="column", choices=("row", "column", "tensor"))
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    record = new_record("sgd_rescale", vars(args))
    for v in args.variants:
        r = record["results"][v] = run(v, args.scale, args.steps)
        peak = max(x["max_scale"] for x in r["trace"])
        end = r["trace"][-1]
        print(f"{v:<17} largest scale {peak:.3g}, at step {end['step']}: loss {end['loss']:.3g}"
              + (f"; diverged at step {r['diverged_at']}" if r["diverged_at"] is not None else ""))
    write_record(record, args.out)
    return record


if __name__ == "__main__":
    main()
