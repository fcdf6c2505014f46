"""Scion's linear minimization oracles for the parameters that are not hidden matrices (Pethick, Xie,
Antonakopoulos, Zhu, Silveti-Falls, Cevher, "Training Deep Learning Models with Norm-Constrained LMOs",
arXiv:2502.07529; the reference is ``LIONS-EPFL/scion``'s ``scion.py``). Per parameter, with α Scion's
``momentum`` (one minus the usual one) and ρ the group's ``scale``:

    d ← (1 − α)·d + α·g,     W ← (1 − γ·λ)·W − γ·ρ·lmo(d)

(λ = 1 is Scion's constrained step, λ = 0 its unconstrained one). The oracles, one small function each:

- ``"sign"`` (the output head): sign(g)/d_in;
- ``"colnorm"`` (embeddings, stored vocab × d): each token's row scaled to RMS 1, g/(RMS of its row + ε);
- ``"bias_rms"`` (vectors: biases, norm gains): g/(RMS(g) + ε).

The hidden matrices' Spectral oracle is :class:`polaropt.Muon` with ``adjust_lr_fn="spectral"``
(the ``scion`` recipe); ``rest="scion"`` in :func:`polaropt.compose` puts everything else here.
"""

from __future__ import annotations

import math

import torch
from torch.optim import Optimizer

LMOS = ("sign", "colnorm", "bias_rms")
EPS = 1e-8  # the reference's, added to the RMS


def lmo_sign(g: torch.Tensor) -> torch.Tensor:
    """sign(g)/d_in for a d_out × d_in matrix (Scion's normalized ``Sign``)."""
    return torch.sign(g) / g.shape[1]


def lmo_colnorm(g: torch.Tensor) -> torch.Tensor:
    """Each row of a vocab × d embedding gradient divided by its RMS + ε (Scion's ``ColNorm(transpose=True)``:
    the columns of the d × vocab transpose). A zero row stays zero, in float16 too (where ε rounds to 0)."""
    rms = torch.linalg.vector_norm(g, dim=1, keepdim=True) / math.sqrt(g.shape[1])
    return g / (rms.clamp_min(torch.finfo(g.dtype).tiny) + EPS)


def lmo_bias_rms(g: torch.Tensor) -> torch.Tensor:
    """g/(RMS(g) + ε) for a vector (Scion's ``BiasRMS``); a zero vector stays zero, in float16 too."""
    return g / (g.square().mean(dim=0, keepdim=True).sqrt().clamp_min(torch.finfo(g.dtype).tiny) + EPS)


LMO = {"sign": lmo_sign, "colnorm": lmo_colnorm, "bias_rms": lmo_bias_rms}


def check_group(momentum, norm: str | None = None, **nonnegative) -> None:
    """Refuse a Scion option, naming it and what it may be: ``momentum`` α in (0, 1], ``norm`` (when given) one of
    :data:`LMOS`, the others (lr, scales, weight decay) finite numbers ≥ 0."""
    if norm is not None and norm not in LMOS:
        raise ValueError(f"unknown Scion norm {norm!r}; valid choices are {', '.join(map(repr, LMOS))}")
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 < momentum <= 1:
        raise ValueError(f"Scion's momentum α must be a number in (0, 1] (d ← (1 − α)d + αg), got {momentum!r}")
    for key, value in nonnegative.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise ValueError(f"Scion's {key} must be a finite number >= 0, got {value!r}")


class ScionLMO(Optimizer):
    """Scion's step with the oracle of each param group's ``norm`` (:data:`LMOS`): ``lr`` γ, ``scale`` ρ,
    ``momentum`` α (1: no averaging, no state), ``weight_decay`` λ (1: Scion's constrained step). A ``"sign"``
    or ``"colnorm"`` parameter must be a matrix, a ``"bias_rms"`` one a vector; a bad option or shape is
    refused, naming it and the valid choices."""

    def __init__(self, params, lr: float = 1e-3, *, norm: str = "bias_rms", scale: float = 1.0,
                 momentum: float = 1.0, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, norm=norm, scale=scale, momentum=momentum, weight_decay=weight_decay))

    def add_param_group(self, param_group: dict) -> None:
        """Checked before it is added: a refused group leaves the optimizer as it was."""
        params = param_group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        group = {**self.defaults, **param_group}
        check_group(group["momentum"], group["norm"], lr=group["lr"], scale=group["scale"],
                    weight_decay=group["weight_decay"])
        want = 1 if group["norm"] == "bias_rms" else 2
        for p in params:
            if p.ndim != want:
                raise ValueError(f"Scion's {group['norm']!r} oracle takes {'vectors' if want == 1 else 'matrices'}, "
                                 f"got a parameter of shape {tuple(p.shape)}")
        super().add_param_group({**param_group, "params": params})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lmo, alpha = LMO[group["norm"]], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if alpha != 1:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    d = state["momentum_buffer"].mul_(1 - alpha).add_(d, alpha=alpha)
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.sub_(lmo(d), alpha=group["lr"] * group["scale"])
        return loss
