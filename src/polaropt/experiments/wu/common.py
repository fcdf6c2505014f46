"""What the Wu experiments share: the source, the three methods, random least-squares problems and the
builder that trains every (draw, setting) of a sweep as one tensor program.

Over-parametrized least squares ``min ½‖Ax − y‖²`` (A: m×d, m < d) solved three ways:

- GD: a plain parameter x and ``torch.optim.SGD``;
- WN: ``polarize(mode="normalize")``, x = g·w/‖w‖ (the source's Algorithm 1);
- rPGD: ``polarize(mode="project")`` + ``attach``, x = g·w with w renormalized after every step
  (Algorithm 2).

The step on g is ``c`` times the step on w (``param_groups(scale={"lr": c·η}, direction={"lr": η})``,
the source's Condition 2.1). Sweeps are one tensor program: every (draw, setting) is a copy along
``batch_dims=1``; where a setting changes the step ratio per copy (``wu-flow-limit``) a gradient hook
on the scale multiplies its gradient by that copy's c, and where the step on w is 1/g² per copy
(``wu-two-stage``, Condition 3.1) a hook on the direction divides its gradient by g². The closed forms
come from :mod:`polaropt.experiments.theory` (derived in shared/notes/seed-findings.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

import polaropt as po

from .. import theory
from ..records import by
from ..toys import Weights

SRC = "002 Wu et al. 2020"
NOTES = "polaropt's own derivation from Wu et al. 2020 (the WN flow's closed form, checked numerically)"
SOURCES = ("002_3dce160b64f5f734.txt",)
METHODS = ("gd", "wn", "rpgd")
LABELS = {"gd": "GD", "wn": "WN (normalize)", "rpgd": "rPGD (project)", "flow": "WN flow (theory)"}
SHORT = {"gd": "GD", "wn": "WN", "rpgd": "rPGD"}
DIRECTION = {"wn": "normalize", "rpgd": "project"}


def gaussian_problems(m: int, d: int, draws: int, seed: int):
    """``draws`` problems: A with i.i.d. N(0, 1/m) entries, y ~ N(0, I_m), float64; and their x†, P⊥."""
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(draws, m, d, generator=gen, dtype=torch.float64) / math.sqrt(m)
    y = torch.randn(draws, m, generator=gen, dtype=torch.float64)
    x_dag = torch.tensor(np.stack([theory.min_l2_solution(a, b) for a, b in zip(A.numpy(), y.numpy())]))
    P = torch.tensor(np.stack([theory.null_projector(a) for a in A.numpy()]))
    return A, y, x_dag, P, gen


def residual_loss(A, y, x):
    """½‖A_k x_k − y_k‖² per copy k."""
    return 0.5 * (torch.einsum("kmd,kd->km", A, x) - y).square().sum(-1)


def build(x0: torch.Tensor, methods, *, eta: float, c: float | torch.Tensor, step: torch.Tensor | None = None,
          w0_norm: torch.Tensor | None = None):
    """The methods' models (one ModuleDict, copies along dim 0) and one SGD over all of them.

    Per-copy settings without per-copy param groups (plain SGD's step is lr·gradient, so a gradient
    hook that multiplies copy k's gradient by f_k is exactly a step f_k·lr for that copy):
    ``c`` may be a tensor [copies] (the ratio γ/η of each copy), ``step`` a tensor [copies] of
    step-size multipliers (on g, w and GD's x alike), and ``w0_norm`` [copies] scales WN's initial
    w (W is unchanged: WN divides by ‖w‖; rPGD keeps ‖w‖ = 1 by construction).
    """
    model = nn.ModuleDict({m: Weights(x0) for m in methods})
    for m in methods:
        if m in DIRECTION:
            po.polarize(model[m], "weight", scale="tensor", mode=DIRECTION[m], batch_dims=1)
    per_copy_c = torch.is_tensor(c)
    opt = torch.optim.SGD(po.param_groups(model, scale={"lr": eta * (1.0 if per_copy_c else c)},
                                          direction={"lr": eta}), lr=eta)
    f_scale = (c if per_copy_c else torch.ones(len(x0), dtype=x0.dtype)) * (1 if step is None else step)
    for m in methods:
        if m in DIRECTION:
            if per_copy_c or step is not None:
                po.scale_of(model[m]).register_hook(lambda grad: grad * f_scale.view(-1, 1))
            if step is not None:
                po.direction_of(model[m]).register_hook(lambda grad: grad * step.view(-1, 1))
        elif step is not None:
            model[m].weight.register_hook(lambda grad: grad * step.view(-1, 1))
    if w0_norm is not None and "wn" in methods:
        with torch.no_grad():
            po.direction_of(model["wn"]).mul_(w0_norm.view(-1, 1))
    po.attach(opt, model)  # rPGD's projection after every step (WN and GD have nothing to renormalize)
    return model, opt


def close_range(dist: dict, gstar: dict, frac: float) -> float:
    """The largest ‖x0‖ up to which every grid point's mean distance is ≤ frac·mean ‖x†‖ (0 if none);
    ``dist`` and ``gstar`` map ‖x0‖ to arrays over draws."""
    best = 0.0
    for n in sorted(dist):
        if dist[n].mean() <= frac * gstar[n].mean():
            best = n
        else:
            break
    return best


# ---- a sweep of per-copy settings, one method at a time (wu-flow-limit) ----------------------------

@dataclass(frozen=True)
class Setting:
    """One copy: the flow's g0, c and ‖w0‖, the problem drawn, and the multiplier of eta it steps with."""
    g0: float
    c: float
    w0_norm: float
    draw: int
    step: float


@dataclass
class Copies:
    """One method's copies trained side by side: its polarized module, its SGD, and each copy's problem."""
    group: str
    method: str
    module: nn.Module
    opt: torch.optim.Optimizer
    A: torch.Tensor
    y: torch.Tensor
    P: torch.Tensor
    settings: list[Setting]


def column(settings: list[Setting], name: str) -> torch.Tensor:
    """One field of every copy's setting, as a tensor [copies]."""
    return torch.tensor([getattr(s, name) for s in settings], dtype=torch.float64)


def copies(group, method, x0, A, y, P, settings: list[Setting], eta: float) -> Copies:
    """Build one method's copies. WN's direction moves at η/‖w0‖², so a copy with ‖w0‖ > 1 steps at
    f·‖w0‖²·η (on w and, with ratio c, on g) to keep up: the flow's limit depends on c and ‖w0‖ only, not
    on the clock. (The example's copies have c = ‖w0‖ = 1: the factors are exactly 1.)"""
    wn = column(settings, "w0_norm")
    model, opt = build(x0, (method,), eta=eta, c=column(settings, "c"),
                       step=column(settings, "step") * wn.clamp_min(1) ** 2, w0_norm=wn)
    return Copies(group, method, model[method], opt, A, y, P, settings)


def split_probe(records, probe: str = "far") -> tuple[list[dict], list[dict]]:
    """The grid's records, and those of ``probe``: ``"far"`` (the larger ‖x0‖ run beside the grid) or
    ``"one-problem"`` (one (A, y) and every draw's w0, the figure's likely error bars)."""
    return [r for r in records if not r.get("probe")], [r for r in records if r.get("probe") == probe]


def paired_lower_bound(records, field: str, a: str, b: str, x0_norm: float) -> float:
    """The 95% lower bound (Student's t) of method ``a``'s ``field`` minus ``b``'s, paired by draw at ``x0_norm``."""
    from scipy import stats

    pts = by(records, ("method", "x0_norm", "draw"), field, kind="point")
    d = np.asarray([v - pts[(b, n, k)] for (m, n, k), v in pts.items() if m == a and n == x0_norm and (b, n, k) in pts])
    return float(d.mean() - stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
