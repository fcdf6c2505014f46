"""Wu, Dobriban, Ren, Wu, Li, Gunasekar, Ward, Liu, "Implicit regularization and convergence for
weight normalization", NeurIPS 2020 (seed 002), re-run with polaropt's public API.

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
come from :mod:`polaropt.theory` (derived in shared/notes/seed-findings.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

import polaropt as po
from polaropt import theory

from .framework import Claim, Experiment, register
from .toys import Weights

SRC = "002 Wu et al. 2020"
NOTES = "seed-findings.md (Wu et al., derived and checked)"
METHODS = ("gd", "wn", "rpgd")
LABELS = {"gd": "GD", "wn": "WN (normalize)", "rpgd": "rPGD (project)", "flow": "WN flow (theory)"}
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


# ==== wu-overparam-ls ==============================================================================

@dataclass
class OverparamConfig:
    m: int = 20
    d: int = 100
    draws: int = 10
    x0_norms: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
    eta: float = 0.005  # the source's step size, for GD and for w
    c: float = 1.0  # step on g = c·eta (the source gives one step size: 0.005 for all)
    stop_loss: float = 1e-5
    max_steps: int = 20000
    close: float = 0.25  # "close to x†": distance ≤ close·‖x†‖ (the figure's reading, stated)
    seed: int = 0

    def validate(self):
        if not (0 < self.m < self.d):
            raise ValueError(f"need 0 < m < d (over-parametrized), got m={self.m}, d={self.d}")
        if self.draws < 2 or not self.x0_norms or min(self.x0_norms) <= 0:
            raise ValueError("draws must be >= 2 and x0_norms positive (WN cannot start at g0 = 0)")
        if self.eta <= 0 or self.c < 0 or self.stop_loss <= 0 or self.max_steps < 1:
            raise ValueError("eta, stop_loss must be > 0, c >= 0, max_steps >= 1")


def overparam_run(cfg: OverparamConfig, progress) -> list[dict]:
    A, y, x_dag, P, gen = gaussian_problems(cfg.m, cfg.d, cfg.draws, cfg.seed)
    w0 = torch.randn(cfg.draws, cfg.d, generator=gen, dtype=torch.float64)
    w0 = w0 / w0.norm(dim=1, keepdim=True)
    R = len(cfg.x0_norms)
    rep = lambda t: t.repeat(R, *([1] * (t.ndim - 1)))  # noqa: E731  copies: (norm, draw), norm-major
    A_, y_ = rep(A), rep(y)
    norms = torch.tensor(cfg.x0_norms, dtype=torch.float64).repeat_interleave(cfg.draws)
    x0 = norms[:, None] * rep(w0)
    model, opt = build(x0, METHODS, eta=cfg.eta, c=cfg.c)
    active = {m: torch.ones(len(x0), dtype=torch.bool) for m in METHODS}
    stopped = {m: torch.full((len(x0),), -1, dtype=torch.long) for m in METHODS}
    for t in progress(range(cfg.max_steps + 1), desc="wu-overparam-ls", mininterval=1.0):
        total = 0
        for m in METHODS:
            loss = residual_loss(A_, y_, model[m].weight)
            done = (loss.detach() < cfg.stop_loss) & active[m]
            stopped[m][done] = t
            active[m] &= ~done
            total = total + (loss * active[m]).sum()  # a stopped copy gets zero gradient: it stays put
        if t == cfg.max_steps or not any(a.any() for a in active.values()):
            break
        opt.zero_grad()
        total.backward()
        opt.step()
    records = []
    null0 = torch.einsum("kij,kj->ki", rep(P), x0).norm(dim=1)
    for m in METHODS:
        with torch.no_grad():
            x = model[m].weight.detach()
            loss = residual_loss(A_, y_, x)
        for i in range(len(x0)):
            records.append({"kind": "point", "method": m, "x0_norm": float(norms[i]), "draw": i % cfg.draws,
                            "norm": float(x[i].norm()), "dist": float((x[i] - rep(x_dag)[i]).norm()),
                            "g_star": float(rep(x_dag)[i].norm()), "null_x0": float(null0[i]),
                            "loss": float(loss[i]), "steps": int(stopped[m][i])})
    if cfg.c > 0:  # the continuous-time limit of WN and rPGD from the same start (theory.wn_limit)
        for i in range(len(x0)):
            k = i % cfg.draws
            x_inf, _ = theory.wn_limit(A[k].numpy(), y[k].numpy(), w0[k].numpy(), float(norms[i]), cfg.c)
            records.append({"kind": "point", "method": "flow", "x0_norm": float(norms[i]), "draw": k,
                            "norm": float(np.linalg.norm(x_inf)), "dist": float(np.linalg.norm(x_inf - x_dag[k].numpy())),
                            "g_star": float(x_dag[k].norm()), "null_x0": float(null0[i]), "loss": 0.0, "steps": -1})
    return records


def _table(records, key):
    """{method: {x0_norm: array over draws}} of ``key``."""
    out: dict = {}
    for r in records:
        if r["kind"] == "point":
            out.setdefault(r["method"], {}).setdefault(r["x0_norm"], []).append(r[key])
    return {m: {n: np.asarray(v) for n, v in by.items()} for m, by in out.items()}


def _close_range(dist, gstar, frac) -> float:
    """The largest ‖x0‖ up to which every grid point's mean distance is ≤ frac·mean ‖x†‖ (0 if none)."""
    best = 0.0
    for n in sorted(dist):
        if dist[n].mean() <= frac * gstar[n].mean():
            best = n
        else:
            break
    return best


