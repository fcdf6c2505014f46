"""The registry of polar cases the tests cross with identities (STYLE.md habit 5)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
import torch

SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class Case:
    scale: str
    mode: str
    trainable_scale: bool = True
    init: str = "norm"

    @property
    def id(self) -> str:
        return f"{self.scale}-{self.mode}-{'train' if self.trainable_scale else 'fixed'}-{self.init}"

    def kwargs(self) -> dict:
        return dict(scale=self.scale, mode=self.mode, trainable_scale=self.trainable_scale, init=self.init)


def _valid(scale, mode, init) -> bool:
    return not (mode == "normalize" and (scale == "element" or init == "one"))


CASES = [Case(s, d, t, i) for s, d, t, i in itertools.product(
    ("tensor", "row", "column", "element"), ("free", "normalize", "project", "absorb"), (True, False), ("norm", "one"))
    if _valid(s, d, i)]
RENORM_CASES = [c for c in CASES if c.mode in ("project", "absorb")]


def case_params(cases):
    return pytest.mark.parametrize("case", cases, ids=[c.id for c in cases])


def make_optimizer(name: str, params, lr: float = 1e-2):
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.1, amsgrad=True)
    raise ValueError(name)


OPTIMIZERS = ("sgd", "adam", "adamw")
