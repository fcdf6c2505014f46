"""wu-flow-limit: the WN flow's closed-form limit and invariant (Wu 002, Lemma 2.5, Theorem 2.6) against
small-step WN and rPGD over a grid of (g0, c, ‖w0‖), and the source's concrete example."""

from __future__ import annotations

import math
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path

import numpy as np
import torch

import polaropt as po

from .. import theory
from ..framework import Check, Claim, Experiment, param, require_distinct
from ..records import by, select
from ..training import train
from .common import LABELS, NOTES, SOURCES, SRC, Setting, column, copies, gaussian_problems, residual_loss


@dataclass(frozen=True)
class Config:
    m: int = param(3, "rows of A (equations)")
    d: int = param(8, "columns of A (unknowns)")
    draws: int = param(2, "random problems (A, y and the direction of w0)")
    g0s: tuple[float, ...] = param((0.5, 1.0, 2.0), "initial scales g0")
    cs: tuple[float, ...] = param((0.5, 1.0, 2.0), "step ratios c = γ/η (step on g over step on w)")
    w0_norms: tuple[float, ...] = param((0.5, 1.0, 2.0), "WN's ‖w0‖ (rPGD's w is on the sphere)")
    eta: float = param(0.01, "step size; every copy also runs at eta/2, to see the error shrink like O(eta)")
    steps: int = param(5000, "steps (flow time steps·eta/2 = 25 for the finer copies)")
    log_every: int = param(50, "g and the invariant are logged every this many steps")
    example_g0s: tuple[float, ...] = param((0.25, 0.5, 1.0, 1.5, 2.0), "g0s of the source's example "
                                           "(A = [1, 0], y = 1, w0 = [0, 1], c = 1)")
    tol: float = param(0.02, "‖x_sim − x∞‖ ≤ tol·max(1, ‖x∞‖) at eta/2 on the grid, ≤ tol on the example")
    converged_loss: float = param(1e-6, "every grid run ends at loss ≤ this (a residual that moves x by ≲ 1e-3)")
    first_order: tuple[float, ...] = param((1.5, 2.5), "range of the median err(η)/err(η/2) (2 for first order)")
    drift_halving: float = param(1.5, "every trajectory's drift ratio η : η/2 is ≥ this (first order or faster)")
    drift_floor: float = param(1e-12, "trajectories whose drift at eta/2 is below this (no null-space part) "
                                      "have no drift ratio")
    seed: int = param(1, "seed of A, y and w0")

    def validate(self):
        if not (0 < self.m < self.d) or self.draws < 1:
            raise ValueError(f"need 0 < m < d and draws >= 1, got m={self.m}, d={self.d}, draws={self.draws}")
        if min(self.cs) <= 0 or min(self.w0_norms) <= 0 or min(self.g0s) <= 0 or min(self.example_g0s) <= 0:
            raise ValueError("g0s, cs, w0_norms and example_g0s must be positive (c = 0 has no flow limit)")
        require_distinct(g0s=self.g0s, cs=self.cs, w0_norms=self.w0_norms, example_g0s=self.example_g0s)
        if self.eta <= 0 or self.steps < 1 or self.log_every < 1:
            raise ValueError(f"eta > 0, steps >= 1 and log_every >= 1 required, got eta={self.eta}, "
                             f"steps={self.steps}, log_every={self.log_every}")
        if len(self.first_order) != 2 or not 0 < self.first_order[0] < self.first_order[1]:
            raise ValueError(f"first_order must be a range (low, high) with 0 < low < high, got {self.first_order}")
        if min(self.tol, self.converged_loss, self.drift_halving, self.drift_floor) <= 0:
            raise ValueError("tol, converged_loss, drift_halving and drift_floor must be > 0")


QUICK = Config(g0s=(0.5, 2.0), cs=(1.0,), w0_norms=(1.0, 2.0), draws=2, steps=3000, example_g0s=(0.5, 1.5))


