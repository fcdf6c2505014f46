"""chou-sparse: sparse recovery with a diagonal linear network x = w₊⊙w₊ − w₋⊙w₋ (depth 2, Chou 003),
plain gradient descent on w against weight normalization in polar coordinates, w = r·u/‖u‖
(``polarize(mode="normalize")``), over the initialization scale α (w₊ = w₋ = α·1, so x0 = 0) and the
ratio c = η_r/η_u of the two step sizes.

One polar pair on the whole w = (w₊, w₋) ∈ R^{2N} reproduces the seed's magnification factor
ρ = (r0/r∞)·exp((r∞² − r0²)/(2c)) exactly (derived in ``sparse.md``, checked by ``magnification-identity``):
this WN run is plain gradient flow from the effective initialization α/ρ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from .. import theory
from ..framework import Check, Claim, Experiment, param
from ..records import one, select
from .common import SRC, alpha_c, best_wn, dln_output, log_magnification, problem, rel_err, runs, train_gd_wn
from .speed import speed_claims


@dataclass(frozen=True)
class Config:
    n: int = param(1000, "N, the size of x (the source's)")
    m: int = param(150, "M, the number of Gaussian measurements")
    sparsity: int = param(10, "nonzero entries of x*")
    alphas: tuple[float, ...] = param((1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 1.0), "initialization scales α (w₊ = w₋ = α·1)")
    ratios: tuple[float, ...] = param((0.3, 1.0, 3.0), "WN's step-size ratios c = η_r/η_u")
    steps: int = param(16000, "gradient steps")
    lr: float = param(0.3, "the step in w-units is lr/(λmax(AAᵀ)·max(α², 1)), for GD and WN alike (stable below ~1/3)")
    converged_loss: float = param(1e-5, "'converged' = ½‖Ax − y‖² ≤ this (a residual ≲ 5e-3, which moves x by ~0.2% "
                                        "of ‖x_ℓ1‖: small against the errors compared)")
    log_every: int = param(50, "steps between logged losses")
    seed: int = param(0, "seed of A and x*")
    gd_growth: float = param(10.0, "GD's relative error at the largest α is at least this many times that at the smallest")
    identity_rel: float = param(0.1, "magnification identity: |measured − formula| ≤ identity_rel·|formula| + identity_abs")
    identity_abs: float = param(0.5, "the identity's absolute tolerance (a factor 1.3 in α/ρ; covers finite steps)")
    window: float = param(10.0, "the moderate inits: grid α with α_c/window ≤ α < α_c (α_c: 2Nα_c² = ‖x_ℓ1‖₁)")
    wn_gain: float = param(5.0, "there, the best converged WN run's error is at most GD's divided by this")
    large_within: float = param(0.1, "at α ≥ α_c, some WN run ends within this relative error of x_ℓ1")
    tuned_lrs: tuple[float, ...] = param((1.0, 3.0, 10.0, 30.0), "the step sweep: lrs besides lr at which every (α, c) "
                                         "also runs, so each method is compared at its own fastest step")
    sweep_steps: int = param(6000, "the step sweep's steps (its runs converge sooner than at lr)")
    min_spearman: float = param(0.8, "Spearman correlation of effective init (GD: α, WN: α/ρ) and error, at least")

    def validate(self):
        if not (0 < self.sparsity < self.m < self.n):
            raise ValueError(f"need 0 < sparsity < m < n, got sparsity={self.sparsity}, m={self.m}, n={self.n}")
        if not self.alphas or min(self.alphas) <= 0 or not self.ratios or min(self.ratios) <= 0:
            raise ValueError(f"alphas and ratios must be non-empty and positive, got {self.alphas}, {self.ratios}")
        if any(x <= 0 for x in self.tuned_lrs) or self.lr in self.tuned_lrs:
            raise ValueError(f"tuned_lrs must be positive and exclude lr ({self.lr}), got {self.tuned_lrs}")
        if self.tuned_lrs and self.sweep_steps < 1:
            raise ValueError(f"sweep_steps must be >= 1, got {self.sweep_steps}")
        if self.steps < 1 or self.lr <= 0 or self.log_every < 1 or self.converged_loss <= 0:
            raise ValueError(f"need steps >= 1, lr > 0, log_every >= 1 and converged_loss > 0, got steps={self.steps}, "
                             f"lr={self.lr}, log_every={self.log_every}, converged_loss={self.converged_loss}")
        bad = {k: getattr(self, k) for k in ("gd_growth", "identity_rel", "identity_abs", "window", "wn_gain",
                                             "large_within") if getattr(self, k) <= 0}
        if bad or not (-1 <= self.min_spearman <= 1):
            raise ValueError(f"thresholds must be > 0 and min_spearman in [-1, 1], got {bad or self.min_spearman}")


QUICK = Config(n=200, m=40, sparsity=4, alphas=(1e-4, 1e-2, 3e-2, 1.0), ratios=(0.3, 3.0), steps=3000)


def run(cfg: Config, progress) -> list[dict]:
    A, x_star, y = problem(cfg)
    x_l1 = torch.tensor(theory.min_l1_solution(A.numpy(), y.numpy()))
    records = []
    for lrs, steps in (((cfg.lr,), cfg.steps), (cfg.tuned_lrs, cfg.sweep_steps)):
        if lrs:
            records += train_grid(cfg, replace(cfg, steps=steps), lrs, A, y, x_star, x_l1, progress)
    records.append({"kind": "scalar", "name": "x_l1_equals_x_star", "value": float((x_l1 - x_star).norm())})
    return records


def train_grid(cfg: Config, run_cfg: Config, lrs, A, y, x_star, x_l1, progress) -> list[dict]:
    """GD at every (lr, α) and WN at every (lr, α, c), trained side by side; the run at cfg.lr logs its
    curves, the step sweep is marked ``sweep='tuned'``."""
    grid = {"gd": [(lr, a, None) for lr in lrs for a in cfg.alphas],
            "wn": [(lr, a, c) for lr in lrs for a in cfg.alphas for c in cfg.ratios]}
    lr, alpha, ratio = ({k: torch.tensor([row[i] for row in g], dtype=torch.float64) for k, g in grid.items()
                         if i < 2 or k == "wn"} for i in range(3))
    out = train_gd_wn(run_cfg, A, y, alpha, ratio["wn"], progress, lr=lr)
    swept = lrs != (cfg.lr,)
    records = []
    for k, W in out.weights.items():
        x = dln_output(W)
        loss = 0.5 * (x @ A.T - y).square().sum(-1)
        prod = (W[:, 0] * W[:, 1]).median(dim=1).values
        for i, (lr, a, c) in enumerate(grid[k]):
            rec = {"kind": "point", "method": k, "alpha": a, "ratio": c, "loss": float(loss[i]),
                   "steps_to_converged": int(out.hits[k][i]), "err_l1": float((x[i] - x_l1).norm()),
                   "err_star": float((x[i] - x_star).norm()), "norm_l1": float(x_l1.norm()),
                   "l1_of_x_l1": float(x_l1.abs().sum()), "median_product": float(prod[i]), "n": cfg.n, "lr": lr}
            if swept:
                rec.update(sweep="tuned", diverged=bool(out.diverged[k][i]))
            else:
                records.append({"kind": "curve", "method": k, "metric": "loss", "alpha": a, "ratio": c,
                                "step": out.log_steps, "value": out.logs[k][:, i].tolist()})
            if k == "wn":
                rec.update(r0=float(out.r0[i]), r_end=float(out.r_end[i]))
            records.append(rec)
    return records


def claims(records, cfg: Config) -> list[Claim]:
    gd, wn = runs(records)
    conv = cfg.converged_loss
    gd_rel = [rel_err(p) for p in gd]
    listed = ", ".join(f"α={p['alpha']:g}: {rel_err(p):.2e}" + ("" if p["loss"] <= conv else
                       f" (loss {p['loss']:.1e}, unfinished)") for p in gd)
    out = [Claim.of(
        id="gd-needs-small-init", source=SRC + ", Executive Summary",
        statement="While prior work showed GD has implicit bias toward sparse solutions, it required very small "
                  "initialization.",
        checks=[Check.holds("GD's relative error ‖x̂ − x_ℓ1‖/‖x_ℓ1‖ does not decrease as α grows (an unfinished "
                            "small-α run only overstates its error, which works against this check)", listed,
                            all(b >= a for a, b in zip(gd_rel, gd_rel[1:]))),
                Check.at_least("GD's relative error at the largest α / at the smallest",
                               gd_rel[-1] / gd_rel[0] if gd_rel[0] > 0 else math.inf, cfg.gd_growth)],
        values={"rel_err": gd_rel})]
    # the magnification factor, measured from the products against the source's formula
    gaps = []
    for p in wn:
        measured = math.log(p["alpha"] ** 2 / p["median_product"]) if p["median_product"] > 0 else float("inf")
        formula = log_magnification(p)
        gaps.append({"over_tolerance": abs(measured - formula) / (cfg.identity_rel * abs(formula) + cfg.identity_abs),
                     "alpha": p["alpha"], "ratio": p["ratio"], "measured": measured, "formula": formula})
    worst = max(gaps, key=lambda g: g["over_tolerance"])
    out.append(Claim.of(
        id="magnification-identity", source=SRC + ", magnification factor ρ; derivation in the notes",
        statement="The learning-rate ratio magnifies the implicit regularization by ρ = (r0/r∞)·exp((r∞² − r0²)/(2η̃)): "
                  "WN behaves like gradient descent from the initialization α/ρ.",
        checks=Check.at_most(
            f"largest |ln(α²/w₊ᵢw₋ᵢ) (median over i) − 2·ln ρ| / ({cfg.identity_rel:g}·|2·ln ρ| + {cfg.identity_abs:g}) "
            f"over the WN runs (worst at α={worst['alpha']:g}, c={worst['ratio']:g}: measured {worst['measured']:.2f}, "
            f"formula {worst['formula']:.2f}; 2·ln ρ ranges from {min(g['formula'] for g in gaps):.2f} to "
            f"{max(g['formula'] for g in gaps):.2f})", worst["over_tolerance"], 1.0),
        values={"max_mismatch_over_tolerance": worst["over_tolerance"]}))
    ac = alpha_c(gd, cfg.n)
    checks = []
    for g in (g for g in gd if ac / cfg.window <= g["alpha"] < ac):
        best = best_wn(wn, g["alpha"], converged_below=conv)
        checks.append(Check.holds(f"α={g['alpha']:g}: a converged WN run", "no WN run converged", False) if best is None
                      else Check.at_least(f"α={g['alpha']:g}: GD's error {rel_err(g):.2e} / the best converged WN "
                                          f"run's {rel_err(best):.2e} (c={best['ratio']:g})",
                                          rel_err(g) / rel_err(best), cfg.wn_gain))
    out.append(Claim.of(
        id="wn-robust-without-small-init", source=SRC + ", Key Results",
        statement="Weight normalization enables implicit regularization toward sparse solutions without requiring "
                  "small initialization, unlike standard gradient descent.",
        checks=checks or Check.holds(f"a grid α in [α_c/{cfg.window:g}, α_c = {ac:.3g})",
                                     "no α in that range on the grid", False),
        values={"alpha_threshold": ac}))
    checks = []
    for g in (g for g in gd if g["alpha"] >= ac):
        best = best_wn(wn, g["alpha"])
        checks.append(Check.at_most(
            f"α={g['alpha']:g} ≥ α_c = {ac:.3g}: the best WN run's relative error (c={best['ratio']:g}, r∞²/r0² = "
            f"{best['r_end'] ** 2 / best['r0'] ** 2:.3f}, 2·ln ρ = {log_magnification(best):.2f}; GD's "
            f"{rel_err(g):.2e})", rel_err(best), cfg.large_within))
    out.append(Claim.of(
        id="wn-robust-at-large-init", source=SRC + ", abstract ('initialized at practically large scale')",
        statement="A robust bias that persists even if the weights are initialized at practically large scale (not "
                  "testable with the inferred model: at α ≥ α_c, r has no need to grow, so ρ ≈ 1 at every c; see the "
                  "notes).",
        checks=checks or Check.holds(f"a grid α ≥ α_c = {ac:.3g}", "no α in that range on the grid", False)))
    out += speed_claims(records, gd, wn, cfg)
    eff = [(math.log(p["alpha"]), rel_err(p)) for p in gd if p["loss"] <= conv]
    eff += [(math.log(p["alpha"]) - log_magnification(p) / 2, rel_err(p)) for p in wn if p["loss"] <= conv]
    rho_s = (float(stats.spearmanr([x for x, _ in eff], [e for _, e in eff]).statistic) if len(eff) >= 3
             else float("nan"))
    out.append(Claim.of(
        id="error-follows-effective-init", source=SRC + ", magnification factor ρ",
        statement="The error decays with the magnification: what matters is the effective initialization α/ρ, not α.",
        checks=Check.at_least(f"Spearman rank correlation between the effective initialization (GD: α; WN: α/ρ) and "
                              f"the relative error over the {len(eff)} converged runs", rho_s, cfg.min_spearman),
        values={"spearman": rho_s}))
    return out


def figures(records, cfg: Config, out_dir) -> list[str]:
    from ..figures import new_figure, save

    fig, (ax1, ax2, ax3) = new_figure(1, 3, size=(16, 4.6))
    gd, wn = runs(records)
    ax1.loglog([p["alpha"] for p in gd], [max(rel_err(p), 1e-16) for p in gd], "ko-", label="GD")
    for i, c in enumerate(cfg.ratios):
        pts = sorted((p for p in wn if p["ratio"] == c), key=lambda p: p["alpha"])
        ax1.loglog([p["alpha"] for p in pts], [max(rel_err(p), 1e-16) for p in pts], "s--", color=f"C{i}",
                   label=f"WN, c = η_r/η_u = {c:g}")
        unconv = [p for p in pts if p["loss"] > cfg.converged_loss]
        ax1.loglog([p["alpha"] for p in unconv], [max(rel_err(p), 1e-16) for p in unconv], "x", color="r", ms=9)
    ax1.plot([], [], "rx", label="not converged")
    ax1.axvline(alpha_c(gd, cfg.n), color="gray", ls=":", lw=1, label="2Nα² = ‖x_ℓ1‖₁")
    ax1.set(xlabel="initialization scale α", ylabel="‖x̂ − x_ℓ1‖ / ‖x_ℓ1‖", title="error against α")
    ax1.legend(fontsize=7)
    for p in gd:
        ax2.scatter(p["alpha"], max(rel_err(p), 1e-16), color="k", s=20)
    for i, c in enumerate(cfg.ratios):
        pts = [p for p in wn if p["ratio"] == c and p["loss"] <= cfg.converged_loss]
        ax2.scatter([math.exp(math.log(p["alpha"]) - log_magnification(p) / 2) for p in pts],
                    [max(rel_err(p), 1e-16) for p in pts], color=f"C{i}", marker="s", s=20, label=f"WN c={c:g} at α/ρ")
    ax2.set(xscale="log", yscale="log", xlabel="effective initialization (GD: α, WN: α/ρ)", ylabel="relative error",
            title="one curve: WN = GD from α/ρ (converged runs)")
    ax2.legend(fontsize=7)
    for r in select(records, "curve"):
        if r["alpha"] in (cfg.alphas[0], cfg.alphas[len(cfg.alphas) // 2]):
            label = "GD" if r["method"] == "gd" else f"WN c={r['ratio']:g}"
            ax3.semilogy(r["step"], np.maximum(r["value"], 1e-30), "-" if r["method"] == "gd" else "--", lw=1,
                         label=f"{label}, α={r['alpha']:g}")
    ax3.axhline(cfg.converged_loss, color="gray", ls=":", lw=1)
    ax3.set(xlabel="step", ylabel="loss ½‖Ax − y‖²", title="convergence")
    ax3.legend(fontsize=6)
    return save(fig, out_dir, "chou_sparse")


def details(records, cfg: Config) -> str:
    """x_ℓ1 against x*, and every run's numbers."""
    gd, wn = runs(records)
    lines = [f"Here ‖x_ℓ1 − x*‖ = {one(records, 'scalar', name='x_l1_equals_x_star')['value']:.1e}.", "",
             "| method | α | c | relative error | loss | steps to converge | 2·ln ρ |", "|---|---|---|---|---|---|---|"]
    for p in gd + sorted(wn, key=lambda p: (p["alpha"], p["ratio"])):
        ratio = "" if p["ratio"] is None else f"{p['ratio']:g}"
        mag = "" if p["method"] == "gd" else f"{log_magnification(p):.2f}"
        lines.append(f"| {p['method']} | {p['alpha']:g} | {ratio} | {rel_err(p):.2e} | {p['loss']:.1e} | "
                     f"{p['steps_to_converged']} | {mag} |")
    return "\n".join(lines)


EXPERIMENT = Experiment(
    name="chou-sparse",
    description="Sparse recovery with a diagonal linear net (Chou 003): GD vs polar WN over init scale and lr ratio",
    sources=("003_29ca827949296fc9.txt",), config=Config, quick=QUICK, run=run, claims=claims, figures=figures,
    notes=Path(__file__).with_suffix(".md"), details=details)
