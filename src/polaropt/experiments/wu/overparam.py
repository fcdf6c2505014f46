"""wu-overparam-ls: over-parametrized least squares (Wu 002, Figure 1), GD vs WN vs rPGD from
initializations of growing norm, with the WN flow's closed-form limit from the same starts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import theory
from ..framework import Check, Claim, Experiment, param, require_distinct
from ..records import by
from ..training import train
from .common import (LABELS, METHODS, NOTES, SHORT, SOURCES, SRC, build, close_range, gaussian_problems,
                     paired_lower_bound, residual_loss, split_probe)


@dataclass(frozen=True)
class Config:
    m: int = param(20, "rows of A (equations)")
    d: int = param(100, "columns of A (unknowns); m < d is over-parametrized")
    draws: int = param(10, "random problems (A, y, w0) at every ‖x0‖")
    x0_norms: tuple[float, ...] = param((0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0),
                                        "the grid of ‖x0‖ = g0 (x0 = ‖x0‖·w0, the same w0 for the three methods)")
    far_x0_norms: tuple[float, ...] = param((10.0, 20.0), "larger ‖x0‖ run beside the grid (records of kind 'far', "
                                                          "not in the figure) for wn-can-be-farther-when-g0-large")
    eta: float = param(0.005, "the source's step size, for GD and for w")
    c: float = param(1.0, "step on g = c·eta (the source gives one step size: 0.005 for all)")
    stop_loss: float = param(1e-5, "each copy stops once ½‖Ax − y‖² is below this")
    max_steps: int = param(20000, "step limit")
    close: float = param(0.25, "'close to x†': mean distance ≤ close·mean ‖x†‖ (the figure's reading, stated)")
    gd_gap_tol: float = param(0.01, "allowed |‖x̂_GD − x†‖ − ‖P⊥x0‖|: stopping at loss L leaves a row-space "
                                    "error ≤ √(2L)/σ_min(A) (≈ 0.004 here)")
    overlap_within: float = param(0.05, "WN's and rPGD's mean distances may differ by this fraction")
    flow_gap_tol: float = param(0.05, "allowed |‖x̂_WN − x†‖ − ‖x∞ − x†‖|: η is a finite step (WN's ‖w‖ grows "
                                      "by η²‖∇w‖² a step)")
    seed: int = param(0, "seed of A, y and w0")

    def validate(self):
        if not (0 < self.m < self.d):
            raise ValueError(f"need 0 < m < d (over-parametrized), got m={self.m}, d={self.d}")
        if self.draws < 2 or not self.x0_norms or min(self.x0_norms) <= 0:
            raise ValueError(f"draws must be >= 2 and x0_norms positive (WN cannot start at g0 = 0), got "
                             f"draws={self.draws}, x0_norms={self.x0_norms}")
        require_distinct(x0_norms=self.x0_norms + self.far_x0_norms)
        if self.eta <= 0 or self.c < 0 or self.stop_loss <= 0 or self.max_steps < 1:
            raise ValueError(f"eta, stop_loss must be > 0, c >= 0, max_steps >= 1, got eta={self.eta}, c={self.c}, "
                             f"stop_loss={self.stop_loss}, max_steps={self.max_steps}")
        if min(self.close, self.gd_gap_tol, self.overlap_within, self.flow_gap_tol) <= 0:
            raise ValueError("close, gd_gap_tol, overlap_within and flow_gap_tol must be > 0")


QUICK = Config(draws=4, x0_norms=(0.1, 0.5, 1.0, 2.0, 4.0), far_x0_norms=(10.0,))


def tile(t: torch.Tensor, times: int) -> torch.Tensor:
    """``times`` copies of ``t`` along dim 0: the sweep's copies are (norm, draw), norm-major."""
    return t.repeat(times, *([1] * (t.ndim - 1)))


