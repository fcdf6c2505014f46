"""polaropt: train neural networks whose weights are written in polar form, W = s ⊙ Ŵ.

    >>> import torch, polaropt as po
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> for layer in (model[0], model[2]):
    ...     _ = po.polarize(layer, "weight", scale="row", direction="absorb")
    >>> opt = torch.optim.Adam(po.param_groups(model, scale={"lr": 1e-3}), lr=1e-2)
    >>> handle = po.attach(opt, model, state="keep")
"""

from .groups import ROLES, RadiusSquaredLR, TwoStageLR, param_groups
from .polar import (
    DIRECTIONS,
    INITS,
    Polar,
    PolarTensor,
    direction_of,
    is_polarized,
    polar_spec,
    polar_tensors,
    polarize,
    scale_of,
    unpolarize,
)
from .renorm import attach, renormalize_
from .slices import SCALES
from .steepest import NORMS, SteepestDescent, steepest_step
from .transport import STATES

__version__ = "0.1.0"

__all__ = [
    "DIRECTIONS",
    "INITS",
    "NORMS",
    "ROLES",
    "SCALES",
    "STATES",
    "SteepestDescent",
    "Polar",
    "PolarTensor",
    "RadiusSquaredLR",
    "TwoStageLR",
    "attach",
    "direction_of",
    "is_polarized",
    "param_groups",
    "polar_spec",
    "polar_tensors",
    "polarize",
    "renormalize_",
    "scale_of",
    "steepest_step",
    "unpolarize",
    "__version__",
]