def overparam_claims(records, cfg: OverparamConfig) -> list[Claim]:
    dist, gstar, norm = _table(records, "dist"), _table(records, "g_star"), _table(records, "norm")
    null0, loss = _table(records, "null_x0"), _table(records, "loss")
    grid = sorted(dist["gd"])
    claims = []
    # GD: the row-space part converges, the null-space part never moves. Stopping at loss L leaves a
    # row-space error ≤ √(2L)/σ_min(A) (≈ 0.004 here), so the tolerance is 0.01.
    gap = max(float(np.max(np.abs(dist["gd"][n] - null0["gd"][n]))) for n in grid)
    all_stopped = all(float(loss[m][n].max()) < cfg.stop_loss for m in METHODS for n in grid)
    claims.append(Claim(
        "gd-distance-is-null-part", SRC + ", Sec. 2 (GD keeps ‖w⊥‖) and Figure 1",
        "Gradient descent from x0 converges to x† + P⊥x0: its distance to the minimum-norm solution is ‖P⊥x0‖, "
        "so GD reaches x† only from ‖x0‖ = 0.",
        "| ‖x̂_GD − x†‖ − ‖P⊥x0‖ | ≤ 0.01 for every draw and ‖x0‖ (every run stopped at the loss threshold)",
        f"largest gap {gap:.2e}; every run reached loss < {cfg.stop_loss:g}: {all_stopped}",
        gap <= 0.01 and all_stopped, {"max_gap": gap}))
    gd_range = _close_range(dist["gd"], gstar["gd"], cfg.close)
    ranges = {m: _close_range(dist[m], gstar[m], cfg.close) for m in ("wn", "rpgd")}
    claims.append(Claim(
        "wn-rpgd-wider-range", SRC + ", Figure 1 caption",
        "GD converges to the minimum ℓ2-norm solution only when ‖x0‖ = 0, while WN and rPGD converge close to "
        "the minimum norm solution for a wider range of initializations.",
        f"'close' = mean distance ≤ {cfg.close:g}·mean ‖x†‖; the largest grid ‖x0‖ up to which WN and rPGD stay "
        f"close exceeds GD's",
        f"close up to ‖x0‖ = GD: {gd_range:g}, WN: {ranges['wn']:g}, rPGD: {ranges['rpgd']:g} "
        f"(mean ‖x†‖ = {np.mean([gstar['gd'][n].mean() for n in grid]):.3f})",
        all(r > gd_range for r in ranges.values()), {"gd": gd_range, **ranges}))
    std_ok = {n: all(norm[m][n].std() < norm["gd"][n].std() for m in ("wn", "rpgd")) for n in grid}
    claims.append(Claim(
        "wn-rpgd-smaller-std", SRC + ", Figure 1 caption",
        "WN and rPGD converge ... with smaller standard deviation (of ‖x̂‖ over draws) than GD.",
        "std over draws of ‖x̂‖ is smaller for both WN and rPGD than for GD at every ‖x0‖ of the grid",
        "; ".join(f"‖x0‖={n:g}: GD {norm['gd'][n].std():.3f}, WN {norm['wn'][n].std():.3f}, "
                  f"rPGD {norm['rpgd'][n].std():.3f}" for n in grid)
        + f" (std of ‖x†‖ itself: {gstar['gd'][grid[0]].std():.3f}; where ‖x0‖ < ‖x†‖ all three inherit it)",
        all(std_ok.values()), {"smaller_at": {str(n): ok for n, ok in std_ok.items()}}))
    overlap = max(abs(dist["wn"][n].mean() - dist["rpgd"][n].mean()) / max(dist["wn"][n].mean(), 1e-12) for n in grid)
    claims.append(Claim(
        "wn-rpgd-overlap", SRC + ", Figure 1 caption and Lemma 2.2",
        "The rPGD and WN curves overlap (they share the same limiting flow).",
        "mean distances of WN and rPGD within 5% of each other at every ‖x0‖",
        f"largest relative gap {100 * overlap:.2f}%", overlap <= 0.05, {"max_relative_gap": overlap}))
    below = [n for n in grid if n < min(gstar["gd"][n].min() for n in grid)]
    closer = {n: all(dist[m][n].mean() < dist["gd"][n].mean() for m in ("wn", "rpgd")) for n in below}
    not_closer = [n for n, ok in closer.items() if not ok]
    claims.append(Claim(
        "wn-rpgd-closer-when-g0-small", SRC + ", Theorem 2.6 Part I and its discussion",
        "Initialized with g0 < g* (= ‖x†‖), WN and rPGD converge closer to the minimum-norm solution than GD "
        "(smaller component in the null space).",
        "at every grid ‖x0‖ = g0 below every draw's ‖x†‖, the mean distance of WN and of rPGD is below GD's "
        "from the same x0",
        "; ".join(f"‖x0‖={n:g}: GD {dist['gd'][n].mean():.3f}, WN {dist['wn'][n].mean():.3f}, "
                  f"rPGD {dist['rpgd'][n].mean():.3f}" for n in below)
        + (f". NOT closer at ‖x0‖ = {', '.join(f'{n:g}' for n in not_closer)}: near 0, GD starts almost at x† "
           f"while WN/rPGD keep g∞·P⊥w0·exp(−(g∞² − g0²)/2c), which does not vanish as g0 → 0"
           if not_closer else ""),
        bool(below) and not not_closer, {"not_closer_at": not_closer}))
    above = [n for n in grid if n > max(gstar["gd"][n].max() for n in grid)]
    farther = [n for n in above if dist["wn"][n].mean() > dist["gd"][n].mean()]
    claims.append(Claim(
        "wn-can-be-farther-when-g0-large", SRC + ", Theorem 2.6 discussion",
        "If g0² > g*², the WN flow can converge to a solution that is farther from x* than GD.",
        "at some grid ‖x0‖ above every draw's ‖x†‖, WN's mean distance exceeds GD's",
        f"grid points above ‖x†‖: {', '.join(f'{n:g}' for n in above) or 'none'}; WN farther at: "
        f"{', '.join(f'{n:g}' for n in farther) or 'none'}", bool(farther), {"farther_at": farther}))
    if "flow" in dist:
        err = max(float(np.max(np.abs(dist["wn"][n] - dist["flow"][n]))) for n in grid)
        claims.append(Claim(
            "wn-matches-flow-limit", NOTES,
            "The discrete WN run lands where the WN flow's closed-form limit says (theory.wn_limit, c = γ/η).",
            "| ‖x̂_WN − x†‖ − ‖x∞ − x†‖ | ≤ 0.05 for every copy (η = 0.005 is a finite step; WN's ‖w‖ grows by "
            "η²‖∇w‖² a step)",
            f"largest gap {err:.3e}", err <= 0.05, {"max_gap": err}))
    return claims