def source_example_limit(g0: float) -> list[float]:
    """The limit the source states for A = [1, 0], y = 1, w0 = [0, 1], c = 1: g·w = [1, exp((g0² − 1)/2)]."""
    return [1.0, math.exp((g0**2 - 1) / 2)]


def run(cfg: Config, progress) -> list[dict]:
    A, y, _, P, gen = gaussian_problems(cfg.m, cfg.d, cfg.draws, cfg.seed)
    u0 = torch.randn(cfg.draws, cfg.d, generator=gen, dtype=torch.float64)
    u0 = u0 / u0.norm(dim=1, keepdim=True)
    runs = []
    for method in ("wn", "rpgd"):
        grid = [Setting(g0, c, wn, k, f) for f in (1.0, 0.5) for g0 in cfg.g0s for c in cfg.cs
                for wn in (cfg.w0_norms if method == "wn" else (1.0,)) for k in range(cfg.draws)]
        k = [s.draw for s in grid]
        x0 = column(grid, "g0")[:, None] * u0[k]
        runs.append(copies("grid", method, x0, A[k], y[k], P[k], grid, cfg.eta))
    ex = [Setting(g0, 1.0, 1.0, 0, f) for f in (1.0, 0.5) for g0 in cfg.example_g0s]  # the source's example
    Ae = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64).expand(len(ex), 1, 2)
    ye = torch.ones(len(ex), 1, dtype=torch.float64)
    Pe = torch.tensor([[[0.0, 0.0], [0.0, 1.0]]], dtype=torch.float64).expand(len(ex), 2, 2)
    x0 = column(ex, "g0")[:, None] * torch.tensor([0.0, 1.0], dtype=torch.float64)
    runs += [copies("example", method, x0, Ae, ye, Pe, ex, cfg.eta) for method in ("wn", "rpgd")]

    logs = [{"step": [], "g": [], "inv": []} for _ in runs]
    loss0 = [residual_loss(r.A, r.y, r.module.weight).detach() for r in runs]

    def loss_at(t):
        if t % cfg.log_every == 0 or t == cfg.steps:
            for r, log in zip(runs, logs):  # g and the invariant P⊥w·exp(g²/(2c‖w0‖²)) (WN's ‖w0‖, rPGD's 1)
                w, g = po.direction_of(r.module).detach(), po.scale_of(r.module).detach().reshape(-1)
                growth = torch.exp(g**2 / (2 * column(r.settings, "c") * column(r.settings, "w0_norm") ** 2))
                log["step"].append(t)
                log["g"].append(g.clone())
                log["inv"].append((torch.einsum("kij,kj->ki", r.P, w) * growth[:, None]).clone())
        return sum(residual_loss(r.A, r.y, r.module.weight).sum() for r in runs)

    train(loss_at, [r.opt for r in runs], cfg.steps, progress=progress, desc="wu-flow-limit")
    records = []
    for r, log, l0 in zip(runs, logs, loss0):
        x = r.module.weight.detach()
        loss = residual_loss(r.A, r.y, x)
        g_end = po.scale_of(r.module).detach().reshape(-1)
        inv = torch.stack(log["inv"])  # [T, copies, d]
        drift = (inv - inv[0]).norm(dim=-1) / inv[0].norm(dim=-1).clamp_min(1e-300)
        for i, s in enumerate(r.settings):
            An, yn = r.A[i].numpy(), r.y[i].numpy()
            w0 = (s.w0_norm * u0[s.draw]).numpy() if r.group == "grid" else np.array([0.0, 1.0])
            x_inf, g_inf = theory.wn_limit(An, yn, w0, s.g0, s.c, g_sign=float(g_end[i]))
            rec = {"kind": "point", "group": r.group, "method": r.method, "g0": s.g0, "c": s.c, "w0_norm": s.w0_norm,
                   "draw": s.draw, "eta": cfg.eta * s.step, "x": x[i].tolist(), "x_flow": x_inf.tolist(),
                   "g_end": float(g_end[i]), "g_flow": g_inf, "loss0": float(l0[i]), "zero_loss": float(0.5 * (yn @ yn)),
                   "loss": float(loss[i]), "err": float(np.linalg.norm(x[i].numpy() - x_inf)),
                   "flow_norm": float(np.linalg.norm(x_inf)),
                   "max_invariant_drift": float(drift[:, i].max()) if float(inv[0, i].norm()) > 0 else 0.0}
            if r.group == "example":
                rec["x_source"] = source_example_limit(s.g0)
            records.append(rec)
            if s.step == 0.5:
                base = {"kind": "curve", "group": r.group, "method": r.method, "g0": s.g0, "c": s.c,
                        "w0_norm": s.w0_norm, "draw": s.draw, "eta": cfg.eta * s.step, "step": log["step"]}
                records.append({**base, "metric": "invariant_drift", "value": drift[:, i].tolist()})
                records.append({**base, "metric": "g", "value": torch.stack(log["g"])[:, i].tolist()})
    return records


