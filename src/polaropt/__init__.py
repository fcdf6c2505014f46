"""polaropt: train neural networks whose weights are written in polar form, W = s ⊙ Ŵ.

    >>> import torch, polaropt as po
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> po.polarize_model(model, scale="row", mode="absorb")
    ['0.weight', '2.weight']
    >>> opt = torch.optim.AdamW(po.param_groups(model, weight_decay=0.1), lr=1e-2)
    >>> handle = po.attach(opt, model, state="keep")
"""

from .checkpoint import load_plain_state_dict, plain_state_dict
from .groups import ROLES, RadiusSquaredLR, TwoStageLR, param_groups
from .models import polarize_model, reinitialize_, unpolarize_model
from .polar import (
    INITS,
    MODES,
    Polar,
    PolarTensor,
    decode_settings,
    direction_of,
    is_polarized,
    polar_spec,
    polar_tensors,
    polarize,
    scale_of,
    unpolarize,
)
from .recipes import DIRECTIONS, NAMED, RADIALS, RECIPES, RecipeOptimizer, compose, hidden_matrices, recipe
from .renorm import renormalize_
from .slices import SCALES
from .diagnostics import UpdateStats
from .hyperball import HyperballAdamW
from .lion import Lion
from .muon import Muon
from .orthogonalize import orthogonalize
from .scion import ScionLMO
from .steepest import NORMS, SteepestDescent, steepest_step
from .steps import attach, check_finite
from .transport import STATES

__version__ = "0.3.0"

__all__ = [
    "INITS",
    "MODES",
    "NORMS",
    "RECIPES",
    "ROLES",
    "SCALES",
    "STATES",
    "DIRECTIONS",
    "Lion",
    "HyperballAdamW",
    "ScionLMO",
    "UpdateStats",
    "Muon",
    "NAMED",
    "RADIALS",
    "compose",
    "SteepestDescent",
    "orthogonalize",
    "Polar",
    "PolarTensor",
    "RadiusSquaredLR",
    "RecipeOptimizer",
    "TwoStageLR",
    "attach",
    "check_finite",
    "decode_settings",
    "direction_of",
    "is_polarized",
    "load_plain_state_dict",
    "param_groups",
    "plain_state_dict",
    "polar_spec",
    "polar_tensors",
    "polarize",
    "polarize_model",
    "hidden_matrices",
    "recipe",
    "reinitialize_",
    "renormalize_",
    "scale_of",
    "steepest_step",
    "unpolarize",
    "unpolarize_model",
    "__version__",
]
