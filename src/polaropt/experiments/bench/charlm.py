"""bench-charlm: every recipe on a GPT-style character model of the King James Bible (tied embedding/head)."""

from __future__ import annotations

from dataclasses import dataclass

from . import analysis
from .common import BenchConfig, run_task

NAME = "charlm"


@dataclass(frozen=True)
class Config(BenchConfig):
    pass


QUICK = Config(lrs=(1e-3, 3.162e-3, 1e-2), max_extend=0, early=0.5, steps=20, width=16, batch=8, evals=4,
               seeds=2, time_rounds=2, time_steps=2, workers=1)


def run(cfg: Config, progress) -> list[dict]:
    return run_task(NAME, cfg, progress)


EXPERIMENT = analysis.experiment(
    NAME, "Benchmark: the recipes on a char-level GPT (fused qkv, tied head) of the King James Bible",
    Config, QUICK, run)
