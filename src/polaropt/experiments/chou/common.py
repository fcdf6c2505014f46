"""What chou-sparse's run and its claims share: the sparse-recovery problem, the diagonal linear network,
GD and polar WN trained side by side, and the quantities read back from the records."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

import polaropt as po

from ..records import select
from ..toys import Weights
from ..training import train

SRC = "003 Chou, Rauhut, Ward 2023"


def problem(cfg):
    """A with N(0, 1/M) entries, a ``cfg.sparsity``-sparse x* with entries ±[0.5, 1.5], y = Ax*."""
    gen = torch.Generator().manual_seed(cfg.seed)
    A = torch.randn(cfg.m, cfg.n, generator=gen, dtype=torch.float64) / math.sqrt(cfg.m)
    x_star = torch.zeros(cfg.n, dtype=torch.float64)
    support = torch.randperm(cfg.n, generator=gen)[:cfg.sparsity]
    signs = torch.sign(torch.randn(cfg.sparsity, generator=gen, dtype=torch.float64))
    x_star[support] = signs * (0.5 + torch.rand(cfg.sparsity, generator=gen, dtype=torch.float64))
    return A, x_star, A @ x_star


def dln_output(W: torch.Tensor) -> torch.Tensor:
    """x = w₊⊙w₊ − w₋⊙w₋ (depth 2) for every copy."""
    return W[:, 0].square() - W[:, 1].square()


def step_size(lr: float, lam: float, alpha: torch.Tensor) -> torch.Tensor:
    """One stable step in w-units per copy: the loss's curvature in w grows with w² ~ max(α², |x|) (|x*| ≤ 1.5)."""
    return lr / (lam * torch.clamp(alpha**2, min=1.0))


def balanced(alpha: torch.Tensor, n: int) -> torch.Tensor:
    """w₊ = w₋ = α·1 for every copy: [copies, 2, n]."""
    return alpha[:, None, None] * torch.ones(len(alpha), 2, n, dtype=torch.float64)


@dataclass(frozen=True)
class Trained:
    weights: dict  # method -> the final w, [copies, 2, N]
    hits: dict  # method -> the first step at which each copy's loss was below cfg.converged_loss (-1: never)
    logs: dict  # method -> the logged losses, [logged steps, copies]
    log_steps: list  # the logged steps
    r0: torch.Tensor  # WN's radius at the start, per copy
    r_end: torch.Tensor  # and at the end
    diverged: dict  # method -> whether each copy diverged (and was frozen)