def run(cfg: Config, progress) -> list[dict]:
    A, y, x_dag, P, gen = gaussian_problems(cfg.m, cfg.d, cfg.draws, cfg.seed)
    w0 = torch.randn(cfg.draws, cfg.d, generator=gen, dtype=torch.float64)
    w0 = w0 / w0.norm(dim=1, keepdim=True)
    grid = cfg.x0_norms + cfg.far_x0_norms
    R, G = len(grid), len(cfg.x0_norms)
    # the copies, norm-major: every draw (A_k, y_k, w0_k) at every ‖x0‖ of the grid and the far probe; then the
    # figure's likely design for the error bars, one problem (A_0, y_0) with every draw's w0, at the grid's ‖x0‖
    A_, y_, x_dag_, P_ = (torch.cat([tile(t, R), tile(t[:1].expand(cfg.draws, *t.shape[1:]), G)])
                          for t in (A, y, x_dag, P))
    norms = torch.tensor(grid + cfg.x0_norms, dtype=torch.float64).repeat_interleave(cfg.draws)
    x0 = norms[:, None] * tile(w0, R + G)
    probes = ["far" if n in cfg.far_x0_norms else None for n in grid for _ in range(cfg.draws)] + \
        ["one-problem"] * (G * cfg.draws)
    model, opt = build(x0, METHODS, eta=cfg.eta, c=cfg.c)
    active = {m: torch.ones(len(x0), dtype=torch.bool) for m in METHODS}
    stopped = {m: torch.full((len(x0),), -1, dtype=torch.long) for m in METHODS}

    def loss_at(t):
        total = 0
        for m in METHODS:
            loss = residual_loss(A_, y_, model[m].weight)
            done = (loss.detach() < cfg.stop_loss) & active[m]
            stopped[m][done] = t
            active[m] &= ~done
            total = total + (loss * active[m]).sum()  # a stopped copy gets zero gradient: it stays put
        return total

    def all_stopped(t):
        return not any(a.any() for a in active.values())

    train(loss_at, opt, cfg.max_steps, stop=all_stopped, progress=progress, desc="wu-overparam-ls")
    records = []
    null0 = torch.einsum("kij,kj->ki", P_, x0).norm(dim=1)
    for m in METHODS:
        with torch.no_grad():
            x = model[m].weight.detach()
            loss = residual_loss(A_, y_, x)
        for i in range(len(x0)):
            probe = {"probe": probes[i]} if probes[i] else {}
            records.append({"kind": "point", **probe, "method": m, "x0_norm": float(norms[i]), "draw": i % cfg.draws,
                            "norm": float(x[i].norm()), "dist": float((x[i] - x_dag_[i]).norm()),
                            "g_star": float(x_dag_[i].norm()), "null_x0": float(null0[i]),
                            "loss": float(loss[i]), "steps": int(stopped[m][i])})
    if cfg.c > 0:  # the continuous-time limit of WN and rPGD from the same start (theory.wn_limit)
        for i in range(len(cfg.x0_norms) * cfg.draws):
            k = i % cfg.draws
            x_inf, _ = theory.wn_limit(A[k].numpy(), y[k].numpy(), w0[k].numpy(), float(norms[i]), cfg.c)
            records.append({"kind": "point", "method": "flow", "x0_norm": float(norms[i]), "draw": k,
                            "norm": float(np.linalg.norm(x_inf)),
                            "dist": float(np.linalg.norm(x_inf - x_dag[k].numpy())),
                            "g_star": float(x_dag[k].norm()), "null_x0": float(null0[i]), "loss": 0.0, "steps": -1})
    return records


def over_draws(records, field: str) -> dict[str, dict[float, np.ndarray]]:
    """{method: {‖x0‖: the points' ``field`` over the draws}}: what the figure's error bars summarize."""
    out: dict = {}
    for (method, x0_norm, _), v in by(records, ("method", "x0_norm", "draw"), field, kind="point").items():
        out.setdefault(method, {}).setdefault(x0_norm, []).append(v)
    return {m: {n: np.asarray(v) for n, v in row.items()} for m, row in out.items()}


