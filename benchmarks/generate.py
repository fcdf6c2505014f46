"""Time of Hugging Face generate() on a small GPT-2 built from a config: plain, polarized (every weight formed at
every token) and polarized as polarize_model leaves it (generate under parametrize.cached(): every weight formed
once per call). Variants interleaved and rotated, median of repeats, ratios to plain. Needs transformers.

    python benchmarks/generate.py --layers 4 --width 256 --new-tokens 32 --batches 1 8 --repeats 15 \
        --out benchmarks/results/generate.json
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch

import polaropt as po
from records import new_record, time_interleaved, write_record


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--prompt", type=int, default=16, help="prompt tokens")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    for name in ("layers", "width", "vocab", "prompt", "new_tokens", "repeats"):
        if getattr(args, name) < 1 or min(args.batches) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} and --batches must be >= 1")
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging

    logging.set_verbosity_error()
    torch.manual_seed(0)
    config = GPT2Config(n_layer=args.layers, n_embd=args.width, n_head=max(1, args.width // 64), vocab_size=args.vocab,
                        n_positions=args.prompt + args.new_tokens, bos_token_id=0, eos_token_id=0)
    plain = GPT2LMHeadModel(config).eval()
    polar = copy.deepcopy(plain)
    po.polarize_model(polar, mode="absorb")
    generate = {"plain": plain.generate, "polar-cached": polar.generate,  # what polarize_model installs
                "polar-uncached": lambda **kw: type(polar).generate(polar, **kw)}
    record = new_record("generate", vars(args))
    for batch in args.batches:
        ids = torch.randint(1, args.vocab, (batch, args.prompt), generator=torch.Generator().manual_seed(batch))
        kw = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens,
                  min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)
        outs = {v: g(**kw) for v, g in generate.items()}  # warm-up, and the tokens each variant produces
        same = {v: bool(torch.equal(o, outs["plain"])) for v, o in outs.items()}
        times = time_interleaved({v: (lambda g=g: g(**kw)) for v, g in generate.items()}, repeats=args.repeats,
                                 calls=1, rotate=True)
        med = {v: statistics.median(t) for v, t in times.items()}
        paired = {v: statistics.median(a / b for a, b in zip(times[v], times["plain"])) for v in generate}
        record["results"][f"batch{batch}"] = {
            v: {"median_ms": 1e3 * med[v], "ratio_to_plain": med[v] / med["plain"], "paired_ratio": paired[v],
                "same_tokens_as_plain": same[v], "times_ms": [1e3 * t for t in times[v]]} for v in generate}
        for v in generate:
            print(f"batch {batch:<3} {v:<15} {1e3 * med[v]:9.1f} ms   ×{med[v] / med['plain']:.3f} of plain "
                  f"(paired ×{paired[v]:.3f})   same tokens: {same[v]}")
    write_record(record, args.out)
    return record


if __name__ == "__main__":
    main()
