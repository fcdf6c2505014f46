"""Per-step cost of polar weights under FSDP2 (``fully_shard``) against plain FSDP2, on CPU gloo ranks.

MLP 784-512-512-10 in float32, Adam, each Linear and the root wrapped with ``fully_shard`` (dim-0
shards). Polar variants are polarized (then sharded) with ``po.polarize_model`` and run with
``po.attach``. ``row`` norms are local to a shard; ``tensor`` and ``column`` norms span the shards
and cost one all-reduce of per-slice squared norms per renormalization, for all tensors together.
``--renorm`` also times, interleaved in one run, one renormalization of each variant that has one (as
attach runs it, no check), its norms alone, and one plain ``dist.all_reduce`` of as many float32 as the
norms that span the shards (the collective's own cost on this machine). Every rank runs every
variant, interleaved round-robin over the repeats; rank 0 reports the median time per step and
the paired ratio to plain FSDP2.

    python benchmarks/fsdp.py --world 2 --repeats 7 --out benchmarks/results/fsdp.json
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.fsdp import fully_shard

import polaropt as po
from polaropt.renorm import _targets, renormalize_targets
from polaropt.slices import slice_norms
from records import new_record, time_interleaved, write_record

VARIANTS = {  # name -> (mode, scale) or None for plain
    "plain": None,
    "free row": ("free", "row"),
    "normalize row": ("normalize", "row"),
    "project row": ("project", "row"),
    "absorb row": ("absorb", "row"),
    "absorb column": ("absorb", "column"),
    "absorb tensor": ("absorb", "tensor"),
}


def build(spec):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    if spec is not None:
        po.polarize_model(model, mode=spec[0], scale=spec[1])
    for layer in model[::2]:
        fully_shard(layer)
    fully_shard(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    if spec is not None:
        po.attach(opt, model)
    return model, opt


def renorm_times(runs: dict, args) -> tuple[dict, dict, list, int]:
    """One renormalization of each polar variant as attach runs it (no check; its targets found once, as
    attach's cached plan does), its norms alone (``slice_norms``: the partial norms that span the
    shards finished by one redistribution), and one plain ``dist.all_reduce`` (no DTensor) of as many
    float32 as the largest set of spanning norms, the collective's own cost on this machine; all
    interleaved in one run. Returns (renormalizations, norms, all_reduce times, its entry count)."""
    targets = {name: _targets(m) for name, (m, _) in runs.items()}
    targets = {name: ts for name, ts in targets.items() if ts}  # plain, free and normalize have none
    dims = {name: [t.polar.dims for t in ts] for name, ts in targets.items()}
    with torch.no_grad():
        spanning = [sum(n.numel() for n in slice_norms([t.direction for t in ts], dims[name])
                        if not any(p.is_shard() for p in n.placements)) for name, ts in targets.items()]
    numel = max(spanning, default=0)
    buffer = torch.zeros(numel)
    fns = {}
    for name, ts in targets.items():
        fns[name] = lambda ts=ts: renormalize_targets(ts, check=False)
        fns[name + " norms"] = lambda ts=ts, d=dims[name]: slice_norms([t.direction for t in ts], d)
    if numel:
        fns["all_reduce"] = lambda: dist.all_reduce(buffer)
    with torch.no_grad():
        times = time_interleaved(fns, repeats=args.repeats, calls=args.steps)
    return ({name: times[name] for name in targets}, {name: times[name + " norms"] for name in targets},
            times.get("all_reduce", []), numel)


def _worker(rank, world, port, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(rank)
        x, y = torch.randn(args.batch, 784, generator=g), torch.randint(0, 10, (args.batch,), generator=g)
        runs = {name: build(spec) for name, spec in VARIANTS.items()}

        def stepper(model, opt):
            def step():
                opt.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
            return step

        fns = {name: stepper(*mo) for name, mo in runs.items()}
        for f in fns.values():
            for _ in range(args.warmup):
                f()
        times = time_interleaved(fns, repeats=args.repeats, calls=args.steps)
        renorms, norms, all_reduce, numel = renorm_times(runs, args) if args.renorm else ({}, {}, [], 0)
        if rank == 0:
            record = new_record("fsdp", vars(args))
            record["world"] = world
            for name, ts in times.items():
                record["results"][name] = {
                    "median_ms": 1e3 * statistics.median(ts),
                    "paired_ratio_to_plain": statistics.median(t / p for t, p in zip(ts, times["plain"])),
                    "times_ms": [1e3 * t for t in ts]}
                if name in renorms:
                    record["results"][name]["renorm_ms"] = 1e3 * statistics.median(renorms[name])
                    record["results"][name]["norms_ms"] = 1e3 * statistics.median(norms[name])
            if all_reduce:
                record["results"]["all_reduce"] = {"numel": numel, "median_ms": 1e3 * statistics.median(all_reduce)}
            print(f"| variant ({world} ranks, batch {args.batch} per rank) | median ms | paired ×plain FSDP2 |"
                  + (" renormalization ms | its norms ms |" if renorms else ""))
            print("|---|---|---|" + ("---|---|" if renorms else ""))
            for name, r in record["results"].items():
                if name == "all_reduce":
                    continue
                print(f"| {name} | {r['median_ms']:.2f} | ×{r['paired_ratio_to_plain']:.3f} |"
                      + (f" {r['renorm_ms']:.2f} | {r['norms_ms']:.2f} |" if "renorm_ms" in r
                         else (" | |" if renorms else "")))
            if all_reduce:
                print(f"one all_reduce (c10d, no DTensor) of {numel} float32: "
                      f"{record['results']['all_reduce']['median_ms']:.2f} ms")
            write_record(record, args.out)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--batch", type=int, default=64, help="rows per rank")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--renorm", action="store_true",
                   help="also time one renormalization (as attach runs it) of each polar variant")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(args.world, port, args), nprocs=args.world, join=True)


if __name__ == "__main__":
    main()