GRID_KEY = ("method", "g0", "c", "w0_norm", "draw")  # one trajectory of the grid


def relative_error(p: dict) -> float:
    """‖x_sim − x∞‖/max(1, ‖x∞‖) of a point."""
    return p["err"] / max(1.0, p["flow_norm"])


def claims(records, cfg: Config) -> list[Claim]:
    fine, coarse = cfg.eta / 2, cfg.eta
    out = []
    for method in ("wn", "rpgd"):
        pts = select(records, "point", group="grid", method=method, eta=fine)
        rel = [relative_error(p) for p in pts]
        out.append(Claim.of(
            kind="derived", id=f"flow-limit-{method}", source=NOTES + "; " + SRC + ", Theorem 2.6 Part I",
            statement=f"{LABELS[method]} with small steps converges to the WN flow's limit "
                      "x∞ = x† + (g∞/‖w0‖)·P⊥w0·exp(−(g∞² − g0²)/(2c‖w0‖²)), g∞² the root of the invariant's equation"
                      + (" (rPGD: the same flow, with ‖w0‖ = 1)" if method == "rpgd" else ""),
            checks=[Check.at_most(f"largest ‖x_sim − x∞‖/max(1, ‖x∞‖) at step η/2 = {fine:g}", max(rel), cfg.tol),
                    Check.at_most(f"runs above loss {cfg.converged_loss:g} (of {len(pts)})",
                                  sum(p["loss"] > cfg.converged_loss for p in pts), 0)],
            values={"max_rel_err": max(rel), "median_rel_err": float(np.median(rel))}))
    ratios = {}
    for method in ("wn", "rpgd"):
        err = {eta: by(records, GRID_KEY, "err", kind="point", group="grid", method=method, eta=eta)
               for eta in (coarse, fine)}
        ratios[method] = float(np.median([err[coarse][k] / max(e, 1e-300) for k, e in err[fine].items()]))
    out.append(Claim.of(
        kind="derived", id="flow-limit-first-order", source=NOTES,
        statement="The discrete algorithms approach the WN flow as the step goes to zero (the flow is their η → 0 "
                  "limit, Lemma 2.2); a first-order method's gap to its flow shrinks like η.",
        checks=[Check.between(f"median over the grid of err(η)/err(η/2) of {LABELS[m]}", r, *cfg.first_order)
                for m, r in ratios.items()],
        values=ratios))
    drift = {eta: by(records, GRID_KEY, "max_invariant_drift", kind="point", group="grid", eta=eta)
             for eta in (coarse, fine)}
    ratio = [drift[coarse][k] / d for k, d in drift[fine].items() if d > cfg.drift_floor]
    out.append(Claim.of(
        id="flow-invariant-conserved", source=SRC + ", Lemma 2.5; " + NOTES,
        statement="P⊥w(t)·exp(g(t)²/(2c‖w0‖²)) is constant along the WN flow (the η → 0 limit of WN and rPGD).",
        checks=Check.at_least(f"smallest ratio η : η/2 of a trajectory's largest relative drift (over {len(ratio)} "
                              "trajectories)", min(ratio) if ratio else None, cfg.drift_halving),
        values={"min_ratio": min(ratio, default=None), "max_ratio": max(ratio, default=None),
                "max_drift_fine": max(drift[fine].values())}))
    grid = select(records, "point", group="grid")
    below = [p for p in grid if p["loss0"] < p["zero_loss"]]
    flipped_below = [p for p in below if np.sign(p["g_end"]) != np.sign(p["g0"])]
    flipped_above = [p for p in grid if p["loss0"] >= p["zero_loss"] and np.sign(p["g_end"]) != np.sign(p["g0"])]
    out.append(Claim.of(
        kind="derived", id="flow-sign-kept", source=NOTES + " (a sufficient condition, from Lemma 2.4: the loss never increases)",
        statement="A run that starts below the loss at zero (½‖Ax0 − y‖² < ½‖y‖²) never lets g cross 0, so g∞ has "
                  "the sign of g0 and the closed form is unambiguous; the invariant alone fixes only |g∞|.",
        checks=[Check.at_least("runs starting below the loss at zero", len(below), 1),
                Check.at_most("of those, runs whose g changed sign", len(flipped_below), 0)],
        values={"flipped_below": len(flipped_below), "flipped_above": len(flipped_above)}))
    ex = sorted(select(records, "point", group="example", eta=fine), key=itemgetter("method", "g0"))
    derived = max(np.linalg.norm(np.subtract(p["x"], p["x_flow"])) for p in ex)
    out.append(Claim.of(
        kind="derived", id="example-derived-limit", source=NOTES,
        statement="For A = [1, 0], y = 1, w0 = [0, 1], c = 1 the derived closed form gives the limit the runs reach.",
        checks=Check.at_most("largest ‖x_sim − x∞(derived)‖ over g0 and both methods", derived, cfg.tol),
        values={"max_gap": derived}))
    src_gap = {(p["method"], p["g0"]): float(np.linalg.norm(np.subtract(p["x"], p["x_source"]))) for p in ex}
    out.append(Claim.of(
        id="example-source-limit", source=SRC + ", Sec. 2, 'A Concrete Example'",
        statement="Suppose we start with w0 = [0, 1]ᵀ and set c = 1 ... Then WN flow converges to a solution "
                  "gw = [1, exp([g0² − 1]/2)]ᵀ.",
        checks=Check.at_most("largest ‖x_sim − [1, exp((g0² − 1)/2)]‖ over g0 and both methods (the example's "
                             "table in the notes)", max(src_gap.values()), cfg.tol),
        values={"gap": {f"{m}@{g:g}": v for (m, g), v in src_gap.items()}}))
    return out


