"""The suite's experiments, in the order ``polaropt reproduce`` runs them: one explicit list."""

from __future__ import annotations

from .chou import sparse
from .cs182 import implicit_bias, rms
from .framework import Experiment
from .liu import far_target, linreg, one_d, scaling
from .wu import flow_limit, overparam, two_stage

EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    far_target.EXPERIMENT, one_d.EXPERIMENT, scaling.EXPERIMENT, linreg.EXPERIMENT,
    overparam.EXPERIMENT, flow_limit.EXPERIMENT, two_stage.EXPERIMENT,
    sparse.EXPERIMENT,
    implicit_bias.EXPERIMENT, rms.EXPERIMENT,
)}


def get_experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; valid choices are {', '.join(sorted(EXPERIMENTS))}")
    return EXPERIMENTS[name]