def overparam_figures(records, cfg: OverparamConfig, out_dir) -> list[str]:
    from .figures import new_figure, save

    dist, norm = _table(records, "dist"), _table(records, "norm")
    fig, (ax1, ax2) = new_figure(1, 2, size=(11, 4.5))
    for m in (*METHODS, "flow"):
        if m not in dist:
            continue
        xs = sorted(dist[m])
        style = dict(ls="--", marker="", color="k", lw=1) if m == "flow" else dict(marker="o", ms=4, capsize=3)
        for ax, tab in ((ax1, norm), (ax2, dist)):
            mean = [tab[m][n].mean() for n in xs]
            std = [tab[m][n].std() for n in xs]
            if m == "flow":
                ax.plot(xs, mean, label=LABELS[m], **style)
            else:
                ax.errorbar(xs, mean, yerr=std, label=LABELS[m], **style)
    g = _table(records, "g_star")["gd"]
    ax1.axhline(np.mean([v.mean() for v in g.values()]), color="gray", ls=":", lw=1, label="mean ‖x†‖")
    ax1.set(xlabel="‖x0‖", ylabel="‖x̂‖", title=f"‖x̂‖ (mean ± std over {cfg.draws} draws)")
    ax2.set(xlabel="‖x0‖", ylabel="‖x̂ − x†‖", title="distance to the minimum-norm solution")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    return save(fig, out_dir, "overparam_ls")


def overparam_notes(records, cfg: OverparamConfig) -> str:
    steps = _table(records, "steps")
    return "\n".join([
        f"Setup (the source's Section F is not in the seed; inferred): A is {cfg.m}×{cfg.d} with i.i.d. N(0, 1/m) "
        f"entries, y ~ N(0, I), x0 = ‖x0‖·w0 with w0 uniform on the sphere (the same w0 for the three methods), "
        f"g0 = ‖x0‖ and ‖w0‖ = 1 for WN/rPGD, step {cfg.eta:g} on w and on x, {cfg.c:g}·{cfg.eta:g} on g, plain "
        f"(full-batch) SGD, each copy stopped when its loss ½‖Ax − y‖² < {cfg.stop_loss:g}. ‖x0‖ = 0 is left out: "
        f"WN cannot start at g0 = 0 (and GD from 0 is x† exactly).",
        "",
        "Steps to the stopping loss (median over draws and ‖x0‖): "
        + ", ".join(f"{LABELS[m]} {int(np.median(np.concatenate(list(steps[m].values()))))}" for m in METHODS),
        "",
        "The dashed line is the WN flow's limit from the same start (`polaropt.theory.wn_limit`): the distance of "
        "WN/rPGD to x† does not go to 0 as ‖x0‖ → 0, because the null-space part of w0 only shrinks by "
        "exp(−(g∞² − g0²)/2c) while g grows from g0 to g∞. So near ‖x0‖ = 0, GD (which starts almost at x†) is "
        "closer than WN/rPGD; the claim `wn-rpgd-closer-when-g0-small` reports where.",
    ])


register(Experiment(
    name="wu-overparam-ls",
    description="Over-parametrized least squares (Wu 002, Fig. 1): GD vs WN vs rPGD from inits of growing norm",
    sources=("002_3dce160b64f5f734.txt",),
    config_cls=OverparamConfig, run=overparam_run, claims=overparam_claims, figures=overparam_figures,
    notes=overparam_notes, quick={"draws": 4, "x0_norms": (0.1, 0.5, 1.0, 2.0, 4.0)}))


# ==== wu-flow-limit ================================================================================

@dataclass
class FlowLimitConfig:
    m: int = 3
    d: int = 8
    draws: int = 2
    g0s: tuple[float, ...] = (0.5, 1.0, 2.0)
    cs: tuple[float, ...] = (0.5, 1.0, 2.0)
    w0_norms: tuple[float, ...] = (0.5, 1.0, 2.0)  # WN's ‖w0‖ (rPGD's w is on the sphere)
    eta: float = 0.01  # every copy also runs at eta/2, to see the error shrink like O(eta)
    steps: int = 5000  # flow time steps·eta/2 = 25 for the finer copies
    log_every: int = 50
    example_g0s: tuple[float, ...] = (0.25, 0.5, 1.0, 1.5, 2.0)
    tol: float = 0.02  # |x_sim − x∞| ≤ tol·max(1, ‖x∞‖) at eta/2
    seed: int = 1

    def validate(self):
        if not (0 < self.m < self.d) or self.draws < 1:
            raise ValueError(f"need 0 < m < d and draws >= 1, got m={self.m}, d={self.d}, draws={self.draws}")
        if min(self.cs) <= 0 or min(self.w0_norms) <= 0 or min(self.g0s) <= 0 or min(self.example_g0s) <= 0:
            raise ValueError("g0s, cs, w0_norms and example_g0s must be positive (c = 0 has no flow limit)")
        if self.eta <= 0 or self.steps < 1 or self.log_every < 1:
            raise ValueError("eta > 0, steps >= 1 and log_every >= 1 required")


def source_example_limit(g0: float) -> list[float]:
    """The limit the source states for A = [1, 0], y = 1, w0 = [0, 1], c = 1: g·w = [1, exp((g0² − 1)/2)]."""
    return [1.0, math.exp((g0**2 - 1) / 2)]


