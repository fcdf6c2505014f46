"""CS182 discussion "Optimizers as penalized linear improvement", "RMS norm" and "Optimizers and their
convergence" (seed 004), re-run with polaropt's public API (``SteepestDescent``) and torch optimizers.

- ``cs182-implicit-bias``: [1, 0.1, 0.01]·θ = 1 from θ = 0 with gradient descent (``SteepestDescent``
  with ``norm="l2"``), sign descent with a diminishing step (SGD on the sign of the gradient), steepest
  descent under ℓ∞ (``norm="linf"``) and Adam; then random under-determined systems, where each
  optimizer's limit shows its implicit bias.
- ``cs182-rms``: ‖x‖₂ and ‖x‖_RMS against d for Gaussian x; E‖Wx‖²_RMS = d1 and the 1/√d1 (Xavier)
  fix; the unit balls of ℓ1, ℓ2, RMS and ℓ∞ in 2D.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

import polaropt as po
from polaropt import theory

from .framework import Claim, Experiment, register

SRC = "004 CS182 discussion"
LABELS = {"gd": "GD (SteepestDescent l2)", "sign": "sign descent, step η0/(t+1)^p", "linf": "SteepestDescent linf",
          "adam": "Adam, lr η/√(1 + t/100)", "sign_const": "sign descent, constant step"}


def _optimizer(method: str, params, cfg):
    """The optimizer and its schedule (or None) for one method."""
    if method == "gd":
        return po.SteepestDescent(params, lr=cfg.gd_lr, norm="l2"), None
    if method == "linf":
        return po.SteepestDescent(params, lr=cfg.linf_lr, norm="linf"), None
    if method in ("sign", "sign_const"):
        for p in params:  # sign descent = SGD on sign(g): the hook replaces the gradient by its sign
            p.register_hook(torch.sign)
        opt = torch.optim.SGD(params, lr=cfg.sign_lr)
        if method == "sign":
            return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda t: (t + 1) ** -cfg.sign_power)
        return opt, None
    if method == "adam":
        opt = torch.optim.Adam(params, lr=cfg.adam_lr)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / math.sqrt(1 + t / 100))
    raise ValueError(f"unknown method {method!r}; valid choices are {', '.join(LABELS)}")


def train(A: torch.Tensor, y: torch.Tensor, methods, cfg, steps: int) -> dict:
    """Minimize Σ_k ‖A_k θ_k − y_k‖² from θ = 0 with every method side by side; {method: [copies, d]}.

    SteepestDescent's ℓ∞ step couples the entries of a tensor through ‖g‖₁, so under ℓ∞ every copy has its
    own parameter; the other methods act entrywise (GD, sign descent, Adam), so their copies share one
    [copies, d] tensor. Every optimizer treats parameters independently, so one loop serves all of them.
    """
    d = A.shape[-1]
    params = {m: ([torch.nn.Parameter(torch.zeros(d, dtype=A.dtype)) for _ in range(len(A))] if m == "linf"
                  else [torch.nn.Parameter(torch.zeros(len(A), d, dtype=A.dtype))]) for m in methods}
    opts = {m: _optimizer(m, params[m], cfg) for m in methods}
    losses = {m: [] for m in methods}
    for t in range(steps + 1):
        total = 0
        for m in methods:
            theta = torch.stack(params[m]) if m == "linf" else params[m][0]
            loss = (torch.einsum("kmd,kd->km", A, theta) - y).square().sum(-1)  # the source's squared loss
            losses[m].append(loss.detach())
            total = total + loss.sum()
        if t == steps:
            break
        for opt, _ in opts.values():
            opt.zero_grad()
        total.backward()
        for opt, sched in opts.values():
            opt.step()
            if sched is not None:
                sched.step()
    return {m: ((torch.stack(params[m]) if m == "linf" else params[m][0]).detach(), torch.stack(losses[m]))
            for m in methods}


# ==== cs182-implicit-bias ==========================================================================

@dataclass
class ImplicitBiasConfig:
    a: tuple[float, ...] = (1.0, 0.1, 0.01)
    steps: int = 3000
    gd_lr: float = 0.5  # SteepestDescent's lr: the l2 step is −(lr/2)·g
    linf_lr: float = 0.2
    sign_lr: float = 0.1  # η0 of the sign-descent schedule η0/(t+1)^p
    sign_power: float = 0.6
    adam_lr: float = 0.01
    m: int = 10  # the random under-determined systems
    d: int = 40
    draws: int = 10
    random_steps: int = 3000
    seed: int = 0

    def validate(self):
        if len(self.a) < 2 or not any(self.a):
            raise ValueError(f"a needs at least 2 entries, not all zero, got {self.a}")
        if min(self.gd_lr, self.linf_lr, self.sign_lr, self.adam_lr) <= 0 or not (0 < self.sign_power <= 1):
            raise ValueError("learning rates must be > 0 and sign_power in (0, 1] (Σ steps must diverge)")
        if not (0 < self.m < self.d) or self.draws < 1 or self.steps < 1 or self.random_steps < 1:
            raise ValueError(f"need 0 < m < d, draws >= 1, steps >= 1; got m={self.m}, d={self.d}")


def implicit_bias_run(cfg: ImplicitBiasConfig, progress) -> list[dict]:
    records = []
    a = torch.tensor([cfg.a], dtype=torch.float64)
    methods = ("gd", "sign", "sign_const", "linf", "adam")
    out = train(a[None], torch.ones(1, 1, dtype=torch.float64), methods, cfg, cfg.steps)
    for m, (theta, loss) in out.items():
        records.append({"kind": "point", "problem": "toy", "method": m, "draw": 0, "theta": theta[0].tolist()})
        records.append({"kind": "curve", "problem": "toy", "method": m, "metric": "loss", "draw": 0,
                        "step": list(range(cfg.steps + 1)), "value": loss[:, 0].tolist()})
    gen = torch.Generator().manual_seed(cfg.seed)
    A = torch.randn(cfg.draws, cfg.m, cfg.d, generator=gen, dtype=torch.float64) / math.sqrt(cfg.m)
    y = torch.randn(cfg.draws, cfg.m, generator=gen, dtype=torch.float64)
    methods = ("gd", "sign", "linf", "adam")
    # the l2 step must stay below 2/λmax of the loss's Hessian 2AᵀA: lr/2 < 1/λmax(AᵀA); same for ℓ∞ over d
    lam = float(torch.linalg.eigvalsh(A @ A.mT).max())
    cfg_r = dataclasses.replace(cfg, gd_lr=1.0 / lam, linf_lr=0.5 / (lam * cfg.d))
    out = train(A, y, methods, cfg_r, cfg.random_steps)
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
                            "at_max": float(np.mean(np.abs(t) >= 0.95 * np.abs(t).max()))})
    return records


def implicit_bias_claims(records, cfg: ImplicitBiasConfig) -> list[Claim]:
    a = np.asarray(cfg.a)
    toy = {r["method"]: np.asarray(r["theta"]) for r in records if r["kind"] == "point" and r["problem"] == "toy"}
    loss = {r["method"]: np.asarray(r["value"]) for r in records if r["kind"] == "curve" and r["problem"] == "toy"}
    gd_target = a / (a @ a)
    sign_target = np.ones_like(a) / a.sum()
    fmt = lambda v: "[" + ", ".join(f"{x:.6f}" for x in v) + "]"  # noqa: E731
    src3 = SRC + ", problem 3"
    claims = []
    err = float(np.linalg.norm(toy["gd"] - gd_target))
    claims.append(Claim(
        "toy-gd-limit", src3,
        "SGD (= GD, one training point) from θ = 0 converges to θ* = [1, 0.1, 0.01]/1.0101 = a/‖a‖².",
        "‖θ_GD − a/‖a‖²‖ ≤ 1e-8", f"θ_GD = {fmt(toy['gd'])}, a/‖a‖² = {fmt(gd_target)}, gap {err:.1e}",
        err <= 1e-8, {"gap": err}))
    last_step = cfg.sign_lr * cfg.steps ** -cfg.sign_power
    err = float(np.linalg.norm(toy["sign"] - sign_target))
    claims.append(Claim(
        "toy-sign-limit", src3,
        "signSGD with a diminishing step converges to θ₂* = [1, 1, 1]/1.11 (= 1/Σaᵢ per entry).",
        f"‖θ_sign − [1, 1, 1]/Σa‖ ≤ √d·η_T = {math.sqrt(len(a)) * last_step:.2e} (one step of the schedule at the end)",
        f"θ_sign = {fmt(toy['sign'])}, [1,1,1]/Σa = {fmt(sign_target)}, gap {err:.1e}",
        err <= math.sqrt(len(a)) * last_step, {"gap": err}))
    err = float(np.linalg.norm(toy["adam"] - sign_target))
    claims.append(Claim(
        "toy-adam-limit", "seed-findings.md (CS182: Adam checked) and " + src3,
        "Adam, like signSGD, converges to [1, 1, 1]/1.11: its per-coordinate normalization makes every entry move alike.",
        "‖θ_Adam − [1, 1, 1]/Σa‖ ≤ 1e-3 (Adam's ε = 1e-8 perturbs the equal moves slightly)",
        f"θ_Adam = {fmt(toy['adam'])}, gap {err:.1e}", err <= 1e-3, {"gap": err}))
    tail = float(loss["sign_const"][-100:].max())
    floor = (0.5 * a.sum() * cfg.sign_lr) ** 2
    claims.append(Claim(
        "toy-sign-constant-step-fails", src3,
        "To get this convergence, we need a diminishing step size; a constant step size wouldn't work.",
        f"with the constant step η0 = {cfg.sign_lr:g}, the loss over the last 100 steps stays ≥ (Σa·η0/2)² = "
        f"{floor:.2e} (θ jumps across the solution line by Σa·η0 in the residual), while the diminishing schedule "
        f"ends below it",
        f"constant step: max loss over the last 100 steps {tail:.2e}; diminishing: final loss {loss['sign'][-1]:.2e}",
        tail >= floor and loss["sign"][-1] < floor, {"constant_tail": tail, "diminishing_final": float(loss["sign"][-1])}))
    err = float(np.linalg.norm(toy["linf"] - sign_target))
    claims.append(Claim(
        "toy-linf-steepest-limit", SRC + ", problem 1 (penalized linear improvement) applied to problem 3",
        "Steepest descent under ℓ∞, −(α/2)·‖g‖₁·sign(g), moves along sign(g) = ±[1, 1, 1] like signSGD, and its "
        "step shrinks with the gradient, so a constant α converges to [1, 1, 1]/1.11.",
        "‖θ_linf − [1, 1, 1]/Σa‖ ≤ 1e-8", f"θ_linf = {fmt(toy['linf'])}, gap {err:.1e}", err <= 1e-8, {"gap": err}))
    rnd = [r for r in records if r["kind"] == "point" and r["problem"] == "random"]
    by = lambda m: [r for r in rnd if r["method"] == m]  # noqa: E731
    gd_gap = max(r["dist_l2_solution"] / r["min_norm2"] for r in by("gd"))
    claims.append(Claim(
        "random-gd-min-l2", src3 + " (the argument for any under-determined system)",
        "GD from 0 only moves in the row space of A, so it converges to the minimum-ℓ2-norm solution.",
        "‖θ_GD − x†‖ ≤ 1e-8·‖x†‖ in every draw (x† from SciPy's least squares)",
        f"largest relative gap {gd_gap:.1e} over {len(by('gd'))} draws", gd_gap <= 1e-8, {"max_rel_gap": gd_gap}))
    rows = []
    ok = True
    for m in ("sign", "linf"):
        ratio = [r["norm_inf"] / r["min_norm_inf"] for r in by(m)]
        dag = [r["min_l2_norm_inf"] / r["min_norm_inf"] for r in by(m)]
        below = all(r["norm_inf"] < r["min_l2_norm_inf"] for r in by(m))
        conv = max(r["loss"] for r in by(m))
        ok &= below and conv <= 1e-3
        rows.append(f"{LABELS[m]}: ‖θ‖∞/min‖·‖∞ median {np.median(ratio):.3f} (x†: {np.median(dag):.3f}), "
                    f"below x†'s in {'every' if below else 'NOT every'} draw, entries within 5% of the max: median "
                    f"{100 * np.median([r['at_max'] for r in by(m)]):.0f}%, final loss ≤ {conv:.1e}")
    claims.append(Claim(
        "random-sign-linf-flavoured", src3 + " (signSGD's limit, generalized)",
        "Sign-based steps move every coordinate by the same amount, so their limit is ℓ∞-flavoured: a smaller "
        "largest entry than the minimum-ℓ2 solution's, with many entries near the maximum.",
        "for sign descent and ℓ∞ steepest descent, ‖θ‖∞ < ‖x†‖∞ in every draw, every run at loss ≤ 1e-3 (a residual "
        "≤ 0.03, small against the norms compared; sign descent's diminishing step converges slowly) "
        "(‖θ‖∞ is compared with the minimum-ℓ∞ solution from linprog; they need not be equal)",
        "; ".join(rows), ok, {}))
    return claims


def implicit_bias_figures(records, cfg: ImplicitBiasConfig, out_dir) -> list[str]:
    from .figures import new_figure, save

    fig, (ax1, ax2) = new_figure(1, 2, size=(11, 4.5))
    for r in records:
        if r["kind"] == "curve" and r["problem"] == "toy":
            ax1.semilogy(r["step"], np.maximum(r["value"], 1e-32), label=LABELS[r["method"]], lw=1.2)
    ax1.set(xlabel="step", ylabel="(1 − aᵀθ)²", title=f"a = {list(cfg.a)}: loss")
    ax1.legend(fontsize=7)
    rnd = [r for r in records if r["kind"] == "point" and r["problem"] == "random"]
    methods = list(dict.fromkeys(r["method"] for r in rnd))
    for i, m in enumerate(methods):
        pts = [r for r in rnd if r["method"] == m]
        ax2.scatter([r["norm2"] / r["min_norm2"] for r in pts], [r["norm_inf"] / r["min_norm_inf"] for r in pts],
                    label=LABELS[m], s=18, color=f"C{i}")
    ax2.axvline(1, color="gray", lw=0.8, ls=":")
    ax2.axhline(1, color="gray", lw=0.8, ls=":")
    ax2.set(xlabel="‖θ‖₂ / min ‖·‖₂", ylabel="‖θ‖∞ / min ‖·‖∞",
            title=f"random {cfg.m}×{cfg.d} systems: where each optimizer lands")
    ax2.legend(fontsize=7)
    return save(fig, out_dir, "implicit_bias")


def implicit_bias_notes(records, cfg: ImplicitBiasConfig) -> str:
    rnd = [r for r in records if r["kind"] == "point" and r["problem"] == "random"]
    lines = [f"Loss (1 − aᵀθ)² as in the source; θ0 = 0. Sign descent is SGD on sign(∇) (a gradient hook), step "
             f"η0/(t+1)^p with η0 = {cfg.sign_lr:g}, p = {cfg.sign_power:g}; Adam's lr decays as 1/√(1 + t/100) "
             f"(the source calls signSGD 'this highly simplified version of Adam'). Random systems: A ({cfg.m}×{cfg.d}, "
             f"N(0, 1/m) entries), y ~ N(0, I), squared loss summed over rows; GD's lr is 1/λmax(AAᵀ) and ℓ∞'s "
             f"0.5/(d·λmax) (a stable step for each).", "",
             "Where each optimizer lands on the random systems (median over draws):", "",
             "| method | ‖θ‖₂/min‖·‖₂ | ‖θ‖∞/min‖·‖∞ | final loss (max) |", "|---|---|---|---|"]
    for m in dict.fromkeys(r["method"] for r in rnd):
        pts = [r for r in rnd if r["method"] == m]
        lines.append(f"| {LABELS[m]} | {np.median([r['norm2'] / r['min_norm2'] for r in pts]):.3f} | "
                     f"{np.median([r['norm_inf'] / r['min_norm_inf'] for r in pts]):.3f} | "
                     f"{max(r['loss'] for r in pts):.1e} |")
    lines += ["", "Adam lands between the two: its per-coordinate scaling is sign-like only while the gradients' "
              "magnitudes are steady; on a general system it is neither the ℓ2 nor the ℓ∞ minimizer. Steepest "
              "descent under ℓ∞ is not mirror descent: its limit is close to, not equal to, the minimum-ℓ∞ solution."]
    return "\n".join(lines)


register(Experiment(
    name="cs182-implicit-bias",
    description="Implicit bias of GD, sign descent, ℓ∞ steepest descent and Adam on [1, 0.1, 0.01]·θ = 1 (CS182 004)",
    sources=("004_65400c7305219704.txt",),
    config_cls=ImplicitBiasConfig, run=implicit_bias_run, claims=implicit_bias_claims, figures=implicit_bias_figures,
    notes=implicit_bias_notes, quick={"steps": 2000, "draws": 3, "random_steps": 1500}))


# ==== cs182-rms ====================================================================================

@dataclass
class RmsConfig:
    dims: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
    samples: int = 2000
    d1s: tuple[int, ...] = (4, 16, 64, 256, 1024)
    d2s: tuple[int, ...] = (8, 256)
    layer_samples: int = 400
    tol: float = 0.05
    seed: int = 0

    def validate(self):
        if min(self.dims) < 1 or min(self.d1s) < 1 or min(self.d2s) < 1:
            raise ValueError("dims, d1s and d2s must be positive")
        if self.samples < 10 or self.layer_samples < 10:
            raise ValueError("samples and layer_samples must be at least 10")


def rms_run(cfg: RmsConfig, progress) -> list[dict]:
    gen = torch.Generator().manual_seed(cfg.seed)
    records = []
    for d in cfg.dims:
        x = torch.randn(cfg.samples, d, generator=gen, dtype=torch.float64)
        l2 = x.norm(dim=1)
        rms = l2 / math.sqrt(d)
        records.append({"kind": "point", "part": "norms", "d": d, "l2_mean": float(l2.mean()),
                        "l2_se": float(l2.std() / math.sqrt(cfg.samples)), "rms_mean": float(rms.mean()),
                        "rms_se": float(rms.std() / math.sqrt(cfg.samples))})
    for d1 in progress(cfg.d1s, desc="cs182-rms"):
        for d2 in cfg.d2s:
            ms_all = []
            # enough samples for a standard error ≤ tol/3: ‖Wx‖²_RMS/d1 = (‖x‖²/d1)·(χ²_d2/d2) has relative
            # variance (1 + 2/d1)(1 + 2/d2) − 1, large when d1 and d2 are small
            relvar = (1 + 2 / d1) * (1 + 2 / d2) - 1
            total = max(cfg.layer_samples, math.ceil(9 * relvar / cfg.tol**2 * 1.2))
            for start in range(0, total, 16):  # in chunks: W alone is samples·d2·d1 numbers
                n = min(16, total - start)
                W = torch.randn(n, d2, d1, generator=gen, dtype=torch.float64)
                x = torch.randn(n, d1, generator=gen, dtype=torch.float64)
                ms_all.append(torch.einsum("soi,si->so", W, x).square().mean(dim=1))  # ‖Wx‖²_RMS per sample
            ms_plain = torch.cat(ms_all)
            for scale, label in ((1.0, "plain"), (1 / math.sqrt(d1), "xavier")):
                ms = ms_plain * scale**2  # ‖(cW)x‖²_RMS = c²·‖Wx‖²_RMS
                records.append({"kind": "point", "part": "layer", "init": label, "d1": d1, "d2": d2, "samples": total,
                                "rms_sq_mean": float(ms.mean()), "rms_sq_se": float(ms.std() / math.sqrt(total))})
    angles = np.linspace(0, 2 * np.pi, 721)
    u = np.stack([np.cos(angles), np.sin(angles)], 1)
    norms = {"l1": np.abs(u).sum(1), "l2": np.linalg.norm(u, axis=1), "rms": np.linalg.norm(u, axis=1) / math.sqrt(2),
             "linf": np.abs(u).max(1)}
    for name, n in norms.items():  # the unit sphere of each norm along direction u is u/‖u‖
        records.append({"kind": "curve", "part": "ball", "norm": name, "metric": "radius", "step": angles.tolist(),
                        "value": (1 / n).tolist()})
    return records


def rms_claims(records, cfg: RmsConfig) -> list[Claim]:
    src2 = SRC + ", problem 2"
    norms = sorted((r for r in records if r["kind"] == "point" and r["part"] == "norms"), key=lambda r: r["d"])
    big = [r for r in norms if r["d"] >= 16]
    slope = float(np.polyfit(np.log([r["d"] for r in big]), np.log([r["l2_mean"] for r in big]), 1)[0]) if len(big) >= 2 else float("nan")
    jensen = all(r["l2_mean"] <= math.sqrt(r["d"]) + 3 * r["l2_se"] for r in norms)
    claims = [Claim(
        "l2-grows-like-sqrt-d", src2 + " (a)",
        "E‖x‖₂ ≤ √(Σ E xᵢ²) = O(√d) for x with i.i.d. standard Gaussian entries.",
        "E‖x‖₂ ≤ √d at every d (the Monte Carlo mean within 3 standard errors of the bound or below), and the "
        "log-log slope of E‖x‖₂ against d over d ≥ 16 is 0.5 ± 0.02",
        f"slope {slope:.4f}; E‖x‖₂ ≤ √d at every d: {jensen}", jensen and abs(slope - 0.5) <= 0.02,
        {"slope": slope})]
    rms = [(r["d"], r["rms_mean"], r["rms_se"]) for r in big]
    claims.append(Claim(
        "rms-is-constant", src2 + " (a)",
        "The RMS norm is the Euclidean norm divided by √d, so for Gaussian x its expectation is constant, O(1).",
        f"E‖x‖_RMS within [1 − {cfg.tol:g}, 1] for every d ≥ 16 (≤ 1 by Jensen, → 1 as d grows; the Monte Carlo "
        f"mean may exceed 1 by at most 3 standard errors)",
        ", ".join(f"d={d}: {v:.4f} ± {se:.4f}" for d, v, se in rms),
        bool(rms) and all(1 - cfg.tol <= v <= 1 + 3 * se for _, v, se in rms), {"rms_mean": {d: v for d, v, _ in rms}}))
    layer = [r for r in records if r["kind"] == "point" and r["part"] == "layer"]
    for init, target_of, stmt in (
            ("plain", lambda r: r["d1"], "E‖y‖²_RMS = d1 for y = Wx with i.i.d. unit Gaussian W and x; it does not depend on d2."),
            ("xavier", lambda r: 1.0, "Multiplying W by 1/√d1 (Xavier) makes E‖Wx‖²_RMS = 1 regardless of d1 and d2.")):
        rows = [r for r in layer if r["init"] == init]
        rel = [r["rms_sq_mean"] / target_of(r) for r in rows]
        z = [abs(r["rms_sq_mean"] - target_of(r)) / r["rms_sq_se"] for r in rows]
        se = [r["rms_sq_se"] / target_of(r) for r in rows]
        claims.append(Claim(
            f"layer-rms-{init}", src2 + " (c)", stmt,
            f"for every (d1, d2) the Monte Carlo mean is within 3 standard errors of {'d1' if init == 'plain' else '1'}, "
            f"with a relative standard error ≤ {cfg.tol:g}/3 (so a {100 * cfg.tol:g}% departure would be seen)",
            ", ".join(f"(d1={r['d1']}, d2={r['d2']}): {x:.3f} ({zz:.1f} s.e., n={r['samples']})"
                      for r, x, zz in zip(rows, rel, z)) + " (ratio to the target, distance in standard errors)",
            bool(rel) and all(zz <= 3 for zz in z) and all(e <= cfg.tol / 3 for e in se),
            {"ratios": rel, "z": z, "relative_se": se}))
    balls = {r["norm"]: np.asarray(r["value"]) for r in records if r["kind"] == "curve" and r["part"] == "ball"}
    nested = bool(np.all(balls["l1"] <= balls["l2"] + 1e-12) and np.all(balls["l2"] <= balls["linf"] + 1e-12)
                  and np.all(balls["linf"] <= balls["rms"] + 1e-12))
    rms_r = float(np.max(np.abs(balls["rms"] - math.sqrt(2))))
    claims.append(Claim(
        "unit-balls-2d", src2 + " (b), Figure 1",
        "The unit balls in 2D: the RMS ball is the ℓ2 ball of radius √2, and the balls nest ℓ1 ⊂ ℓ2 ⊂ ℓ∞ ⊂ RMS "
        "(the ℓ∞ square touches the RMS circle at its corners).",
        "RMS radius = √2 in every direction (to 1e-12); radii ordered ℓ1 ≤ ℓ2 ≤ ℓ∞ ≤ RMS in every direction",
        f"max |r_RMS − √2| = {rms_r:.1e}; nested in every direction: {nested}", rms_r <= 1e-12 and nested, {}))
    return claims


def rms_figures(records, cfg: RmsConfig, out_dir) -> list[str]:
    from .figures import new_figure, save

    fig, axes = new_figure(1, 3, size=(15, 4.5))
    ax1, ax2, ax3 = axes
    norms = sorted((r for r in records if r["kind"] == "point" and r["part"] == "norms"), key=lambda r: r["d"])
    d = np.array([r["d"] for r in norms])
    ax1.loglog(d, [r["l2_mean"] for r in norms], "o-", label="E‖x‖₂")
    ax1.loglog(d, [r["rms_mean"] for r in norms], "s-", label="E‖x‖_RMS")
    ax1.loglog(d, np.sqrt(d), "k:", lw=1, label="√d")
    ax1.set(xlabel="d", ylabel="norm", title="Gaussian x: ℓ2 grows like √d, RMS stays O(1)")
    ax1.legend(fontsize=8)
    layer = [r for r in records if r["kind"] == "point" and r["part"] == "layer"]
    for i, d2 in enumerate(cfg.d2s):
        for init, marker in (("plain", "o-"), ("xavier", "s--")):
            rows = sorted((r for r in layer if r["d2"] == d2 and r["init"] == init), key=lambda r: r["d1"])
            ax2.loglog([r["d1"] for r in rows], [r["rms_sq_mean"] for r in rows], marker, color=f"C{i}",
                       label=f"{'W' if init == 'plain' else 'W/√d1'}, d2={d2}")
    d1 = np.array(sorted(cfg.d1s))
    ax2.loglog(d1, d1, "k:", lw=1, label="d1")
    ax2.set(xlabel="d1", ylabel="E‖Wx‖²_RMS", title="layer output scale and the Xavier fix")
    ax2.legend(fontsize=7)
    for r in records:
        if r["kind"] == "curve" and r["part"] == "ball":
            th, rad = np.asarray(r["step"]), np.asarray(r["value"])
            ax3.plot(rad * np.cos(th), rad * np.sin(th), label={"l1": "ℓ1", "l2": "ℓ2", "rms": "RMS", "linf": "ℓ∞"}[r["norm"]])
    ax3.set(aspect="equal", title="unit balls in 2D", xlabel="x₁", ylabel="x₂")
    ax3.legend(fontsize=8)
    return save(fig, out_dir, "rms")


def rms_notes(records, cfg: RmsConfig) -> str:
    return (f"Monte Carlo: {cfg.samples} Gaussian vectors per d; {cfg.layer_samples} independent (W, x) pairs per "
            f"(d1, d2), W with i.i.d. N(0, 1) entries (and W/√d1), x ~ N(0, I). The unit balls are the curves "
            f"u/‖u‖ over 721 directions u. Why it matters for polaropt: `SteepestDescent(norm='rms')` takes steps "
            f"whose per-entry size does not shrink with the tensor's size (Δ = −(lr/2)·n·g).")


register(Experiment(
    name="cs182-rms",
    description="RMS norm (CS182 004): ‖x‖₂ vs ‖x‖_RMS against d, E‖Wx‖²_RMS = d1 and Xavier, 2D unit balls",
    sources=("004_65400c7305219704.txt",),
    config_cls=RmsConfig, run=rms_run, claims=rms_claims, figures=rms_figures, notes=rms_notes,
    quick={"dims": (1, 4, 16, 64, 256, 1024), "samples": 500, "d1s": (4, 64, 256), "layer_samples": 100}))
