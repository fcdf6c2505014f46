"""bench-charlm: every recipe on a GPT-style character model of the King James Bible (tied embedding/head)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..framework import Experiment
from . import analysis
from .common import BenchConfig, run_task

NAME = "charlm"


@dataclass(frozen=True)
class Config(BenchConfig):
    pass


QUICK = Config(lrs=(3e-4, 1e-3, 3e-3, 1e-2), steps=20, width=16, batch=8, evals=2, seeds=2, time_rounds=2, time_steps=2, workers=1)


def run(cfg: Config, progress) -> list[dict]:
    return run_task(NAME, cfg, progress)


EXPERIMENT = Experiment(
    name=f"bench-{NAME}", folder=f"bench/{NAME}",
    description="Benchmark: every recipe on a char-level GPT (fused qkv, tied head) of the King James Bible",
    sources=("000_cf93c4077b34771f.txt", "002_3dce160b64f5f734.txt"), config=Config, quick=QUICK, run=run,
    claims=lambda records, cfg: analysis.claims(records, cfg, NAME),
    figures=lambda records, cfg, out: analysis.figures(records, cfg, out, NAME),
    details=lambda records, cfg: analysis.details(records, cfg, NAME),
    notes=Path(__file__).with_name("bench.md"), key_figure="curves.png")