def _grid_copies(cfg, method):
    w0_norms = cfg.w0_norms if method == "wn" else (1.0,)
    rows = [(g0, c, wn, k, f) for f in (1.0, 0.5) for g0 in cfg.g0s for c in cfg.cs for wn in w0_norms
            for k in range(cfg.draws)]
    col = lambda i: torch.tensor([r[i] for r in rows], dtype=torch.float64)  # noqa: E731
    return rows, col(0), col(1), col(2), [r[3] for r in rows], col(4)


def flow_limit_run(cfg: FlowLimitConfig, progress) -> list[dict]:
    A, y, _, P, gen = gaussian_problems(cfg.m, cfg.d, cfg.draws, cfg.seed)
    u0 = torch.randn(cfg.draws, cfg.d, generator=gen, dtype=torch.float64)
    u0 = u0 / u0.norm(dim=1, keepdim=True)
    runs = {}  # name -> (model, opt, A, y, P, g0, c, w0_norm, step factor, draw index, rows)
    for method in ("wn", "rpgd"):
        rows, g0, c, wn, k, f = _grid_copies(cfg, method)
        # WN's direction moves at η/‖w0‖², so a copy with ‖w0‖ > 1 steps at f·‖w0‖²·η (on w and, with ratio c,
        # on g) to keep up: the flow's limit depends on c and ‖w0‖ only, not on the clock
        model, opt = build(g0[:, None] * u0[k], (method,), eta=cfg.eta, c=c, step=f * wn.clamp_min(1) ** 2,
                           w0_norm=wn)
        runs[f"grid-{method}"] = (model[method], opt, A[k], y[k], P[k], g0, c, wn, f, k, rows)
    # the source's concrete example: A = [1, 0], y = 1, w0 = [0, 1], c = 1
    ex = [(g0, f) for f in (1.0, 0.5) for g0 in cfg.example_g0s]
    g0 = torch.tensor([e[0] for e in ex], dtype=torch.float64)
    f = torch.tensor([e[1] for e in ex], dtype=torch.float64)
    Ae = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64).expand(len(ex), 1, 2)
    ye = torch.ones(len(ex), 1, dtype=torch.float64)
    Pe = torch.tensor([[[0.0, 0.0], [0.0, 1.0]]], dtype=torch.float64).expand(len(ex), 2, 2)
    one = torch.ones(len(ex), dtype=torch.float64)
    for method in ("wn", "rpgd"):
        x0 = g0[:, None] * torch.tensor([0.0, 1.0], dtype=torch.float64)
        model, opt = build(x0, (method,), eta=cfg.eta, c=one, step=f)
        runs[f"example-{method}"] = (model[method], opt, Ae, ye, Pe, g0, one, one, f, [0] * len(ex),
                                     [(e[0], 1.0, 1.0, 0, e[1]) for e in ex])

    def state(run):
        mod, _, A_, y_, P_, g0_, c_, wn_, *_ = run
        w = po.direction_of(mod).detach()
        g = po.scale_of(mod).detach().reshape(-1)
        w0n = wn_  # the flow's ‖w‖ (WN: ‖w0‖; rPGD: 1)
        inv = torch.einsum("kij,kj->ki", P_, w) * torch.exp(g**2 / (2 * c_ * w0n**2))[:, None]
        return g, inv

    logs = {name: {"step": [], "g": [], "inv": []} for name in runs}
    loss0 = {name: residual_loss(r[2], r[3], r[0].weight).detach() for name, r in runs.items()}
    for t in progress(range(cfg.steps + 1), desc="wu-flow-limit", mininterval=1.0):
        if t % cfg.log_every == 0 or t == cfg.steps:
            for name, run in runs.items():
                g, inv = state(run)
                logs[name]["step"].append(t)
                logs[name]["g"].append(g.clone())
                logs[name]["inv"].append(inv.clone())
        if t == cfg.steps:
            break
        total = sum(residual_loss(r[2], r[3], r[0].weight).sum() for r in runs.values())
        for r in runs.values():
            r[1].zero_grad()
        total.backward()
        for r in runs.values():
            r[1].step()
    records = []
    for name, run in runs.items():
        mod, _, A_, y_, P_, g0_, c_, wn_, f_, k_, rows = run
        x = mod.weight.detach()
        loss = residual_loss(A_, y_, x)
        g_end = po.scale_of(mod).detach().reshape(-1)
        inv = torch.stack(logs[name]["inv"])  # [T, copies, d]
        drift = (inv - inv[0]).norm(dim=-1) / inv[0].norm(dim=-1).clamp_min(1e-300)
        group, method = name.split("-")
        for i, (g0, c, wn, k, fac) in enumerate(rows):
            An, yn = A_[i].numpy(), y_[i].numpy()
            w0 = (wn * u0[k]).numpy() if group == "grid" else np.array([0.0, 1.0])
            x_inf, g_inf = theory.wn_limit(An, yn, w0, g0, c, g_sign=float(g_end[i]))
            rec = {"kind": "point", "group": group, "method": method, "g0": g0, "c": c, "w0_norm": wn, "draw": k,
                   "eta": cfg.eta * fac, "x": x[i].tolist(), "x_flow": x_inf.tolist(), "g_end": float(g_end[i]),
                   "g_flow": g_inf, "loss0": float(loss0[name][i]), "zero_loss": float(0.5 * (yn @ yn)),
                   "loss": float(loss[i]), "err": float(np.linalg.norm(x[i].numpy() - x_inf)),
                   "flow_norm": float(np.linalg.norm(x_inf)),
                   "max_invariant_drift": float(drift[:, i].max()) if float(inv[0, i].norm()) > 0 else 0.0}
            if group == "example":
                rec["x_source"] = source_example_limit(g0)
            records.append(rec)
            if fac == 0.5:
                base = {"kind": "curve", "group": group, "method": method, "g0": g0, "c": c, "w0_norm": wn,
                        "draw": k, "eta": cfg.eta * fac, "step": logs[name]["step"]}
                records.append({**base, "metric": "invariant_drift", "value": drift[:, i].tolist()})
                records.append({**base, "metric": "g", "value": torch.stack(logs[name]["g"])[:, i].tolist()})
    return records


