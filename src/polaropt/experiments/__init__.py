"""The reproduction suite: one module per source; importing this package registers them all."""

from . import chou, cs182, liu, wu  # noqa: F401  (importing a source's module registers its experiments)
from .framework import EXPERIMENTS, Claim, Experiment, get_experiment, make_config
from .runner import reproduce, run_experiment

__all__ = ["EXPERIMENTS", "Claim", "Experiment", "get_experiment", "make_config", "reproduce", "run_experiment"]
