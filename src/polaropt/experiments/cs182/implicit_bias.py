"""cs182-implicit-bias: [1, 0.1, 0.01]·θ = 1 from θ = 0 (CS182 004, problem 3) with gradient descent
(``SteepestDescent`` with ``norm="l2"``), sign descent with a diminishing and a constant step (SGD on the sign
of the gradient), steepest descent under ℓ∞ (``norm="linf"``) and Adam; then random under-determined systems,
where each optimizer's limit shows its implicit bias."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import theory
from ..framework import Check, Claim, Experiment, param
from ..records import by, select
from .common import LABELS, SRC, train

SRC3 = SRC + ", problem 3"


@dataclass(frozen=True)
class Config:
    a: tuple[float, ...] = param((1.0, 0.1, 0.01), "the toy's single row a: aᵀθ = 1")
    steps: int = param(3000, "steps on the toy")
    gd_lr: float = param(0.5, "SteepestDescent l2's lr (the step is −(lr/2)·g)")
    linf_lr: float = param(0.2, "SteepestDescent linf's lr")
    sign_lr: float = param(0.1, "η0 of the sign-descent schedule η0/(t+1)^p (and the constant step)")
    sign_power: float = param(0.6, "p of the sign-descent schedule η0/(t+1)^p")
    adam_lr: float = param(0.01, "Adam's lr η (decayed as η/√(1 + t/100))")
    m: int = param(10, "rows of the random under-determined systems")
    d: int = param(40, "columns of the random systems")
    draws: int = param(10, "random systems")
    random_steps: int = param(3000, "steps on each random system")
    seed: int = param(0, "seed of the random systems")
    exact_tol: float = param(1e-8, "limits exact up to rounding (GD's and ℓ∞'s on the toy, GD's relative gap to x†)")
    adam_tol: float = param(1e-3, "Adam's distance to [1, 1, 1]/Σa (its ε = 1e-8 perturbs the equal moves slightly)")
    tail_steps: int = param(100, "the constant-step sign descent's loss is judged over this many last steps")
    converged_loss: float = param(1e-3, "sign-based runs on the random systems end at this loss or below (a residual "
                                        "≤ 0.03, small against the norms compared)")

    def validate(self):
        if len(self.a) < 2 or not any(self.a):
            raise ValueError(f"a needs at least 2 entries, not all zero, got {self.a}")
        if min(self.gd_lr, self.linf_lr, self.sign_lr, self.adam_lr) <= 0 or not (0 < self.sign_power <= 1):
            raise ValueError(f"learning rates must be > 0 and sign_power in (0, 1] (Σ steps must diverge), got "
                             f"{self.gd_lr}, {self.linf_lr}, {self.sign_lr}, {self.adam_lr}, p={self.sign_power}")
        if not (0 < self.m < self.d) or self.draws < 1 or self.steps < 1 or self.random_steps < 1:
            raise ValueError(f"need 0 < m < d, draws >= 1, steps >= 1; got m={self.m}, d={self.d}, "
                             f"draws={self.draws}, steps={self.steps}, random_steps={self.random_steps}")
        if not (1 <= self.tail_steps <= self.steps) or min(self.exact_tol, self.adam_tol, self.converged_loss) <= 0:
            raise ValueError(f"need 1 <= tail_steps <= steps and positive tolerances, got tail_steps={self.tail_steps}")


QUICK = Config(steps=2000, draws=3, random_steps=1500)


def run(cfg: Config, progress) -> list[dict]:
    records = []
    a = torch.tensor([cfg.a], dtype=torch.float64)
    out = train(a[None], torch.ones(1, 1, dtype=torch.float64), ("gd", "sign", "sign_const", "linf", "adam"), cfg,
                cfg.steps)
    for m, (theta, loss) in out.items():
        records.append({"kind": "point", "problem": "toy", "method": m, "draw": 0, "theta": theta[0].tolist()})
        records.append({"kind": "curve", "problem": "toy", "method": m, "metric": "loss", "draw": 0,
                        "step": list(range(cfg.steps + 1)), "value": loss[:, 0].tolist()})
    gen = torch.Generator().manual_seed(cfg.seed)
    A = torch.randn(cfg.draws, cfg.m, cfg.d, generator=gen, dtype=torch.float64) / math.sqrt(cfg.m)
    y = torch.randn(cfg.draws, cfg.m, generator=gen, dtype=torch.float64)
    # the l2 step must stay below 2/λmax of the loss's Hessian 2AᵀA: lr/2 < 1/λmax(AᵀA); same for ℓ∞ over d
    lam = float(torch.linalg.eigvalsh(A @ A.mT).max())
    cfg_r = dataclasses.replace(cfg, gd_lr=1.0 / lam, linf_lr=0.5 / (lam * cfg.d))
    out = train(A, y, ("gd", "sign", "linf", "adam"), cfg_r, cfg.random_steps)
    for k in range(cfg.draws):
        An, yn = A[k].numpy(), y[k].numpy()
        x_l2, x_inf = theory.min_l2_solution(An, yn), theory.min_linf_solution(An, yn)
        for m, (theta, loss) in out.items():
            t = theta[k].numpy()
            records.append({"kind": "point", "problem": "random", "method": m, "draw": k, "theta": t.tolist(),
                            "loss": float(loss[-1, k]), "norm2": float(np.linalg.norm(t)),
                            "norm_inf": float(np.abs(t).max()), "dist_l2_solution": float(np.linalg.norm(t - x_l2)),
                            "min_norm2": float(np.linalg.norm(x_l2)), "min_norm_inf": float(np.abs(x_inf).max()),
                            "min_l2_norm_inf": float(np.abs(x_l2).max()),
                            "at_max": float(np.mean(np.abs(t) >= 0.95 * np.abs(t).max())),
                            "min_l2_at_max": float(np.mean(np.abs(x_l2) >= 0.95 * np.abs(x_l2).max()))})
    return records


def vec(v) -> str:
    return "[" + ", ".join(f"{x:.6f}" for x in v) + "]"


def claims(records, cfg: Config) -> list[Claim]:
    a = np.asarray(cfg.a)
    toy = {m: np.asarray(t) for m, t in by(records, "method", field="theta", kind="point", problem="toy").items()}
    loss = {m: np.asarray(v) for m, v in by(records, "method", kind="curve", problem="toy").items()}
    gd_target, sign_target = a / (a @ a), np.ones_like(a) / a.sum()
    gap = {m: float(np.linalg.norm(toy[m] - (gd_target if m == "gd" else sign_target))) for m in toy}
    last_step = cfg.sign_lr * cfg.steps ** -cfg.sign_power
    tail, floor = float(loss["sign_const"][-cfg.tail_steps:].max()), (0.5 * a.sum() * cfg.sign_lr) ** 2
    out = [
        Claim.of(id="toy-gd-limit", source=SRC3,
                 statement="SGD (= GD, one training point) from θ = 0 converges to θ* = [1, 0.1, 0.01]/1.0101 = a/‖a‖².",
                 checks=Check.at_most(f"‖θ_GD − a/‖a‖²‖ (θ_GD = {vec(toy['gd'])}, a/‖a‖² = {vec(gd_target)})",
                                      gap["gd"], cfg.exact_tol), values={"gap": gap["gd"]}),
        Claim.of(id="toy-sign-limit", source=SRC3,
                 statement="signSGD with a diminishing step converges to θ₂* = [1, 1, 1]/1.11 (= 1/Σaᵢ per entry).",
                 checks=Check.at_most(f"‖θ_sign − [1, 1, 1]/Σa‖ (θ_sign = {vec(toy['sign'])}, [1, 1, 1]/Σa = "
                                      f"{vec(sign_target)}; the bound is √d·η_T, one step of the schedule at the end)",
                                      gap["sign"], math.sqrt(len(a)) * last_step), values={"gap": gap["sign"]}),
        Claim.of(kind="derived", id="toy-adam-limit", source="polaropt's own check of Adam's limit, for " + SRC3,
                 statement="Adam, like signSGD, converges to [1, 1, 1]/1.11: its per-coordinate normalization makes "
                           "every entry move alike.",
                 checks=Check.at_most(f"‖θ_Adam − [1, 1, 1]/Σa‖ (θ_Adam = {vec(toy['adam'])})", gap["adam"],
                                      cfg.adam_tol), values={"gap": gap["adam"]}),
        Claim.of(id="toy-sign-constant-step-fails", source=SRC3,
                 statement="To get this convergence, we need a diminishing step size; a constant step size wouldn't work.",
                 checks=[Check.at_least(f"with the constant step η0 = {cfg.sign_lr:g}, the largest loss over the last "
                                        f"{cfg.tail_steps} steps (θ jumps across the solution line by Σa·η0 in the "
                                        f"residual; the bound is (Σa·η0/2)²)", tail, floor),
                         Check.below("the diminishing schedule's final loss", float(loss["sign"][-1]), floor)],
                 values={"constant_tail": tail, "diminishing_final": float(loss["sign"][-1])}),
        Claim.of(id="toy-linf-steepest-limit", source=SRC + ", problem 1 (penalized linear improvement) applied to problem 3",
                 statement="Steepest descent under ℓ∞, −(α/2)·‖g‖₁·sign(g), moves along sign(g) = ±[1, 1, 1] like "
                           "signSGD, and its step shrinks with the gradient, so a constant α converges to [1, 1, 1]/1.11.",
                 checks=Check.at_most(f"‖θ_linf − [1, 1, 1]/Σa‖ (θ_linf = {vec(toy['linf'])})", gap["linf"],
                                      cfg.exact_tol), values={"gap": gap["linf"]}),
    ]
    gd = select(records, "point", problem="random", method="gd")
    gd_gap = max(r["dist_l2_solution"] / r["min_norm2"] for r in gd)
    out.append(Claim.of(
        id="random-gd-min-l2", source=SRC3 + " (the argument for any under-determined system)",
        statement="GD from 0 only moves in the row space of A, so it converges to the minimum-ℓ2-norm solution.",
        checks=Check.at_most(f"largest ‖θ_GD − x†‖/‖x†‖ over {len(gd)} draws (x† from SciPy's least squares)",
                             gd_gap, cfg.exact_tol), values={"max_rel_gap": gd_gap}))
    checks = []
    for m in ("sign", "linf"):
        pts = select(records, "point", problem="random", method=m)
        below = all(r["norm_inf"] < r["min_l2_norm_inf"] for r in pts)
        checks.append(Check.holds(
            f"{LABELS[m]}: ‖θ‖∞ < ‖x†‖∞ in every draw",
            f"{LABELS[m]}: ‖θ‖∞/min‖·‖∞ median {np.median([r['norm_inf'] / r['min_norm_inf'] for r in pts]):.3f} "
            f"(x†: {np.median([r['min_l2_norm_inf'] / r['min_norm_inf'] for r in pts]):.3f}; min‖·‖∞ from linprog, "
            f"they need not be equal), below x†'s in {'every' if below else 'NOT every'} draw, entries within 5% of "
            f"the max: median {100 * np.median([r['at_max'] for r in pts]):.0f}%", below))
        # "many entries near the maximum": the minimum-ℓ∞ solution of an m × d system has at least d − m + 1 entries
        # at its maximum; "many" is at least half that share within 5% of the max (x†'s share is the contrast)
        many = 0.5 * (cfg.d - cfg.m + 1) / cfg.d
        checks.append(Check.at_least(
            f"{LABELS[m]}: median share of entries within 5% of the max (x†: "
            f"{np.median([r['min_l2_at_max'] for r in pts]):.3f}; the min-ℓ∞ solution: ≥ {2 * many:.3f})",
            float(np.median([r["at_max"] for r in pts])), many))
        checks.append(Check.at_most(f"{LABELS[m]}: largest final loss", max(r["loss"] for r in pts), cfg.converged_loss))
    out.append(Claim.of(
        id="random-sign-linf-flavoured", source=SRC3 + " (signSGD's limit, generalized)",
        statement="Sign-based steps move every coordinate by the same amount, so their limit is ℓ∞-flavoured: a "
                  "smaller largest entry than the minimum-ℓ2 solution's, with many entries near the maximum.",
        checks=checks))
    return out


def figures(records, cfg: Config, out_dir) -> list[str]:
    from ..figures import new_figure, save

    fig, (ax1, ax2) = new_figure(1, 2, size=(11, 4.5))
    for r in select(records, "curve", problem="toy"):
        ax1.semilogy(r["step"], np.maximum(r["value"], 1e-32), label=LABELS[r["method"]], lw=1.2)
    ax1.set(xlabel="step", ylabel="(1 − aᵀθ)²", title=f"a = {list(cfg.a)}: loss")
    ax1.legend(fontsize=7)
    rnd = select(records, "point", problem="random")
    for i, m in enumerate(dict.fromkeys(r["method"] for r in rnd)):
        pts = select(rnd, method=m)
        ax2.scatter([r["norm2"] / r["min_norm2"] for r in pts], [r["norm_inf"] / r["min_norm_inf"] for r in pts],
                    label=LABELS[m], s=18, color=f"C{i}")
    ax2.axvline(1, color="gray", lw=0.8, ls=":")
    ax2.axhline(1, color="gray", lw=0.8, ls=":")
    ax2.set(xlabel="‖θ‖₂ / min ‖·‖₂", ylabel="‖θ‖∞ / min ‖·‖∞",
            title=f"random {cfg.m}×{cfg.d} systems: where each optimizer lands")
    ax2.legend(fontsize=7)
    return save(fig, out_dir, "implicit_bias")


def details(records, cfg: Config) -> str:
    """Where each optimizer lands on the random systems."""
    rnd = select(records, "point", problem="random")
    lines = ["Where each optimizer lands on the random systems (median over draws):", "",
             "| method | ‖θ‖₂/min‖·‖₂ | ‖θ‖∞/min‖·‖∞ | final loss (max) |", "|---|---|---|---|"]
    for m in dict.fromkeys(r["method"] for r in rnd):
        pts = select(rnd, method=m)
        lines.append(f"| {LABELS[m]} | {np.median([r['norm2'] / r['min_norm2'] for r in pts]):.3f} | "
                     f"{np.median([r['norm_inf'] / r['min_norm_inf'] for r in pts]):.3f} | "
                     f"{max(r['loss'] for r in pts):.1e} |")
    return "\n".join(lines)


EXPERIMENT = Experiment(
    name="cs182-implicit-bias",
    description="Implicit bias of GD, sign descent, ℓ∞ steepest descent and Adam on [1, 0.1, 0.01]·θ = 1 (CS182 004)",
    sources=("004_65400c7305219704.txt",), config=Config, quick=QUICK, run=run, claims=claims, figures=figures,
    notes=Path(__file__).with_suffix(".md"), details=details)