def _points(records, **match):
    return [r for r in records if r["kind"] == "point" and all(r[k] == v for k, v in match.items())]


def flow_limit_claims(records, cfg: FlowLimitConfig) -> list[Claim]:
    fine, coarse = cfg.eta / 2, cfg.eta
    claims = []
    for method in ("wn", "rpgd"):
        pts = _points(records, group="grid", method=method, eta=fine)
        rel = [p["err"] / max(1.0, p["flow_norm"]) for p in pts]
        unconverged = sum(p["loss"] > 1e-6 for p in pts)
        worst = pts[int(np.argmax(rel))]
        claims.append(Claim(
            f"flow-limit-{method}", NOTES + "; " + SRC + ", Theorem 2.6 Part I",
            f"{LABELS[method]} with small steps converges to the WN flow's limit "
            "x∞ = x† + (g∞/‖w0‖)·P⊥w0·exp(−(g∞² − g0²)/(2c‖w0‖²)), g∞² the root of the invariant's equation"
            + (" (rPGD: the same flow, with ‖w0‖ = 1)" if method == "rpgd" else ""),
            f"at step η/2 = {fine:g}: ‖x_sim − x∞‖ ≤ {cfg.tol:g}·max(1, ‖x∞‖) for every (g0, c, ‖w0‖, draw), "
            f"every run at loss ≤ 1e-6 (a residual that moves x by ≲ 1e-3; the sign of g∞ taken from the run: "
            f"see `flow-sign-kept`)",
            f"largest relative error {max(rel):.2e} at g0={worst['g0']:g}, c={worst['c']:g}, ‖w0‖={worst['w0_norm']:g}; "
            f"median {np.median(rel):.2e}; runs above loss 1e-6: {unconverged} of {len(pts)}",
            max(rel) <= cfg.tol and unconverged == 0, {"max_rel_err": max(rel), "median_rel_err": float(np.median(rel))}))
    ratios = {}
    for method in ("wn", "rpgd"):
        by = {(p["g0"], p["c"], p["w0_norm"], p["draw"]): p["err"] for p in _points(records, group="grid", method=method, eta=coarse)}
        ratios[method] = float(np.median([by[(p["g0"], p["c"], p["w0_norm"], p["draw"])] / max(p["err"], 1e-300)
                                          for p in _points(records, group="grid", method=method, eta=fine)]))
    claims.append(Claim(
        "flow-limit-first-order", NOTES,
        "The discrete algorithms approach the WN flow as the step goes to zero (the flow is their η → 0 limit, "
        "Lemma 2.2); a first-order method's gap to its flow shrinks like η.",
        "median over the grid of err(η)/err(η/2) between 1.5 and 2.5, for WN and for rPGD",
        ", ".join(f"{LABELS[m]}: {r:.2f}" for m, r in ratios.items()),
        all(1.5 <= r <= 2.5 for r in ratios.values()), ratios))
    key = lambda p: (p["method"], p["g0"], p["c"], p["w0_norm"], p["draw"])  # noqa: E731
    d_fine = {key(p): p["max_invariant_drift"] for p in _points(records, group="grid", eta=fine)}
    d_coarse = {key(p): p["max_invariant_drift"] for p in _points(records, group="grid", eta=coarse)}
    ratio = [d_coarse[k] / d_fine[k] for k in d_fine if d_fine[k] > 1e-12]
    worst = max(d_fine, key=d_fine.get)
    claims.append(Claim(
        "flow-invariant-conserved", SRC + ", Lemma 2.5; " + NOTES,
        "P⊥w(t)·exp(g(t)²/(2c‖w0‖²)) is constant along the WN flow (the η → 0 limit of WN and rPGD).",
        "the discrete runs' drift of the invariant is a step-size effect: for every trajectory its largest relative "
        "drift at least halves when η halves (ratio η : η/2 ≥ 1.5: first order or faster), so it vanishes along the flow",
        f"drift ratio η : η/2 from {min(ratio):.2f} to {max(ratio):.2f} over {len(ratio)} trajectories; largest drift "
        f"{d_fine[worst]:.2e} at η/2 ({LABELS[worst[0]]}, g0={worst[1]:g}, c={worst[2]:g}, ‖w0‖={worst[3]:g}: WN's "
        f"‖w‖ grows by η²‖∇w‖² a step, most where ‖w0‖ is small), median {np.median(list(d_fine.values())):.2e}",
        bool(ratio) and min(ratio) >= 1.5,
        {"min_ratio": min(ratio), "max_ratio": max(ratio), "max_drift_fine": d_fine[worst]}))
    grid = _points(records, group="grid")
    below = [p for p in grid if p["loss0"] < p["zero_loss"]]
    flipped_below = [p for p in below if np.sign(p["g_end"]) != np.sign(p["g0"])]
    flipped_above = [p for p in grid if p["loss0"] >= p["zero_loss"] and np.sign(p["g_end"]) != np.sign(p["g0"])]
    claims.append(Claim(
        "flow-sign-kept", NOTES + " (a sufficient condition, from Lemma 2.4: the loss never increases)",
        "A run that starts below the loss at zero (½‖Ax0 − y‖² < ½‖y‖²) never lets g cross 0, so g∞ has the sign "
        "of g0 and the closed form is unambiguous; the invariant alone fixes only |g∞|.",
        "no sign change of g among runs that start below the loss at zero",
        f"{len(flipped_below)} of {len(below)} such runs changed sign; of the {len(grid) - len(below)} runs starting "
        f"above it, {len(flipped_above)} ended with g∞ of the other sign (their limit is the closed form with that sign)",
        bool(below) and not flipped_below, {"flipped_below": len(flipped_below), "flipped_above": len(flipped_above)}))
    ex = sorted(_points(records, group="example", eta=fine), key=lambda p: (p["method"], p["g0"]))
    derived = max(np.linalg.norm(np.subtract(p["x"], p["x_flow"])) for p in ex)
    claims.append(Claim(
        "example-derived-limit", NOTES,
        "For A = [1, 0], y = 1, w0 = [0, 1], c = 1 the derived closed form gives the limit the runs reach.",
        f"‖x_sim − x∞(derived)‖ ≤ {cfg.tol:g} for every g0 and both methods",
        f"largest gap {derived:.2e}", derived <= cfg.tol, {"max_gap": derived}))
    src_gap = {(p["method"], p["g0"]): float(np.linalg.norm(np.subtract(p["x"], p["x_source"]))) for p in ex}
    claims.append(Claim(
        "example-source-limit", SRC + ", Sec. 2, 'A Concrete Example'",
        "Suppose we start with w0 = [0, 1]ᵀ and set c = 1 ... Then WN flow converges to a solution "
        "gw = [1, exp([g0² − 1]/2)]ᵀ.",
        f"‖x_sim − [1, exp((g0² − 1)/2)]‖ ≤ {cfg.tol:g} for every g0 and both methods",
        "; ".join(f"g0={p['g0']:g}: sim [{p['x'][0]:.4f}, {p['x'][1]:.4f}], source [{p['x_source'][0]:.4f}, "
                  f"{p['x_source'][1]:.4f}], derived [{p['x_flow'][0]:.4f}, {p['x_flow'][1]:.4f}]"
                  for p in ex if p["method"] == "wn")
        + " (rPGD lands on the same points)",
        max(src_gap.values()) <= cfg.tol, {"gap": {f"{m}@{g:g}": v for (m, g), v in src_gap.items()}}))
    return claims


