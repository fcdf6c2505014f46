"""What ``torch.compile`` makes of a whole training step with polaropt's hooks: graph breaks, graphs
compiled, and recompiles, per mode, against plain weights.

A 2-Linear MLP (8-16-4), row scale, AdamW, ``po.attach`` (default lazy check), one eager step first
(the optimizer state and polaropt's watch lists exist), then the step compiled and run ``--steps``
times. Printed per variant:

- ``explain graphs``: ``torch._dynamo.explain(step)().graph_count`` (what the issue's "graph breaks"
  were counted with; in torch 2.13 it is the number of graphs, so frames compiled on their own, such
  as polaropt's hooks in the segments torch's own ``Optimizer.step`` graph breaks split off, count);
- ``graph breaks``: ``torch._dynamo.utils.counters["graph_break"]`` over the compiled run;
- ``graphs after step 1`` / ``graphs at the end``: equal when no step after the first recompiles.

    python benchmarks/compile_graphs.py
"""

from __future__ import annotations

import argparse

import torch
import torch._dynamo as dynamo
from torch import nn
from torch._dynamo.utils import counters

import polaropt as po

VARIANTS = ("plain", "normalize", "project", "absorb")


def measure(variant: str, steps: int) -> dict:
    dynamo.reset()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    if variant != "plain":
        po.polarize_model(model, scale="row", mode=variant)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    if variant != "plain":
        po.attach(opt, model)
    x = torch.randn(5, 8)

    def step():
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()

    step()
    graphs = dynamo.explain(step)().graph_count
    dynamo.reset()
    counters.clear()
    compiled = torch.compile(step)
    compiled()
    first = counters["stats"].get("unique_graphs", 0)
    for _ in range(steps - 1):
        compiled()
    return {"explain graphs": graphs, "graph breaks": sum(counters["graph_break"].values()),
            "graphs after step 1": first, "graphs at the end": counters["stats"].get("unique_graphs", 0)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    args = p.parse_args(argv)
    out = {v: measure(v, args.steps) for v in args.variants}
    keys = list(next(iter(out.values())))
    print("| variant | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for v, r in out.items():
        print(f"| {v} | " + " | ".join(str(r[k]) for k in keys) + " |")
    return out


if __name__ == "__main__":
    main()