def claims(records, cfg: Config) -> list[Claim]:
    _, one = split_probe(records, "one-problem")
    records, far = split_probe(records)
    dist, gstar, norm = over_draws(records, "dist"), over_draws(records, "g_star"), over_draws(records, "norm")
    null0, loss = over_draws(records, "null_x0"), over_draws(records, "loss")
    grid = sorted(dist["gd"])
    mean = {m: {n: dist[m][n].mean() for n in grid} for m in dist}
    gap = max(float(np.max(np.abs(dist["gd"][n] - null0["gd"][n]))) for n in grid)
    out = [Claim.of(
        id="gd-distance-is-null-part", source=SRC + ", Sec. 2 (GD keeps ‖w⊥‖) and Figure 1",
        statement="Gradient descent from x0 converges to x† + P⊥x0: its distance to the minimum-norm solution is "
                  "‖P⊥x0‖, so GD reaches x† only from ‖x0‖ = 0.",
        checks=[Check.at_most("largest | ‖x̂_GD − x†‖ − ‖P⊥x0‖ | over draws and ‖x0‖", gap, cfg.gd_gap_tol),
                Check.at_most(f"runs that never reached loss < {cfg.stop_loss:g}",
                              sum(not v < cfg.stop_loss for m in METHODS for n in grid for v in loss[m][n]), 0)],
        values={"max_gap": gap})]
    gd_range = close_range(dist["gd"], gstar["gd"], cfg.close)
    ranges = {m: close_range(dist[m], gstar[m], cfg.close) for m in ("wn", "rpgd")}
    out.append(Claim.of(
        id="wn-rpgd-wider-range", source=SRC + ", Figure 1 caption",
        statement="GD converges to the minimum ℓ2-norm solution only when ‖x0‖ = 0, while WN and rPGD converge "
                  "close to the minimum norm solution for a wider range of initializations.",
        checks=[Check.less(f"largest grid ‖x0‖ up to which the mean distance is ≤ {cfg.close:g}·mean ‖x†‖ for GD"
                           if m == "wn" else "for GD", gd_range, f"for {SHORT[m]}", r) for m, r in ranges.items()],
        values={"gd": gd_range, **ranges}))
    # Figure 1's error bars as its likely design: one (A, y), the spread over w0 alone (the notes say why)
    std_all = {m: {n: norm[m][n].std() for n in grid} for m in METHODS}
    one_norm = over_draws(one, "norm")
    std = {m: {n: one_norm[m][n].std() for n in grid} for m in METHODS}
    out.append(Claim.of(
        id="wn-rpgd-smaller-std", source=SRC + ", Figure 1 caption",
        statement="WN and rPGD converge ... with smaller standard deviation (of ‖x̂‖ over draws of w0, for one "
                  "problem (A, y)) than GD.",
        checks=[Check.less(f"std over w0 of ‖x̂‖ from ‖x0‖={n:g} of {SHORT[m]}" if (n, m) == (grid[0], "wn")
                           else f"‖x0‖={n:g}: {SHORT[m]}", std[m][n], "GD", std["gd"][n])
                for n in grid for m in ("wn", "rpgd")],
        values={"smaller_at": {str(n): all(std[m][n] < std["gd"][n] for m in ("wn", "rpgd")) for n in grid},
                "over_random_problems_smaller_at": {str(n): all(std_all[m][n] < std_all["gd"][n]
                                                               for m in ("wn", "rpgd")) for n in grid}}))
    overlap = max(abs(mean["wn"][n] - mean["rpgd"][n]) / max(mean["wn"][n], 1e-12) for n in grid)
    out.append(Claim.of(
        id="wn-rpgd-overlap", source=SRC + ", Figure 1 caption and Lemma 2.2",
        statement="The rPGD and WN curves overlap (they share the same limiting flow).",
        checks=Check.at_most("largest relative gap between WN's and rPGD's mean distances", overlap,
                             cfg.overlap_within),
        values={"max_relative_gap": overlap}))
    below = [n for n in grid if n < min(gstar["gd"][n].min() for n in grid)]
    # the source's baseline: GD from g*·w0 ends at x† + P⊥(g*·w0), at g*·‖P⊥w0‖ = g*·‖P⊥x0‖/‖x0‖ (Theorem 2.6)
    source_gd = {n: (gstar["gd"][n] * null0["gd"][n] / n).mean() for n in grid}
    def closer(baseline: dict, label: str, **meta) -> Claim:
        if not below:
            return Claim.failed(**meta, expected="a grid ‖x0‖ below every draw's ‖x†‖",
                                why="no grid ‖x0‖ is below every draw's ‖x†‖")
        return Claim.of(**meta, checks=[Check.less(f"mean distance from ‖x0‖={n:g} of {SHORT[m]}" if (n, m) == (
            below[0], "wn") else f"‖x0‖={n:g}: {SHORT[m]}", mean[m][n], label, baseline[n])
            for n in below for m in ("wn", "rpgd")], values={"not_closer_at": [
                n for n in below if not all(mean[m][n] < baseline[n] for m in ("wn", "rpgd"))]})
    out.append(closer(source_gd, "GD from g*·w0 (g*·‖P⊥w0‖)", id="wn-rpgd-closer-when-g0-small",
                      source=SRC + ", Theorem 2.6 Part I and its discussion",
                      statement="Initialized with g0 < g* (= ‖x†‖), WN and rPGD converge closer to the minimum-norm "
                                "solution than GD (smaller component in the null space; GD's limit x† + P⊥(g*·w0), "
                                "as the source compares)."))
    out.append(closer(mean["gd"], "GD", id="wn-rpgd-closer-than-gd-from-the-same-start", kind="beyond",
                      source="beyond the sources: GD run from the same x0 (a stricter baseline than the source's)",
                      statement="From the same small x0 (g0 < g*), WN and rPGD also end closer to x† than GD does."))
    # "can be farther" (g0² > g*²): WN's distance minus GD's, paired by draw, with a 95% lower bound above the WN-vs-flow
    # error the experiment accepts, at some ‖x0‖ of the grid or of the larger ones run beside it (the notes say why)
    g_max = max(gstar["gd"][n].max() for n in grid)
    above = [(n, recs) for recs in (records, far) for n in sorted({r["x0_norm"] for r in recs}) if n > g_max]
    farther = dict(id="wn-can-be-farther-when-g0-large", source=SRC + ", Theorem 2.6 discussion",
                   statement="If g0² > g*², the WN flow can converge to a solution that is farther from x* than GD.")
    lower = {n: paired_lower_bound(recs, "dist", "wn", "gd", n) for n, recs in above}
    out.append(Claim.of(
        **farther, checks=[Check.at_least(f"‖x0‖={n:g}: WN's distance to x† minus GD's, paired over draws, 95% lower "
                                          "bound" if i == 0 else f"‖x0‖={n:g}: the same", lower[n], cfg.flow_gap_tol)
                           for i, (n, _) in enumerate(above)], require="any",
        values={"farther_at": [n for n, _ in above if lower[n] >= cfg.flow_gap_tol]})
        if above else Claim.failed(**farther, expected="a ‖x0‖ above every draw's ‖x†‖",
                                   why="no ‖x0‖ is above every draw's ‖x†‖"))
    if "flow" in dist:
        err = max(float(np.max(np.abs(dist["wn"][n] - dist["flow"][n]))) for n in grid)
        out.append(Claim.of(
            kind="derived", id="wn-matches-flow-limit", source=NOTES,
            statement="The discrete WN run lands where the WN flow's closed-form limit says (theory.wn_limit, "
                      "c = γ/η).",
            checks=Check.at_most("largest | ‖x̂_WN − x†‖ − ‖x∞ − x†‖ | over copies", err, cfg.flow_gap_tol),
            values={"max_gap": err}))
    return out