def flow_limit_figures(records, cfg: FlowLimitConfig, out_dir) -> list[str]:
    from .figures import new_figure, save

    fig, axes = new_figure(1, 3, size=(15, 4.5))
    ax1, ax2, ax3 = axes
    curves = [r for r in records if r["kind"] == "curve" and r["group"] == "grid"]
    for r in curves:
        if r["metric"] == "invariant_drift" and r["draw"] == 0:
            ax1.semilogy(r["step"], np.maximum(r["value"], 1e-16), lw=0.8,
                         color="C0" if r["method"] == "wn" else "C1", alpha=0.6)
    ax1.plot([], [], color="C0", label=LABELS["wn"])
    ax1.plot([], [], color="C1", label=LABELS["rpgd"])
    ax1.set(xlabel="step (η/2)", ylabel="‖I(t) − I(0)‖ / ‖I(0)‖",
            title="invariant I = P⊥w·exp(g²/2c‖w0‖²) along trajectories")
    ax1.legend(fontsize=8)
    for eta, marker in ((cfg.eta, "x"), (cfg.eta / 2, "o")):
        for method, color in (("wn", "C0"), ("rpgd", "C1")):
            pts = _points(records, group="grid", method=method, eta=eta)
            ax2.scatter([p["flow_norm"] for p in pts], [max(p["err"], 1e-12) for p in pts], marker=marker, s=14,
                        color=color, label=f"{LABELS[method]}, η={eta:g}", alpha=0.7)
    ax2.set(yscale="log", xlabel="‖x∞‖ (theory)", ylabel="‖x_sim − x∞‖", title="simulation vs closed-form limit")
    ax2.legend(fontsize=7)
    ex = sorted(_points(records, group="example", method="wn", eta=cfg.eta / 2), key=lambda p: p["g0"])
    g0 = [p["g0"] for p in ex]
    ax3.plot(g0, [p["x"][1] for p in ex], "o", label="simulated (WN, η/2)")
    ax3.plot(g0, [p["x_flow"][1] for p in ex], "-", label="derived limit")
    ax3.plot(g0, [p["x_source"][1] for p in ex], "--", label="source: exp((g0² − 1)/2)")
    ax3.set(xlabel="g0", ylabel="limit of x[2] (x[1] = 1 for all)", title="the source's example: A=[1,0], w0=[0,1], c=1")
    ax3.legend(fontsize=8)
    return save(fig, out_dir, "flow_limit")


def flow_limit_notes(records, cfg: FlowLimitConfig) -> str:
    ex = sorted(_points(records, group="example", method="wn", eta=cfg.eta / 2), key=lambda p: p["g0"])
    lines = [
        f"Setup: {cfg.draws} random problems A ({cfg.m}×{cfg.d}, N(0, 1/m) entries), y ~ N(0, I); WN over "
        f"g0 ∈ {list(cfg.g0s)}, c ∈ {list(cfg.cs)}, ‖w0‖ ∈ {list(cfg.w0_norms)} (the same direction w0/‖w0‖), rPGD "
        f"over g0 and c (its w is unit); every copy at step η = {cfg.eta:g} and η/2, {cfg.steps} steps. Per-copy c "
        f"and η are gradient hooks on the scale and direction (plain SGD: a gradient multiplier is a step multiplier). "
        f"WN copies with ‖w0‖ > 1 step at ‖w0‖²·η (and ‖w0‖²·η/2): WN's direction moves at η/‖w0‖², and this change of clock "
        f"leaves the flow's limit (a function of c and ‖w0‖) unchanged.",
        "",
        "The source's concrete example, x[2] of the limit (x[1] = 1 in every case):",
        "",
        "| g0 | simulated (WN) | derived | source | derived g∞ |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {p['g0']:g} | {p['x'][1]:.4f} | {p['x_flow'][1]:.4f} | {p['x_source'][1]:.4f} | {p['g_flow']:.4f} |"
              for p in ex]
    lines += ["", "The source's formula equals g∞·exp(−(g∞² − g0²)/2)·(w0's null part) only if g∞ = 1; the flow "
              "ends with g∞ > 1 (g∞² solves G·(1 − exp(−(G − g0²))) = 1), so the source's limit is not where the "
              "flow goes (seed-findings.md). At g0 = 0 the start is a stationary point (g = 0, Aw0 = 0)."]
    return "\n".join(lines)


