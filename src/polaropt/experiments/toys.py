"""The experiments' shared toy model: a bare weight tensor that polaropt can polarize."""

from __future__ import annotations

import torch
from torch import nn


class Weights(nn.Module):
    """A module holding one ``weight`` (a copy of ``w0``): the whole model of the toy problems.

    Sweeps put independent copies along dim 0 and polarize with ``batch_dims=1``.
    """

    def __init__(self, w0: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(w0.clone())