def figures(records, cfg: Config, out_dir) -> list[str]:
    from ..figures import new_figure, save

    fig, (ax1, ax2, ax3) = new_figure(1, 3, size=(15, 4.5))
    for r in select(records, "curve", group="grid", metric="invariant_drift", draw=0):
        ax1.semilogy(r["step"], np.maximum(r["value"], 1e-16), lw=0.8, color="C0" if r["method"] == "wn" else "C1",
                     alpha=0.6)
    ax1.plot([], [], color="C0", label=LABELS["wn"])
    ax1.plot([], [], color="C1", label=LABELS["rpgd"])
    ax1.set(xlabel="step (η/2)", ylabel="‖I(t) − I(0)‖ / ‖I(0)‖",
            title="invariant I = P⊥w·exp(g²/2c‖w0‖²) along trajectories")
    ax1.legend(fontsize=8)
    for eta, marker in ((cfg.eta, "x"), (cfg.eta / 2, "o")):
        for method, color in (("wn", "C0"), ("rpgd", "C1")):
            pts = select(records, "point", group="grid", method=method, eta=eta)
            ax2.scatter([p["flow_norm"] for p in pts], [max(p["err"], 1e-12) for p in pts], marker=marker, s=14,
                        color=color, label=f"{LABELS[method]}, η={eta:g}", alpha=0.7)
    ax2.set(yscale="log", xlabel="‖x∞‖ (theory)", ylabel="‖x_sim − x∞‖", title="simulation vs closed-form limit")
    ax2.legend(fontsize=7)
    ex = sorted(select(records, "point", group="example", method="wn", eta=cfg.eta / 2), key=itemgetter("g0"))
    g0 = [p["g0"] for p in ex]
    ax3.plot(g0, [p["x"][1] for p in ex], "o", label="simulated (WN, η/2)")
    ax3.plot(g0, [p["x_flow"][1] for p in ex], "-", label="derived limit")
    ax3.plot(g0, [p["x_source"][1] for p in ex], "--", label="source: exp((g0² − 1)/2)")
    ax3.set(xlabel="g0", ylabel="limit of x[2] (x[1] = 1 for all)",
            title="the source's example: A=[1,0], w0=[0,1], c=1")
    ax3.legend(fontsize=8)
    return save(fig, out_dir, "flow_limit")


