"""bench-fmnist-cnn: every recipe on Fashion-MNIST with a small CNN (two 3×3 conv layers, max-pooling, a
hidden Linear), each at its own best lr."""

from __future__ import annotations

from dataclasses import dataclass

from ..framework import param
from . import analysis
from .common import BenchConfig, run_task
from .data import FASHION_MNIST_DIR

NAME = "fmnist-cnn"


@dataclass(frozen=True)
class Config(BenchConfig):
    data_dir: str = param(FASHION_MNIST_DIR, "folder holding Fashion-MNIST's four idx files (.gz or not)")


QUICK = Config(lrs=(1e-3, 3.162e-3, 1e-2), max_extend=0, early=0.5, steps=20, width=4, batch=16, evals=4,
               seeds=2, time_rounds=2, time_steps=2, workers=1)


def run(cfg: Config, progress) -> list[dict]:
    return run_task(NAME, cfg, progress)


EXPERIMENT = analysis.experiment(
    NAME, "Benchmark: the recipes on Fashion-MNIST, a small CNN (2 conv layers, max-pooling, a hidden Linear)",
    Config, QUICK, run)
