"""The suite's experiments, in the order ``polaropt reproduce`` runs them, and the benchmark's tasks, in
the order ``polaropt bench`` runs them: two explicit lists."""

from __future__ import annotations

from .bench import charlm, fmnist_cnn, fmnist_mlp
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
BENCHMARKS: dict[str, Experiment] = {e.name: e for e in (
    fmnist_mlp.EXPERIMENT, fmnist_cnn.EXPERIMENT, charlm.EXPERIMENT,
)}
ALL: dict[str, Experiment] = {**EXPERIMENTS, **BENCHMARKS}  # what `polaropt run`, `report` and the index know


def get_experiment(name: str) -> Experiment:
    if name not in ALL:
        raise ValueError(f"unknown experiment {name!r}; valid choices are {', '.join(sorted(ALL))}")
    return ALL[name]