def train_gd_wn(cfg, A, y, alpha: dict, wn_ratio: torch.Tensor, progress, lr: dict | None = None) -> Trained:
    """GD (one copy per α) and WN (one copy per (α, c)) side by side, ``cfg.steps`` steps of ½‖Ax − y‖².

    Per-copy steps as gradient factors (plain SGD: a gradient factor is a step factor). GD: a fixed step. WN: u
    takes f·∂L/∂u and r takes c·f·∂L/∂r, with one factor f per copy and step — a common change of clock, which
    keeps the ratio c, the flow's path and its magnification factor. f = lr/r² moves w = r·u/‖u‖ like GD's w;
    while r is small its own relative speed c·f·|∂L/∂r|/r is what limits the step, so f is capped to keep that
    below 0.1 (the flow is stiff there, not the method).

    ``lr``: method -> each copy's lr (default: ``cfg.lr`` for all). A copy whose loss passes 1e6 times its start
    (or turns non-finite) diverged: it is frozen where it is (its gradient masked to 0) and never converges;
    a copy at ``cfg.lr`` diverging stops the run, as that step is the experiment's stable one.
    """
    lam = float(torch.linalg.eigvalsh(A @ A.T).max())
    lr = lr or {k: torch.full_like(a, cfg.lr) for k, a in alpha.items()}
    gd_lr, wn_lr = step_size(lr["gd"], lam, alpha["gd"]), step_size(lr["wn"], lam, alpha["wn"])
    models = {"gd": Weights(balanced(alpha["gd"], cfg.n)), "wn": Weights(balanced(alpha["wn"], cfg.n))}
    po.polarize(models["wn"], "weight", scale="tensor", mode="normalize", batch_dims=1)
    r, u = po.scale_of(models["wn"]), po.direction_of(models["wn"])
    r0 = r.detach().reshape(-1).clone()
    alive = {k: torch.ones(len(a), dtype=torch.bool) for k, a in alpha.items()}  # False: diverged, frozen
    models["gd"].weight.register_hook(lambda g: torch.where(alive["gd"].view(-1, 1, 1), g * gd_lr.view(-1, 1, 1), 0.0))
    opt = torch.optim.SGD([models["gd"].weight, r, u], lr=1.0)

    def wn_clock(*_):  # a step pre-hook: runs inside opt.step(), after backward and before the update
        rv, gr = r.detach().reshape(-1), r.grad.reshape(-1)
        f = torch.minimum(wn_lr / rv.square(), 0.1 * rv / (wn_ratio * gr.abs()).clamp_min(1e-300))
        keep = alive["wn"]
        u.grad.copy_(torch.where(keep.view(-1, 1, 1), u.grad * f.view(-1, 1, 1), 0.0))
        r.grad.copy_(torch.where(keep, r.grad.reshape(-1) * wn_ratio * f, 0.0).view(r.grad.shape))

    opt.register_step_pre_hook(wn_clock)
    hits = {k: torch.full((len(a),), -1, dtype=torch.long) for k, a in alpha.items()}
    start = {}
    logs = {k: [] for k in models}
    log_steps = []

    def loss_at(t):
        logged = t % cfg.log_every == 0 or t == cfg.steps
        total = 0
        for k, mod in models.items():
            loss = 0.5 * (dln_output(mod.weight) @ A.T - y).square().sum(-1)
            d = start.setdefault(k, loss.detach()) if t == 0 else loss.detach()
            gone = alive[k] & ~(d <= 1e6 * start[k])  # NaN counts as gone
            if gone.any():
                if (lr[k][gone] == cfg.lr).any():
                    raise FloatingPointError(f"chou-sparse diverged at step {t}; lower --set lr (now {cfg.lr})")
                alive[k] &= ~gone
            loss = torch.where(alive[k], loss, 0.0)  # a frozen copy gets no gradient
            hits[k][(d < cfg.converged_loss) & alive[k] & (hits[k] < 0)] = t
            if logged:
                logs[k].append(d.clone())
            total = total + loss.sum()
        if logged:
            log_steps.append(t)
        return total

    train(loss_at, opt, cfg.steps, progress=progress, desc="chou-sparse")
    with torch.no_grad():
        weights = {k: mod.weight.detach() for k, mod in models.items()}
    return Trained(weights=weights, hits=hits, logs={k: torch.stack(v) for k, v in logs.items()},
                   log_steps=log_steps, r0=r0, r_end=r.detach().reshape(-1),
                   diverged={k: ~a for k, a in alive.items()})


# ---- reading the records -------------------------------------------------------------------------

def log_magnification(p) -> float:
    """2·ln ρ = 2·ln(r0/r∞) + (r∞² − r0²)/c, from one WN record."""
    return 2 * math.log(p["r0"] / p["r_end"]) + (p["r_end"] ** 2 - p["r0"] ** 2) / p["ratio"]


def rel_err(p) -> float:
    """‖x̂ − x_ℓ1‖ / ‖x_ℓ1‖ of one run."""
    return p["err_l1"] / p["norm_l1"]


def steps_to(p) -> int | None:
    """The step at which the run first reached the converged loss (None: never; the record says -1)."""
    return None if p["steps_to_converged"] < 0 else p["steps_to_converged"]


def runs(records):
    """GD's points sorted by α, and WN's points in run order, at the experiment's step (the step sweep apart)."""
    base = [p for p in select(records, "point") if "sweep" not in p]
    return sorted((p for p in base if p["method"] == "gd"), key=lambda p: p["alpha"]), \
        [p for p in base if p["method"] == "wn"]


def fastest(points, method: str, alpha: float, converged_loss: float):
    """The run of ``method`` at ``alpha`` that converged in the fewest steps and ended converged (a run that
    reached the loss and then left it does not count); None: none did."""
    done = [p for p in points if p["method"] == method and p["alpha"] == alpha and steps_to(p) is not None
            and p["loss"] <= converged_loss]
    return min(done, key=steps_to, default=None)


def alpha_c(gd, n: int) -> float:
    """The α at which r0² = 2Nα² reaches ‖x_ℓ1‖₁ (below it r must grow)."""
    return math.sqrt(gd[0]["l1_of_x_l1"] / (2 * n))


def best_wn(wn, alpha: float, *, converged_below: float | None = None):
    """The most accurate WN run at ``alpha`` (only converged ones when ``converged_below`` is given)."""
    cands = [p for p in wn if p["alpha"] == alpha and (converged_below is None or p["loss"] <= converged_below)]
    return min(cands, key=rel_err, default=None)
