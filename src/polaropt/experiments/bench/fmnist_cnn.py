"""bench-fmnist-cnn: every recipe on Fashion-MNIST with a small CNN (two 3×3 conv layers, max-pooling, a hidden Linear), each at its own best lr."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..framework import Experiment, param
from . import analysis
from .common import BenchConfig, run_task
from .data import FASHION_MNIST_DIR

NAME = "fmnist-cnn"


@dataclass(frozen=True)
class Config(BenchConfig):
    data_dir: str = param(FASHION_MNIST_DIR, "folder holding Fashion-MNIST's four idx files (.gz or not)")


QUICK = Config(lrs=(3e-4, 1e-3, 3e-3, 1e-2), steps=20, width=4, batch=16, evals=2, seeds=2, time_rounds=2, time_steps=2, workers=1)


def run(cfg: Config, progress) -> list[dict]:
    return run_task(NAME, cfg, progress)


EXPERIMENT = Experiment(
    name=f"bench-{NAME}", folder=f"bench/{NAME}",
    description="Benchmark: every recipe on Fashion-MNIST, a small CNN (two 3×3 conv layers, max-pooling, a hidden Linear) (lr search, seeds, step time)",
    sources=("000_cf93c4077b34771f.txt", "002_3dce160b64f5f734.txt"), config=Config, quick=QUICK, run=run,
    claims=lambda records, cfg: analysis.claims(records, cfg, NAME),
    figures=lambda records, cfg, out: analysis.figures(records, cfg, out, NAME),
    details=lambda records, cfg: analysis.details(records, cfg, NAME),
    notes=Path(__file__).with_name("bench.md"), key_figure="curves.png")