register(Experiment(
    name="wu-flow-limit",
    description="WN flow (Wu 002): closed-form limit and invariant vs small-step WN and rPGD; the source's example",
    sources=("002_3dce160b64f5f734.txt",),
    config_cls=FlowLimitConfig, run=flow_limit_run, claims=flow_limit_claims, figures=flow_limit_figures,
    notes=flow_limit_notes, quick={"g0s": (0.5, 2.0), "cs": (1.0,), "w0_norms": (1.0, 2.0), "draws": 2,
                                   "steps": 3000, "example_g0s": (0.5, 1.5)}))


# ==== wu-two-stage =================================================================================

@dataclass
class TwoStageConfig:
    m: int = 20
    d: int = 100
    draws: int = 5
    g0_ratio: float = 0.3  # g0 = ratio·g*, g* = ‖y‖ = ‖x†‖ for orthonormal rows
    freeze_steps: tuple[int, ...] = (0, 1, 2, 4, 8, 16, 32)  # T1; 0 is the one-stage run
    gamma: float = 0.2  # γ(2) < 1/4 (Theorem 3.2 (b))
    steps: int = 300
    seed: int = 2

    def validate(self):
        if not (0 < self.m < self.d) or self.draws < 1:
            raise ValueError(f"need 0 < m < d and draws >= 1, got m={self.m}, d={self.d}, draws={self.draws}")
        if not (0 < self.g0_ratio < 1):
            raise ValueError(f"Theorem 3.2 needs 0 < g0 < g*: g0_ratio must be in (0, 1), got {self.g0_ratio}")
        if not self.freeze_steps or min(self.freeze_steps) < 0 or max(self.freeze_steps) >= self.steps:
            raise ValueError("freeze_steps must be non-negative and below steps")
        if not (0 < self.gamma < 0.25):
            raise ValueError(f"Theorem 3.2 (b) takes 0 < γ(2) < 1/4, got gamma={self.gamma}")


def two_stage_run(cfg: TwoStageConfig, progress) -> list[dict]:
    gen = torch.Generator().manual_seed(cfg.seed)
    Q = torch.linalg.qr(torch.randn(cfg.draws, cfg.d, cfg.m, generator=gen, dtype=torch.float64)).Q
    A = Q.mT  # orthonormal rows: AAᵀ = I
    y = torch.randn(cfg.draws, cfg.m, generator=gen, dtype=torch.float64)
    x_dag = torch.einsum("kmd,km->kd", A, y)  # x† = Aᵀy, ‖x†‖ = ‖y‖ = g*
    P = torch.eye(cfg.d, dtype=torch.float64) - A.mT @ A
    w0 = torch.randn(cfg.draws, cfg.d, generator=gen, dtype=torch.float64)
    w0 = w0 / w0.norm(dim=1, keepdim=True)
    g_star = x_dag.norm(dim=1)
    x0 = (cfg.g0_ratio * g_star)[:, None] * w0
    runs = {}
    for T1 in cfg.freeze_steps:
        model = Weights(x0)
        po.polarize(model, "weight", scale="tensor", mode="project", batch_dims=1)
        g, w = po.scale_of(model), po.direction_of(model)
        # Condition 3.1: the step on w is 1/g_t² (the optimal step for orthonormal A), per copy: SGD with lr 1
        # on the direction and its gradient divided by g² (for plain SGD a gradient factor is a step factor)
        w.register_hook(lambda grad, g=g: grad / g.detach().square())
        opt = torch.optim.SGD(po.param_groups(model, scale={"lr": cfg.gamma}, direction={"lr": 1.0}), lr=1.0)
        po.attach(opt, model)
        runs[T1] = (model, opt, po.TwoStageLR(opt, freeze_steps=T1), g, w)
    hist = {T1: {"dist": [], "g": [], "wperp": []} for T1 in runs}
    for t in progress(range(cfg.steps + 1), desc="wu-two-stage", mininterval=1.0):
        total = 0
        for T1, (model, opt, sched, g, w) in runs.items():
            with torch.no_grad():
                hist[T1]["dist"].append((model.weight - x_dag).norm(dim=1))
                hist[T1]["g"].append(g.detach().reshape(-1).clone())
                hist[T1]["wperp"].append(torch.einsum("kij,kj->ki", P, w.detach()).norm(dim=1))
            total = total + residual_loss(A, y, model.weight).sum()
        if t == cfg.steps:
            break
        for _, opt, *_ in runs.values():
            opt.zero_grad()
        total.backward()
        for _, opt, sched, *_ in runs.values():
            opt.step()
            sched.step()
    records = []
    steps = list(range(cfg.steps + 1))
    for T1, h in hist.items():
        for metric in ("dist", "g", "wperp"):
            values = torch.stack(h[metric])
            for k in range(cfg.draws):
                records.append({"kind": "curve", "freeze_steps": T1, "draw": k, "metric": metric,
                                "g_star": float(g_star[k]), "step": steps, "value": values[:, k].tolist()})
    return records


def _two_stage_curves(records):
    out: dict = {}
    for r in records:
        if r["kind"] == "curve":
            out.setdefault(r["metric"], {}).setdefault(r["freeze_steps"], {})[r["draw"]] = (np.asarray(r["value"]), r["g_star"])
    return out