def figures(records, cfg: Config, out_dir) -> list[str]:
    from ..figures import new_figure, save

    records, _ = split_probe(records)
    dist, norm = over_draws(records, "dist"), over_draws(records, "norm")
    fig, (ax1, ax2) = new_figure(1, 2, size=(11, 4.5))
    for m in (*METHODS, "flow"):
        if m not in dist:
            continue
        xs = sorted(dist[m])
        style = dict(ls="--", marker="", color="k", lw=1) if m == "flow" else dict(marker="o", ms=4, capsize=3)
        for ax, tab in ((ax1, norm), (ax2, dist)):
            mean = [tab[m][n].mean() for n in xs]
            if m == "flow":
                ax.plot(xs, mean, label=LABELS[m], **style)
            else:
                ax.errorbar(xs, mean, yerr=[tab[m][n].std() for n in xs], label=LABELS[m], **style)
    g = over_draws(records, "g_star")["gd"]
    ax1.axhline(np.mean([v.mean() for v in g.values()]), color="gray", ls=":", lw=1, label="mean ‖x†‖")
    ax1.set(xlabel="‖x0‖", ylabel="‖x̂‖", title=f"‖x̂‖ (mean ± std over {cfg.draws} draws)")
    ax2.set(xlabel="‖x0‖", ylabel="‖x̂ − x†‖", title="distance to the minimum-norm solution")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    return save(fig, out_dir, "overparam_ls")


def details(records, cfg: Config) -> str:
    """Steps to the stopping loss, and the spread of ‖x†‖ itself."""
    records, _ = split_probe(records)
    steps, g = over_draws(records, "steps"), over_draws(records, "g_star")["gd"]
    grid = sorted(g)
    return "\n".join([
        "Steps to the stopping loss (median over draws and ‖x0‖): "
        + ", ".join(f"{LABELS[m]} {int(np.median(np.concatenate(list(steps[m].values()))))}" for m in METHODS),
        "",
        f"‖x†‖ over the draws: mean {np.mean([g[n].mean() for n in grid]):.3f}, std {g[grid[0]].std():.3f} "
        "(where ‖x0‖ < ‖x†‖ the three methods inherit that spread in ‖x̂‖).",
    ])


EXPERIMENT = Experiment(
    name="wu-overparam-ls",
    description="Over-parametrized least squares (Wu 002, Fig. 1): GD vs WN vs rPGD from inits of growing norm",
    sources=SOURCES, config=Config, quick=QUICK, run=run, claims=claims, figures=figures,
    notes=Path(__file__).with_suffix(".md"), details=details)
