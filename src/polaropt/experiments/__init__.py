"""The reproduction suite: one module per source; importing this package registers them all."""

from . import liu  # noqa: F401  (registers the Liu experiments)
from .framework import EXPERIMENTS, Claim, Experiment, get_experiment, make_config
from .runner import reproduce, run_experiment

__all__ = ["EXPERIMENTS", "Claim", "Experiment", "get_experiment", "make_config", "reproduce", "run_experiment"]
