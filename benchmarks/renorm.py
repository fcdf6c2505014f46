"""Time of one renormalization of a deep polarized MLP: batched (grouped) vs the per-tensor loop.

Variants, interleaved: ``grouped`` is ``po.renormalize_`` (on a GPU, same-shaped tensors stacked,
one set of kernels per group; on CPU in-place per-tensor kernels; its NaN/Inf check syncs once),
``stacked`` forces the stacked path (what a GPU runs for tensors of this size) on any device, ``lazy`` is
``grouped`` without the NaN/Inf check (what ``po.attach(check="lazy")`` runs after each step: no host sync),
``unstacked`` is ``lazy`` with stacking off (every tensor divided by one multi-tensor op), ``loop`` is
the per-tensor reference, ``floor`` one read and one write of every ``V`` (a multi-tensor multiply by 1:
the least any renormalization must move). ``ops`` counts the aten operations one call dispatches (a
device-independent count of kernel launches; a foreach op counts once).

    python benchmarks/renorm.py --layers 64 --width 256 --repeats 9 --out benchmarks/results/renorm.json
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch import nn

import polaropt as po
from polaropt.renorm import _renormalize_grouped, _targets, renormalize_targets
from records import new_record, time_interleaved, write_record


def count_ops(fn) -> int:
    """The aten operations one call of ``fn`` dispatches."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.n


@torch.no_grad()
def floor(targets) -> None:
    """The memory floor of a renormalization: one read and one write of every ``V`` (times 1: unchanged)."""
    torch._foreach_mul_([t.direction for t in targets], 1.0)


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
    variants = {"grouped": lambda: po.renormalize_(model),
                "stacked": lambda: _renormalize_grouped(_targets(model), stack_max=1 << 30),
                "lazy": lambda: renormalize_targets(_targets(model), check=False),
                "unstacked": lambda: _renormalize_grouped(_targets(model), check=False, stack_max=0),
                "loop": lambda: po.renormalize_(model, foreach=False),
                "floor": lambda: floor(_targets(model))}
    ops = {v: count_ops(f) for v, f in variants.items()}
    times = time_interleaved(variants, repeats=args.repeats, calls=args.calls, sync=sync)
    med = {v: statistics.median(t) for v, t in times.items()}
    record = new_record("renorm", vars(args), args.device)
    record["results"] = {v: {"median_ms": 1e3 * med[v], "ratio_to_loop": med[v] / med["loop"], "ops": ops[v],
                             "times_ms": [1e3 * t for t in times[v]]} for v in variants}
    for v in variants:
        print(f"{v:<8} {1e3 * med[v]:8.3f} ms   ×{med[v] / med['loop']:.3f} of loop   {ops[v]:5d} ops")
    write_record(record, args.out)
    return record


if __name__ == "__main__":
    main()