def two_stage_claims(records, cfg: TwoStageConfig) -> list[Claim]:
    c = _two_stage_curves(records)
    T1s = sorted(c["dist"])
    src = SRC + ", Sec. 3, Theorem 3.2 (b) (orthonormal A, γ(1) = 0, η_t = 1/g_t²)"
    # 1. stage one: ‖w⊥_{t+1}‖² ≤ (g_t²/g*²)·‖w⊥_t‖² at every step before T1
    worst, checked = -np.inf, 0
    for T1 in T1s:
        for k, (wp, gs) in c["wperp"][T1].items():
            g = c["g"][T1][k][0]
            for t in range(T1):
                worst = max(worst, wp[t + 1] ** 2 - (g[t] ** 2 / gs**2) * wp[t] ** 2)
                checked += 1
    claims = [Claim(
        "stage1-geometric", src + " and its proof sketch",
        "With g frozen, ‖w⊥_{t+1}‖² ≤ (g_t²/g*²)·‖w⊥_t‖²: the null-space part of the direction shrinks geometrically.",
        "the inequality holds (to 1e-12) at every stage-one step of every run",
        f"{checked} steps checked; largest excess {worst:.2e}", checked > 0 and worst <= 1e-12,
        {"steps_checked": checked, "max_excess": float(worst)})]
    final = {T1: np.array([d[-1] / gs for d, gs in c["dist"][T1].values()]) for T1 in T1s}
    means = [final[T1].mean() for T1 in T1s]
    monotone = all(b <= a * (1 + 1e-9) + 1e-15 for a, b in zip(means, means[1:]))
    claims.append(Claim(
        "two-stage-closer-with-longer-freeze", src,
        "The first T1 iterations let w_t 'find' w* (‖w⊥‖ ≤ ε after T1), the rest let g_t converge to g*: freezing "
        "g longer ends closer to the minimum-norm solution, and the one-stage run (T1 = 0) ends farthest.",
        "the mean final relative distance ‖x − x†‖/‖x†‖ does not increase with T1, and every T1 > 0 ends closer "
        "than T1 = 0",
        ", ".join(f"T1={T1}: {m:.2e}" for T1, m in zip(T1s, means)),
        monotone and (0 not in final or all(final[T1].mean() < final[0].mean() for T1 in T1s if T1 > 0)),
        {"final_rel_dist": dict(zip(map(str, T1s), means))}))
    longest = max(T1s)
    claims.append(Claim(
        "two-stage-reaches-min-norm", src,
        "rPGD with the two-stage step sizes converges to the minimum ℓ2-norm solution from g0 < g*.",
        f"with the longest freeze (T1 = {longest}) every run ends within 1e-6·‖x†‖ of x†",
        f"largest final relative distance {final[longest].max():.2e}", bool(final[longest].max() <= 1e-6),
        {"max_final_rel_dist": float(final[longest].max())}))
    drops = {T1: min(float(np.min(np.diff(g))) for g, _ in c["g"][T1].values()) for T1 in T1s}
    where = [(T1, k, int(np.argmin(np.diff(g)))) for T1 in T1s for k, (g, _) in c["g"][T1].items()
             if np.min(np.diff(g)) < -1e-12]
    claims.append(Claim(
        "g-increasing", SRC + ", Sec. 3 (Lemma E.4)",
        "Our proof shows that g_t is always increasing for any g0 > 0.",
        "g_{t+1} ≥ g_t (to 1e-12) at every step of every run",
        "smallest step change of g: " + ", ".join(f"T1={T1}: {v:.2e}" for T1, v in drops.items())
        + (f". Decreases at (T1, draw, step) = {', '.join(map(str, where[:6]))}: the first step of g sees the random "
           f"w0, and ∂f/∂g = g0‖Aw0‖² − w0ᵀx† > 0 when w0 points away from x†; after one w-step (Aw ∝ x†) g only grows"
           if where else ""),
        not where, {"min_dg": drops}))
    return claims


def two_stage_figures(records, cfg: TwoStageConfig, out_dir) -> list[str]:
    from .figures import new_figure, save

    c = _two_stage_curves(records)
    fig, (ax1, ax2) = new_figure(1, 2, size=(11, 4.5))
    for i, T1 in enumerate(sorted(c["dist"])):
        d = np.mean([v / gs for v, gs in c["dist"][T1].values()], axis=0)
        wp = np.mean([v for v, _ in c["wperp"][T1].values()], axis=0)
        label = "one-stage (T1 = 0)" if T1 == 0 else f"T1 = {T1}"
        ax1.semilogy(np.maximum(d, 1e-17), label=label, color=f"C{i}")
        ax2.semilogy(np.maximum(wp, 1e-17), label=label, color=f"C{i}")
    ax1.set(xlabel="step", ylabel="‖x − x†‖ / ‖x†‖", title=f"distance to x† (mean over {cfg.draws} draws)")
    ax2.set(xlabel="step", ylabel="‖P⊥w‖", title="null-space part of the direction")
    ax1.legend(fontsize=8)
    return save(fig, out_dir, "two_stage")


def two_stage_notes(records, cfg: TwoStageConfig) -> str:
    return "\n".join([
        f"Setup: A ({cfg.m}×{cfg.d}) with orthonormal rows (QR of a Gaussian matrix), y ~ N(0, I), so x† = Aᵀy and "
        f"g* = ‖y‖; w0 uniform on the sphere, g0 = {cfg.g0_ratio:g}·g*. rPGD (`mode='project'`) with the step "
        f"1/g_t² on w (a gradient hook on the direction) and γ on g, frozen for the first T1 steps by "
        f"`polaropt.TwoStageLR` — the source's case (b), γ(1) = 0, γ(2) = {cfg.gamma:g} < 1/4. The source's "
        f"case (a) (a small nonzero γ(1)) and Proposition 3.3 (general A, fixed g, then GD) are not run; the "
        f"seed's step-size conditions for (a) are partly garbled (seed-findings.md).",
        "",
        "With η_t = 1/g_t² and AAᵀ = I one rPGD step on w gives v = P⊥w + x†/g exactly, so the row-space part "
        "is found in one step and ‖w⊥‖ shrinks by 1/‖v‖ each step; once g is released it grows towards g* and "
        "the shrink factor tends to 1, which is why a one-stage run keeps part of w⊥.",
    ])


register(Experiment(
    name="wu-two-stage",
    description="Two-stage rPGD (Wu 002, Thm 3.2): g frozen for T1 steps, then released; sweep T1 vs one-stage",
    sources=("002_3dce160b64f5f734.txt",),
    config_cls=TwoStageConfig, run=two_stage_run, claims=two_stage_claims, figures=two_stage_figures,
    notes=two_stage_notes, quick={"draws": 2, "freeze_steps": (0, 2, 8, 32), "steps": 150}))