def details(records, cfg: Config) -> str:
    """Where the grid's errors and drifts are largest, the sign flips from bad starts, the example's table."""
    fine = cfg.eta / 2
    pts = {m: select(records, "point", group="grid", method=m, eta=fine) for m in ("wn", "rpgd")}
    at = {m: max(ps, key=relative_error) for m, ps in pts.items()}
    at["drift"] = max(pts["wn"] + pts["rpgd"], key=itemgetter("max_invariant_drift"))
    where = {k: f"{LABELS[p['method']]}, g0={p['g0']:g}, c={p['c']:g}, ‖w0‖={p['w0_norm']:g}" for k, p in at.items()}
    above = [p for p in select(records, "point", group="grid") if p["loss0"] >= p["zero_loss"]]
    lines = [f"- Largest relative error at η/2: {relative_error(at[m]):.2e} at {where[m]}; median "
             f"{np.median([relative_error(p) for p in pts[m]]):.2e}." for m in pts]
    lines += [f"- Largest invariant drift at η/2: {at['drift']['max_invariant_drift']:.2e} at {where['drift']} "
              f"(WN's ‖w‖ grows by η²‖∇w‖² a step, most where ‖w0‖ is small); median "
              f"{np.median([p['max_invariant_drift'] for p in pts['wn'] + pts['rpgd']]):.2e}.",
              f"- Of the {len(above)} grid runs starting above the loss at zero, "
              f"{sum(np.sign(p['g_end']) != np.sign(p['g0']) for p in above)} ended with g∞ of the other sign "
              "(their limit is the closed form with that sign)."]
    ex = sorted(select(records, "point", group="example", method="wn", eta=fine), key=itemgetter("g0"))
    lines += ["", "The source's concrete example, x[2] of the limit (x[1] = 1 in every case; rPGD lands on the same "
              "points):", "", "| g0 | simulated (WN) | derived | source | derived g∞ |", "|---|---|---|---|---|"]
    lines += [f"| {p['g0']:g} | {p['x'][1]:.4f} | {p['x_flow'][1]:.4f} | {p['x_source'][1]:.4f} | {p['g_flow']:.4f} |"
              for p in ex]
    return "\n".join(lines)


EXPERIMENT = Experiment(
    name="wu-flow-limit",
    description="WN flow (Wu 002): closed-form limit and invariant vs small-step WN and rPGD; the source's example",
    sources=SOURCES, config=Config, quick=QUICK, run=run, claims=claims, figures=figures,
    notes=Path(__file__).with_suffix(".md"), details=details)
