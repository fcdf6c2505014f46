"""Peak memory of a training run per variant, each in a process of its own: plain AdamW, torch's weight_norm,
polaropt's absorb with attach's default check (no copy), with restore=True (a snapshot), with check="step",
and with check="off"; the hyperball-adamw recipe with its hooks (a copy of the hidden matrices during each step)
and with compile=True (po.HyperballAdamW, no copy), against plain AdamW in a process that has compiled a
one-line function first ("plain-compiler": the compiler's own memory, which a CPU's resident set counts). CPU:
the peak resident set (ru_maxrss); CUDA: torch.cuda.max_memory_allocated.

    python benchmarks/memory.py --model mlp --steps 120 --out benchmarks/results/memory_mlp.json
    python benchmarks/memory.py --model gpt --steps 60 --out benchmarks/results/memory_gpt.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch
from torch import nn

import polaropt as po
from records import new_record, write_record

VARIANTS = ("plain", "weight_norm", "attach-default", "attach-restore", "attach-step", "attach-off", "hyperball-hooks",
            "plain-compiler", "hyperball-compiled")


def build(model: str, device: str):
    torch.manual_seed(0)
    if model == "mlp":  # 24 x Linear(1024, 1024): 25 M parameters, 96 MiB in float32
        net = nn.Sequential(*[nn.Sequential(nn.Linear(1024, 1024), nn.GELU()) for _ in range(24)])

        def batch(t):
            g = torch.Generator().manual_seed(t)
            return torch.randn(32, 1024, generator=g).to(device), None
        loss = lambda out, y: out.square().mean()  # noqa: E731
    else:  # a small GPT: 4 blocks, d = 256, vocab 512, tied head
        layer = lambda: nn.TransformerEncoderLayer(256, 4, 1024, dropout=0.0, batch_first=True, norm_first=True)  # noqa: E731
        emb = nn.Embedding(512, 256)
        head = nn.Linear(256, 512, bias=False)
        head.weight = emb.weight
        net = nn.Sequential(emb, *[layer() for _ in range(4)], nn.LayerNorm(256), head)

        def batch(t):
            g = torch.Generator().manual_seed(t)
            x = torch.randint(0, 512, (8, 128), generator=g)
            return x.to(device), ((x + 1) % 512).to(device)
        loss = lambda out, y: nn.functional.cross_entropy(out.flatten(0, 1), y.flatten())  # noqa: E731
    return net.to(device), batch, loss


def worker(variant: str, model: str, steps: int, device: str) -> dict:
    net, batch, loss = build(model, device)
    if variant == "weight_norm":
        for m in list(net.modules()):
            if isinstance(m, (nn.Linear, nn.Embedding)) and m.weight.ndim == 2 and not isinstance(m, nn.Embedding):
                torch.nn.utils.parametrizations.weight_norm(m, "weight", dim=0)
    if variant.startswith("attach"):
        po.polarize_model(net, mode="absorb")
        opt = torch.optim.AdamW(po.param_groups(net, weight_decay=0.01), lr=1e-3)
        check = {"attach-default": {}, "attach-restore": {"restore": True}, "attach-step": {"check": "step"},
                 "attach-off": {"check": "off"}}[variant]
        po.attach(opt, net, **check)
    elif variant == "plain-compiler":
        torch.compile(lambda x: x * 2 + 1, fullgraph=True)(torch.ones(4, device=device))
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
    elif variant.startswith("hyperball"):
        opt = po.recipe("hyperball-adamw", net, lr=1e-3, compile=variant == "hyperball-compiled")
    else:
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    for t in range(steps):
        x, y = batch(t)
        opt.zero_grad(set_to_none=True)
        loss(net(x), y).backward()
        opt.step()
    opt.state_dict()
    params = sum(p.numel() * p.element_size() for p in {id(p): p for p in net.parameters()}.values())
    peak = (torch.cuda.max_memory_allocated() if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"peak_bytes": peak, "param_bytes": params}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("mlp", "gpt"), default="mlp")
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--device", default="cpu")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.steps < 1:
        raise SystemExit(f"--steps must be >= 1, got {args.steps}")
    if args.worker:
        print(json.dumps(worker(args.worker, args.model, args.steps, args.device)))
        return {}
    record = new_record("memory", vars(args), args.device)
    for v in args.variants:  # one process each: a peak is a process's high-water mark
        done = subprocess.run([sys.executable, __file__, "--worker", v, "--model", args.model, "--steps",
                               str(args.steps), "--device", args.device], capture_output=True, text=True, check=True)
        record["results"][v] = json.loads(done.stdout.strip().splitlines()[-1])
    base = record["results"].get("plain", {}).get("peak_bytes")
    mib = 2 ** 20
    for v, r in record["results"].items():
        over = f"  {(r['peak_bytes'] - base) / mib:+8.1f} MiB vs plain" if base else ""
        print(f"{v:<16} peak {r['peak_bytes'] / mib:8.1f} MiB{over}   (parameters {r['param_bytes'] / mib:.1f} MiB)")
    write_record(record, args.out)
    return record


if __name__ == "__main__":
    main()
