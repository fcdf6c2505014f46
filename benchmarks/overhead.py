"""Time per training step: plain vs polar modes vs torch's weight_norm, on an MLP or a small GPT.

Models: ``--model mlp`` is an MLP 784-512-512-10 with Adam (batch = rows); ``--model gpt`` is a
small GPT (4 blocks, fused qkv, LayerNorm, tied embedding/head, ``--width`` d, 256-token vocabulary)
with AdamW (batch = sequences of ``--seq`` tokens); polar variants use ``scale="row"`` on every
Linear weight (the embedding and tied head stay plain, as in the field's recipes).

Every polar variant runs with ``po.attach`` (the gradient guard before the step, renormalization
after it for project/absorb), as the README recommends. ``guard`` is the plain model with
``po.attach``: the cost of the NaN/Inf gradient guard alone. ``absorb-unfolded`` is ``absorb``
without the ``nn.Linear`` fast path of ``polaropt.fold`` (an internal switch, used only here).
``absorb-checkstep`` is ``absorb`` with ``attach(check="step")``: the immediate NaN/Inf check (one
host sync per step) instead of the default lazy one.

Variants are interleaved in one process (round-robin over repeats), so machine noise hits them
alike; we report the median over repeats and the ratio to plain Adam.

``--compile`` times ``torch.compile(train_step)`` over forward, backward and ``opt.step()`` (the
hooks traced with it) instead of the eager step; the warm-up steps compile.

``--renorm`` adds a line for the absorb model: one renormalization as ``po.attach`` runs it after
each step (batched; with the default lazy check it has no NaN/Inf check and no host sync) against one bare
AdamW/Adam ``step()`` over the same tensors (gradients present, interleaved): the renormalization's
cost in units of the optimizer step it follows.

    python benchmarks/overhead.py --repeats 7 --out benchmarks/results/overhead.json
    python benchmarks/overhead.py --model gpt --width 128 --batches 8 --renorm --out benchmarks/results/overhead_gpt128.json

The GPT's size is ``--width``, ``--blocks``, ``--heads``, ``--vocab`` and ``--seq``; ``--autocast bf16``
runs the forward and the loss under ``torch.autocast`` (the issue's GPT-2-small GPU row:
``--device cuda --width 768 --blocks 12 --heads 12 --seq 1024 --vocab 50304 --batches 8 --autocast bf16``).

``--instances K`` builds K copies of every variant and times them all in every round; a variant's time
per round is the mean over its copies (each copy's rounds are recorded too). Copies of one model can
differ by 1–3% on CPU, as much as the gaps measured here.

``--pool RECORD...`` reads several runs' records and reports their rounds as one sample (paired ratios
to plain and weight_norm, 95% bootstrap intervals), timing nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

import polaropt as po
from polaropt import fold
from polaropt.renorm import _targets, renormalize_targets
from polaropt.experiments.bench.tasks import Block  # the benchmark's pre-norm block: fused qkv, 4× GELU MLP
from records import new_record, time_interleaved, write_record

MODES = ("free", "normalize", "project", "absorb")
VARIANTS = ("plain", "guard", *MODES, "absorb-unfolded", "absorb-checkstep", "weight_norm")


class GPT(nn.Module):
    def __init__(self, d: int, vocab: int = 256, blocks: int = 4, seq: int = 128, heads: int = 4):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(seq, d)
        self.blocks = nn.Sequential(*[Block(d, heads=heads) for _ in range(blocks)])
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.tok.weight

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        return self.head(self.ln(self.blocks(x))).flatten(0, 1)


def make_model(kind: str, width: int, seq: int, blocks: int = 4, heads: int = 4, vocab: int = 256) -> nn.Module:
    if kind == "gpt":
        return GPT(width, vocab=vocab, blocks=blocks, seq=seq, heads=heads)
    return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))


def build(variant: str, seed: int = 0, device: str = "cpu", kind: str = "mlp", width: int = 128, seq: int = 128,
          **gpt):
    """``variant``'s model and optimizer; ``gpt``: the GPT's ``blocks``, ``heads`` and ``vocab``."""
    torch.manual_seed(seed)
    model = make_model(kind, width, seq, **gpt).to(device)
    tied = getattr(model, "tok", None)  # the GPT's embedding, tied to its head: left plain
    linears = [m for m in model.modules() if type(m) is nn.Linear and (tied is None or m.weight is not tied.weight)]
    if variant == "weight_norm":
        for m in linears:
            torch.nn.utils.parametrizations.weight_norm(m, "weight", dim=0)
    elif variant not in ("plain", "guard"):
        for m in linears:
            po.polarize(m, "weight", scale="row", mode=variant.split("-")[0])
            if variant.endswith("-unfolded"):
                fold.remove(m)
    opt = (torch.optim.AdamW if kind == "gpt" else torch.optim.Adam)(model.parameters(), lr=1e-3)
    if variant not in ("plain", "weight_norm"):
        po.attach(opt, model, check="step" if variant.endswith("-checkstep") else "lazy")
    return model, opt


def batch_of(kind: str, batch: int, seq: int, device: str, vocab: int = 256):
    g = torch.Generator().manual_seed(batch)
    if kind == "gpt":
        idx = torch.randint(0, vocab, (batch, seq + 1), generator=g)
        x, y = idx[:, :-1], idx[:, 1:].flatten()
    else:
        x, y = torch.randn(batch, 784, generator=g), torch.randint(0, 10, (batch,), generator=g)
    return x.to(device), y.to(device)


def renorm_vs_step(args) -> dict:
    """One renormalization of the absorb model (as attach runs it) against one optimizer step over the
    same tensors."""
    model, opt = build("absorb", device=args.device, kind=args.model, width=args.width, seq=args.seq, **_gpt(args))
    x, y = batch_of(args.model, args.batches[0], args.seq, args.device, args.vocab)
    nn.functional.cross_entropy(model(x), y).backward()  # gradients stay: every step() does the same work
    bare = type(opt).step.__wrapped__  # torch wraps step() to run hooks; this is the update alone
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    with torch.no_grad():
        variants = {"renormalize_": lambda: renormalize_targets(_targets(model), check=False),
                    "optimizer step": lambda: bare(opt),
                    "step with hooks": lambda: opt.step()}  # + every hook: the guard's, attach's
        for f in variants.values():
            f()
        times = time_interleaved(variants, repeats=args.repeats, calls=args.steps, sync=sync)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"renorm_ms": 1e3 * med["renormalize_"], "step_ms": 1e3 * med["optimizer step"],
            "hooked_step_ms": 1e3 * med["step with hooks"],
            "ratio": med["renormalize_"] / med["optimizer step"],
            "paired_ratio": statistics.median(a / b for a, b in zip(times["renormalize_"], times["optimizer step"])),
            "hooked_paired_ratio": statistics.median(a / b for a, b in zip(times["step with hooks"],
                                                                           times["optimizer step"]))}


def paired_ratio_ci(times: list, reference: list) -> dict:
    """Median over rounds of ``time / reference time`` (same round), with a 95% bootstrap interval."""
    from scipy.stats import bootstrap
    ratios = [t / r for t, r in zip(times, reference)]
    if len(set(ratios)) < 2:
        return {"median": statistics.median(ratios), "low": min(ratios), "high": max(ratios)}
    ci = bootstrap((ratios,), statistics.median, vectorized=False, n_resamples=2000, method="percentile",
                   random_state=0).confidence_interval
    return {"median": statistics.median(ratios), "low": float(ci.low), "high": float(ci.high)}


def train_step(model, opt, x, y, optimizer_step: bool = True, autocast: torch.dtype | None = None):
    """One training step of ``model`` as a zero-argument callable (what ``time_interleaved`` times);
    without ``optimizer_step``, the forward and backward alone; with ``autocast`` (a dtype), the
    forward and the loss under ``torch.autocast``."""
    loss_fn = nn.CrossEntropyLoss()  # the GPT returns (batch·seq, vocab) logits

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            loss = loss_fn(model(x), y)
        loss.backward()
        if optimizer_step:
            opt.step()

    return step


def pooled(paths: list[str], batch: str | None = None) -> dict:
    """The rounds of several runs' records (same variants) as one sample: for each variant, the paired
    ratio to ``plain`` and to ``weight_norm`` (where recorded) with 95% bootstrap intervals."""
    runs = [json.loads(Path(path).read_text()) for path in paths]
    batch = batch or next(iter(runs[0]["results"]))
    rows = [run["results"][batch] for run in runs]
    variants = [v for v in rows[0] if all(v in r for r in rows)]

    def rounds(v):
        return [t for r in rows for t in r[v]["times_ms"]]
    out = {v: {ref: paired_ratio_ci(rounds(v), rounds(ref)) for ref in ("plain", "weight_norm") if ref in variants}
           for v in variants}
    print(f"{len(rounds(variants[0]))} rounds from {len(paths)} runs, batch {batch}")
    for v, refs in out.items():
        print(f"{v:<12} " + "   ".join(f"×{ref} {c['median']:.3f} [{c['low']:.3f}, {c['high']:.3f}]"
                                        for ref, c in refs.items()))
    return out


AUTOCAST = {"none": None, "bf16": torch.bfloat16}  # no fp16: it would need a GradScaler


def _gpt(args) -> dict:
    return {"blocks": args.blocks, "heads": args.heads, "vocab": args.vocab}


def _instance(variant: str, k: int) -> str:
    return variant if k == 0 else f"{variant}#{k + 1}"


def main(argv=None) -> dict:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--pool"]:
        return pooled(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["mlp", "gpt"], default="mlp")
    p.add_argument("--width", type=int, default=128, help="GPT width d")
    p.add_argument("--seq", type=int, default=128, help="GPT tokens per sequence")
    p.add_argument("--blocks", type=int, default=4, help="GPT blocks")
    p.add_argument("--heads", type=int, default=4, help="GPT attention heads (dividing --width)")
    p.add_argument("--vocab", type=int, default=256, help="GPT vocabulary (embedding rows, tied to the head)")
    p.add_argument("--autocast", choices=list(AUTOCAST), default="none",
                   help="run the forward and the loss under torch.autocast in this dtype")
    p.add_argument("--renorm", action="store_true", help="also time renormalize_ against an optimizer step")
    p.add_argument("--batches", type=int, nargs="+", default=[128, 1024])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--steps", type=int, default=30, help="timed steps per repeat")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--compile", action="store_true",
                   help="time torch.compile(train_step) (forward, backward and opt.step() with its hooks) instead")
    p.add_argument("--no-step", action="store_true",
                   help="time the forward and backward alone (no opt.step(), so no hook runs)")
    p.add_argument("--flush-denormal", action="store_true",
                   help="torch.set_flush_denormal(True): tiny Adam moments stop hitting slow denormal arithmetic")
    p.add_argument("--instances", type=int, default=1,
                   help="independently built copies of every variant, all timed in each round; a variant's time "
                        "in a round is the mean over its copies (one copy can time 1-3%% off another: its memory, or its place "
                        "in the round's order)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="write the JSON record here")
    args = p.parse_args(argv)
    for name in ("instances", "blocks", "heads", "vocab", "width", "seq"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.model == "gpt" and args.width % args.heads:
        p.error(f"--heads {args.heads} must divide --width {args.width}")
    torch.set_flush_denormal(args.flush_denormal)
    record = new_record("overhead", vars(args), args.device)
    for batch in args.batches:
        x, y = batch_of(args.model, batch, args.seq, args.device, args.vocab)
        # instance k of every variant is built before instance k + 1 of any, so no variant's copies sit together
        steps = {_instance(v, k): train_step(*build(v, device=args.device, kind=args.model, width=args.width,
                                                    seq=args.seq, **_gpt(args)), x, y,
                                             optimizer_step=not args.no_step, autocast=AUTOCAST[args.autocast])
                 for k in range(args.instances) for v in args.variants}
        if args.compile:
            for v, step in steps.items():
                step()  # eager first: the optimizer state and polaropt's watch lists exist
                steps[v] = torch.compile(step)
        for step in steps.values():
            for _ in range(args.warmup):
                step()
        sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
        times = time_interleaved(steps, repeats=args.repeats, calls=args.steps, sync=sync, rotate=True)
        copies = {v: [times.pop(_instance(v, k)) for k in range(args.instances)] for v in args.variants}
        times = {v: [statistics.fmean(ts) for ts in zip(*copies[v])] for v in args.variants}  # per round
        med = {v: statistics.median(ts) for v, ts in times.items()}
        base = med.get("plain")
        # paired ratio: each repeat's time over plain's time in the same round, then the median;
        # robust to the machine slowing down or speeding up between rounds
        paired = {v: statistics.median(t / p for t, p in zip(times[v], times["plain"])) if base else None
                  for v in args.variants}
        record["results"][str(batch)] = {
            v: {"median_ms": 1e3 * med[v], "ratio_to_plain": (med[v] / base) if base else None,
                "paired_ratio_to_plain": paired[v], "times_ms": [1e3 * t for t in times[v]]}
            for v in args.variants}
        if args.instances > 1:
            for v in args.variants:
                record["results"][str(batch)][v]["instance_times_ms"] = [[1e3 * t for t in ts] for ts in copies[v]]
        if "weight_norm" in times:  # the target: no slower than torch's weight_norm
            for v in args.variants:
                record["results"][str(batch)][v]["paired_vs_weight_norm"] = paired_ratio_ci(
                    times[v], times["weight_norm"])
    print("| variant | " + " | ".join(f"batch {b}: median ms | ×plain | paired ×plain" for b in args.batches) + " |")
    print("|---|" + "---|---|---|" * len(args.batches))
    for v in args.variants:
        cells = []
        for b in args.batches:
            r = record["results"][str(b)][v]
            cells.append(f"{r['median_ms']:.2f} | " + " | ".join(
                "–" if x is None else f"×{x:.3f}" for x in (r["ratio_to_plain"], r["paired_ratio_to_plain"])))
        print(f"| {v} | " + " | ".join(cells) + " |")
    if "weight_norm" in args.variants:
        print("paired ×weight_norm, median [95% bootstrap interval]: " + "; ".join(
            f"batch {b} " + ", ".join(f"{v} ×{c['median']:.3f} [{c['low']:.3f}, {c['high']:.3f}]"
                                      for v in args.variants if v != "weight_norm"
                                      for c in [record["results"][str(b)][v]["paired_vs_weight_norm"]])
            for b in args.batches))
    if args.renorm:
        r = record["results"]["renorm"] = renorm_vs_step(args)
        print(f"renorm: renormalize_ {r['renorm_ms']:.3f} ms / optimizer step {r['step_ms']:.3f} ms = "
              f"×{r['ratio']:.3f} (paired ×{r['paired_ratio']:.3f}); the step with all of attach's hooks "
              f"{r['hooked_step_ms']:.3f} ms = paired ×{r['hooked_paired_ratio']:.3f} of the bare step")
    write_record(record, args.out)
    return record


if __name__ == "__main__":
    main()
