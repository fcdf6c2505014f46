"""Liu, "Optimization 1 -- Norm reparametrization" (seed 001) and "Optimization 2 -- Elementwise
scale reparametrization" (seed 000), re-run with polaropt's public API.

Implementation details the posts leave out are taken from ``shared/notes/seed-findings.md``:
``s = 1, Ŵ = W0`` at the start (``init="one"``), Adam's state kept across re-parametrizations
(``state="keep"``), the plotted loss is the mean over elements, and a "fixed scale" is not given to
the optimizer but still absorbs the norm. Mode names say what the modes do; the sources' names
(whose descriptions in 001 are swapped) are mapped in ``SOURCE_NAMES``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

import polaropt as po

from .framework import Claim, Experiment, first_below, fmt_steps, register
from .toys import Weights

MODES = ("no_scale", "learnable_scale", "absorb_learnable_scale", "absorb_fixed_scale")
SOURCE_NAMES = {
    "no_scale": "no_scale",
    "learnable_scale": "learnable_scale",
    "absorb_learnable_scale": "reparametrized_learnable_scale (001 describes it as 'fix s = 1 during the update step')",
    "absorb_fixed_scale": "reparametrized_fixed_scale (001 describes it as 'allow s to update')",
}
POLAR = {  # mode -> polarize options (None: a plain parameter)
    "no_scale": None,
    "learnable_scale": dict(mode="free", trainable_scale=True),
    "absorb_learnable_scale": dict(mode="absorb", trainable_scale=True),
    "absorb_fixed_scale": dict(mode="absorb", trainable_scale=False),
}
SRC_001 = "001 Optimization 1 (Liu), Experiment"
SRC_000 = "000 Optimization 2 (Liu)"
NOTES = "seed-findings.md (re-simulated there in float64)"


def build(w0: torch.Tensor, mode: str, *, lr: float, scale: str = "tensor", init: str = "one",
          batch_dims: int = 0, state: str = "keep"):
    """The model and Adam optimizer of one mode, through the public API only."""
    model = Weights(w0)
    if POLAR[mode] is not None:
        po.polarize(model, "weight", scale=scale, init=init, batch_dims=batch_dims, **POLAR[mode])
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    if POLAR[mode] is not None and POLAR[mode]["mode"] == "absorb":
        attach(opt, model, state)
    return model, opt


def attach(opt, model, state: str) -> None:
    """``po.attach``; ``state="reset"`` after every step is one of the policies compared on purpose (its
    notes explain why it is worse), so attach's warning about it is silenced here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"attach\(state='reset', every=1\)")
        po.attach(opt, model, state=state)


def mode_names() -> list[str]:
    """Markdown lines mapping our mode names to the sources'."""
    return ["Mode names and the source's names:", ""] + [f"- `{m}` = source's {SOURCE_NAMES[m]}" for m in MODES]


def run_label(mode: str, state: str) -> str:
    return mode if state == "keep" else f"{mode}+{state}"


# ==== liu-far-target ==============================================================================

@dataclass
class FarTargetConfig:
    w0: tuple[float, ...] = (-50.0, 0.0)
    target: tuple[float, ...] = (100.0, 100.0)
    lr: float = 0.01
    steps: int = 3000
    threshold: float = 1e-3  # the loss the claims' "steps to" counts to
    states: tuple[str, ...] = ("keep", "rescale", "reset")  # keep is the source; the others go beyond it

    def validate(self):
        if len(self.w0) != len(self.target):
            raise ValueError(f"w0 has {len(self.w0)} entries but target has {len(self.target)}")
        if self.steps < 1 or self.lr <= 0:
            raise ValueError("steps must be >= 1 and lr > 0")
        bad = [s for s in self.states if s not in po.STATES]
        if bad or "keep" not in self.states:
            raise ValueError(f"states must include 'keep' and be among {po.STATES}, got {self.states}")


def _train_toys(w0, target, modes, *, lr, steps, state="keep", batch_dims=0, init="one"):
    """Train several modes side by side; return {mode: (loss [T+1, copies], W [T+1, copies, N], s, V)}.

    The modes' weights live in one model with one Adam: the parameters are independent and Adam is
    elementwise, so this is the same arithmetic as separate runs, with one step loop instead of several.
    The loss is the mean over elements (what the sources plot), summed over copies and modes.
    """
    model = nn.ModuleDict()
    for mode in modes:
        model[mode] = Weights(w0)
        if POLAR[mode] is not None:
            po.polarize(model[mode], "weight", scale="tensor", init=init, batch_dims=batch_dims, **POLAR[mode])
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    attach(opt, model, state)
    hist = {m: ([], [], [], []) for m in modes}
    for t in range(steps + 1):
        total = 0
        for mode in modes:
            w = model[mode].weight
            per_copy = (w - target).square().mean(-1)
            loss, ws, ss, vs = hist[mode]
            loss.append(per_copy.detach().clone())
            ws.append(w.detach().clone())
            if POLAR[mode] is not None:
                ss.append(po.scale_of(model[mode]).detach().reshape(w.shape[0] if batch_dims else 1, -1)[:, 0].clone())
                vs.append(po.direction_of(model[mode]).detach().clone())
            total = total + per_copy.sum()  # copies and modes are independent: a sum keeps their gradients apart
        if t == steps:
            break
        opt.zero_grad()
        total.backward()
        opt.step()
    return {m: (torch.stack(h[0]), torch.stack(h[1]), torch.stack(h[2]) if h[2] else None,
                torch.stack(h[3]) if h[3] else None) for m, h in hist.items()}


def far_target_run(cfg: FarTargetConfig, progress) -> list[dict]:
    w0 = torch.tensor(cfg.w0, dtype=torch.float64)
    target = torch.tensor(cfg.target, dtype=torch.float64)
    groups = [("keep", MODES)] + [(st, [m for m in MODES if m.startswith("absorb")]) for st in cfg.states if st != "keep"]
    records = []
    for state, modes in progress(groups, desc="liu-far-target"):
        for mode, (loss, w, _, _) in _train_toys(w0, target, modes, lr=cfg.lr, steps=cfg.steps, state=state).items():
            label = run_label(mode, state)
            records.append({"kind": "curve", "run": label, "mode": mode, "state": state, "metric": "loss", "seed": 0,
                            "step": list(range(cfg.steps + 1)), "value": loss.tolist()})
            records.append({"kind": "trajectory", "run": label, "mode": mode, "state": state, "w": w.tolist()})
    return records


def _curves(records, metric="loss") -> dict[str, list[float]]:
    return {r["run"]: r["value"] for r in records if r["kind"] == "curve" and r["metric"] == metric}


def _lt(a, b) -> bool:
    """Strictly sooner, where None (never) is later than any step."""
    return (a is not None) and (b is None or a < b)


def far_target_claims(records, cfg: FarTargetConfig) -> list[Claim]:
    loss = _curves(records)
    hit = {m: first_below(loss[m], cfg.threshold) for m in MODES}
    final = {m: loss[m][-1] for m in MODES}
    al, af, ls, ns = hit["absorb_learnable_scale"], hit["absorb_fixed_scale"], hit["learnable_scale"], hit["no_scale"]
    order = _lt(al, ls) and _lt(af, ls) and (_lt(ls, ns) or (ls is None and ns is None and final["learnable_scale"] < final["no_scale"]))
    steps_txt = ", ".join(f"{m}: {fmt_steps(hit[m])}" for m in MODES)
    claims = [Claim(
        "far-order-steps", SRC_001 + ", Observations",
        "As expected, re-parametrization > learnable scale > no scale.",
        f"steps to loss {cfg.threshold:g}: both absorb modes < learnable_scale < no_scale (never = ∞)",
        steps_txt, order, {"steps_to_threshold": hit}),
        Claim("far-order-final", SRC_001 + ", loss figure",
              "The loss figure ranks the modes: re-parametrization lowest, no scale highest.",
              f"loss at step {cfg.steps}: both absorb modes < learnable_scale < no_scale",
              ", ".join(f"{m}: {final[m]:.3g}" for m in MODES),
              max(final["absorb_learnable_scale"], final["absorb_fixed_scale"]) < final["learnable_scale"] < final["no_scale"],
              {"final_loss": final})]
    if al is not None and af is not None:
        rel = abs(al - af) / max(al, af)
        ok = rel <= 0.10
    else:
        rel, ok = None, False
    claims.append(Claim(
        "far-absorb-modes-agree", SRC_001 + ", Observations",
        "With re-parametrization, whether the scale s is learnable or fixed during the update step does not "
        "seem to make a noticeable difference.",
        f"the two absorb modes reach loss {cfg.threshold:g} within 10% of each other's step count",
        f"absorb_learnable_scale: {fmt_steps(al)}, absorb_fixed_scale: {fmt_steps(af)}"
        + (f" ({100 * rel:.1f}% apart)" if rel is not None else ""), ok, {"relative_gap": rel}))
    if tuple(cfg.w0) == (-50.0, 0.0) and tuple(cfg.target) == (100.0, 100.0) and cfg.lr == 0.01 and cfg.steps >= 2999:
        checks = {
            "initial loss = 16250": (loss["no_scale"][0], abs(loss["no_scale"][0] - 16250) < 1e-9),
            "no_scale at step 2999 ≈ 9.9e3 (±5%)": (loss["no_scale"][2999], abs(loss["no_scale"][2999] / 9.9e3 - 1) <= 0.05),
            "learnable_scale at step 2999 ≈ 32 (±20%)": (loss["learnable_scale"][2999], abs(loss["learnable_scale"][2999] / 32 - 1) <= 0.2),
            "absorb modes below 1e-3 at step ≈ 288 (±10%)": ((al, af), all(h is not None and abs(h / 288 - 1) <= 0.1 for h in (al, af))),
        }
        claims.append(Claim(
            "far-numbers-match-notes", NOTES,
            "Initial loss 16250; at step 2999 no_scale ≈ 9.9e3 and learnable ≈ 32; both re-parametrized modes "
            "go below 1e-3 at step ≈ 288.",
            "each number within the stated tolerance",
            "; ".join(f"{k}: measured {v[0] if not isinstance(v[0], float) else f'{v[0]:.4g}'}"
                      f" {'✓' if v[1] else '✗'}" for k, v in checks.items()),
            all(v[1] for v in checks.values()), {k: v[0] for k, v in checks.items()}))
    return claims


def far_target_figures(records, cfg: FarTargetConfig, out_dir) -> list[str]:
    from .figures import new_figure, save

    fig, (ax1, ax2) = new_figure(1, 2, size=(11, 4.5))
    for r in records:
        if r["kind"] == "trajectory" and r["state"] == "keep":
            w = np.asarray(r["w"])
            ax1.plot(w[:, 0], w[:, 1], label=r["run"], lw=1.5)
    ax1.plot(*cfg.w0[:2], "ko", ms=7, label="start W0")
    ax1.plot(*cfg.target[:2], "r*", ms=12, label="target W*")
    ax1.set(xlabel="W[0]", ylabel="W[1]", title="trajectories (state=keep)")
    ax1.legend(fontsize=7)
    for r in records:
        if r["kind"] == "curve":
            ax2.semilogy(r["step"], np.maximum(r["value"], 1e-300), label=r["run"],
                         ls="-" if r["state"] == "keep" else "--", lw=1.2)
    ax2.axhline(cfg.threshold, color="gray", lw=0.8, ls=":")
    ax2.set(xlabel="step", ylabel="loss (mean over elements)", title="loss", ylim=(1e-12, None))
    ax2.legend(fontsize=7)
    return save(fig, out_dir, "far_target")


def far_target_notes(records, cfg: FarTargetConfig) -> str:
    loss = _curves(records)
    lines = mode_names()
    lines += ["", "Departures and inferred details: s starts at 1 and Ŵ at W0 (`init='one'`); Adam's state is kept "
              "across re-parametrizations; the loss is the mean over the two elements (the post writes a sum, its "
              "figure plots the mean; seed-findings).", "",
              "Beyond the source: the absorb modes re-run with `state='rescale'` (Adam's moments transported into the "
              "new coordinates) and `state='reset'`:", ""]
    for run, values in loss.items():
        if "+" in run:
            base = run.split("+")[0]
            lines.append(f"- `{run}`: steps to {cfg.threshold:g}: {fmt_steps(first_below(values, cfg.threshold))} "
                         f"(with keep: {fmt_steps(first_below(loss[base], cfg.threshold))}); loss at the end "
                         f"{values[-1]:.3g} (keep: {loss[base][-1]:.3g})")
    return "\n".join(lines)


register(Experiment(
    name="liu-far-target",
    description="2D far target (Liu 001): no scale vs learnable scale vs the two absorb (re-parametrized) modes",
    sources=("001_e072fe36ebd0c64d.txt",),
    config_cls=FarTargetConfig, run=far_target_run, claims=far_target_claims, figures=far_target_figures,
    notes=far_target_notes, quick={"steps": 400, "states": ("keep", "rescale")}))


# ==== liu-1d ======================================================================================

@dataclass
class OneDConfig:
    w0s: tuple[float, ...] = (-1.0, -10.0, -50.0)
    target: float = 100.0
    lr: float = 0.01
    steps: int = 3000
    threshold: float = 1e-3

    def validate(self):
        if not self.w0s or self.steps < 1 or self.lr <= 0:
            raise ValueError("w0s must be non-empty, steps >= 1 and lr > 0")


def one_d_run(cfg: OneDConfig, progress) -> list[dict]:
    # every W0 is one copy of a (copies, 1) weight: batch_dims=1 keeps their scales apart
    w0 = torch.tensor(cfg.w0s, dtype=torch.float64).unsqueeze(1)
    records = []
    runs = _train_toys(w0, torch.tensor(cfg.target, dtype=torch.float64), MODES, lr=cfg.lr, steps=cfg.steps, batch_dims=1)
    for mode in progress(MODES, desc="liu-1d"):
        loss, w, s_hist, v_hist = runs[mode]
        for k, x0 in enumerate(cfg.w0s):
            base = {"mode": mode, "w0": x0, "seed": 0, "step": list(range(cfg.steps + 1))}
            records.append({"kind": "curve", "run": f"{mode}@{x0:g}", "metric": "loss", **base, "value": loss[:, k].tolist()})
            records.append({"kind": "curve", "run": f"{mode}@{x0:g}", "metric": "w", **base, "value": w[:, k, 0].tolist()})
            if s_hist is not None:
                records.append({"kind": "curve", "run": f"{mode}@{x0:g}", "metric": "s", **base,
                                "value": s_hist[:, k].tolist()})
                records.append({"kind": "curve", "run": f"{mode}@{x0:g}", "metric": "v", **base,
                                "value": v_hist[:, k, 0].tolist()})
    return records


def _by(records, metric):
    return {(r["mode"], r["w0"]): r["value"] for r in records if r["kind"] == "curve" and r["metric"] == metric}


def _plateau(loss: list[float], target: float) -> tuple[int, int | None]:
    """Steps spent with W near 0 (loss within ±50% of W*², the loss at W = 0), and the last such step."""
    near = [i for i, x in enumerate(loss) if 0.5 * target**2 <= x <= 1.5 * target**2]
    return len(near), (near[-1] if near else None)


def one_d_claims(records, cfg: OneDConfig) -> list[Claim]:
    loss, w, s, v = _by(records, "loss"), _by(records, "w"), _by(records, "s"), _by(records, "v")
    claims = []
    for x0 in cfg.w0s:
        hits = {m: first_below(loss[(m, x0)], cfg.threshold) for m in MODES}
        best = hits["absorb_learnable_scale"]
        others = [hits[m] for m in MODES if m != "absorb_learnable_scale"]
        # "much faster": at least twice as fast as every other mode (never counts as infinitely slow)
        ok = best is not None and all(o is None or best * 2 <= o for o in others)
        claims.append(Claim(
            f"1d-absorb-learnable-fastest@{x0:g}", SRC_000 + ", Failure mode when normalizing element-wise",
            f"With re-parametrization and a learnable scale, learning is much faster than in the other modes "
            f"(the text states W0 = -1; its figure shows W0 = -10 and -50; here W0 = {x0:g}).",
            f"absorb_learnable_scale reaches loss {cfg.threshold:g} at least 2× sooner than every other mode",
            ", ".join(f"{m}: {fmt_steps(hits[m])}" for m in MODES), ok, {"steps_to_threshold": hits}))
    stuck = {x0: max(w[("absorb_fixed_scale", x0)]) for x0 in cfg.w0s}
    claims.append(Claim(
        "1d-fixed-scale-cannot-change-sign", SRC_000 + ", Failure mode when normalizing element-wise",
        "When s is not learnable, the weight cannot change sign, since Ŵ can only take values +1 or -1.",
        "with absorb_fixed_scale, W stays negative (max W over the run < 0) for every negative W0",
        ", ".join(f"W0={x0:g}: max W {m:.3g}" for x0, m in stuck.items()),
        all(m < 0 for x0, m in stuck.items() if x0 < 0), {"max_w": stuck}))
    crossed = {(m, x0): max(w[(m, x0)]) > 0 for m in ("learnable_scale", "absorb_learnable_scale") for x0 in cfg.w0s}
    claims.append(Claim(
        "1d-learnable-scale-changes-sign", SRC_000 + ", Failure mode when normalizing element-wise",
        "As long as s is learnable, the weight can change its sign even in 1D, because s itself can cross zero.",
        "W becomes positive with absorb_learnable_scale for every W0, and with learnable_scale for every W0 but "
        "the saddle W0 = -1 (see the next claim)",
        ", ".join(f"{m}@{x0:g}: {'crossed' if c else 'stayed ≤ 0'}" for (m, x0), c in crossed.items()),
        all(c for (m, x0), c in crossed.items() if not (m == "learnable_scale" and x0 == -1.0)), {}))
    if -1.0 in cfg.w0s:
        gap = max(abs(a + b) for a, b in zip(s[("learnable_scale", -1.0)], v[("learnable_scale", -1.0)]))
        wmax = max(w[("learnable_scale", -1.0)])
        claims.append(Claim(
            "1d-learnable-saddle-at-minus-one", NOTES,
            "At W0 = -1 with s = 1, Ŵ = -1, learnable_scale is stuck exactly: s = -Ŵ is preserved, so W = -s² ≤ 0 "
            "(a symmetric saddle, not a bug).",
            "max |s + Ŵ| over the run ≤ 1e-12 and max W ≤ 0",
            f"max |s + Ŵ| = {gap:.2e}, max W = {wmax:.3g}", gap <= 1e-12 and wmax <= 0,
            {"max_abs_s_plus_v": gap, "max_w": wmax}))
    return claims


def one_d_figures(records, cfg: OneDConfig, out_dir) -> list[str]:
    from .figures import new_figure, save

    loss = _by(records, "loss")
    fig, axes = new_figure(1, len(cfg.w0s) + 1, size=(4.2 * (len(cfg.w0s) + 1), 4))
    for ax, x0 in zip(axes, cfg.w0s):
        for m in MODES:
            ax.semilogy(np.maximum(loss[(m, x0)], 1e-300), label=m)
        ax.set(title=f"W0 = {x0:g}, W* = {cfg.target:g}", xlabel="step", ylabel="loss", ylim=(1e-12, None))
        ax.legend(fontsize=7)
    ax = axes[-1]
    s, v = _by(records, "s"), _by(records, "v")
    if ("learnable_scale", -1.0) in s:
        ax.plot(s[("learnable_scale", -1.0)], label="s")
        ax.plot(v[("learnable_scale", -1.0)], label="Ŵ")
        ax.plot(_by(records, "w")[("learnable_scale", -1.0)], label="W = s·Ŵ")
        ax.set(title="learnable_scale at W0 = -1: s = -Ŵ", xlabel="step")
        ax.legend(fontsize=7)
    return save(fig, out_dir, "one_d")


def one_d_notes(records, cfg: OneDConfig) -> str:
    loss = _by(records, "loss")
    lines = ["The absorb_learnable_scale plateau: in 1D the direction is a sign (Ŵ = ±1 after every "
             "renormalization), so each Adam step on Ŵ changes |Ŵ| by about lr and the renormalization turns that "
             "into a multiplicative change of s (s ← |Ŵ|·s). From a negative W0 the weight can change sign only "
             "through s: s shrinks multiplicatively towards 0, crosses it by its own additive Adam steps, and must "
             "then grow multiplicatively from near 0 to W* — slow, because multiplicative growth from a tiny |s| "
             "takes about log(W*/|s|)/lr steps. Meanwhile W ≈ 0 and the loss sits near W*². Measured steps with the "
             "loss within ±50% of W*² (W near 0), and the last such step:", ""]
    for x0 in cfg.w0s:
        cells = []
        for m in ("absorb_learnable_scale", "learnable_scale", "no_scale"):
            n, last = _plateau(loss[(m, x0)], cfg.target)
            cells.append(f"{m} {n} steps (last {fmt_steps(last)})")
        lines.append(f"- W0 = {x0:g}: " + "; ".join(cells))
    lines += ["", "seed-findings reads off the source's figure: at W0 = -50 the re-parametrized learnable mode "
              "plateaus until ≈ 1800 while plain learnable scale reaches 1e-6 near step 1130, so the source's "
              "'much faster' does not hold there; the claims above test it at each W0 separately.", ""]
    lines += mode_names()
    return "\n".join(lines)


register(Experiment(
    name="liu-1d",
    description="1D target W* = 100 from W0 in {-1, -10, -50} (Liu 000): the absorb plateau and the W0 = -1 saddle",
    sources=("000_cf93c4077b34771f.txt",),
    config_cls=OneDConfig, run=one_d_run, claims=one_d_claims, figures=one_d_figures, notes=one_d_notes,
    quick={"steps": 500}))


# ==== liu-scaling =================================================================================

@dataclass
class ScalingConfig:
    radii: tuple[float, ...] = (10.0, 31.6, 100.0, 316.0, 1000.0, 3162.0, 10000.0)
    directions: int = 3  # random unit targets in the first quadrant (the source's W* = (100, 100) is there)
    w0: tuple[float, ...] = (-0.5, 0.0)
    lr: float = 0.01
    tol: float = 0.01  # relative error ‖W - W*‖/R that counts as reached
    max_steps: int = 40000  # for the scaled modes
    no_scale_max_radius: float = 1000.0  # no_scale needs ~R/lr steps: larger R is out of the time budget
    no_scale_max_steps: int = 120000
    seed: int = 0

    def validate(self):
        if len(self.radii) < 2 or min(self.radii) <= 0 or self.directions < 1:
            raise ValueError("radii needs at least 2 positive values and directions >= 1")


def _targets(cfg: ScalingConfig) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    g = torch.Generator().manual_seed(cfg.seed)
    angles = [math.pi / 4] + (torch.rand(cfg.directions - 1, generator=g, dtype=torch.float64) * math.pi / 2).tolist()
    dirs = torch.tensor([[math.cos(a), math.sin(a)] for a in angles], dtype=torch.float64)
    radii = torch.tensor(cfg.radii, dtype=torch.float64)
    return radii, dirs, angles


def _steps_to_reach(mode, radii, dirs, cfg, max_steps):
    """First step at which every (R, direction) copy is within tol·R of its target: one batched run."""
    target = (radii[:, None, None] * dirs[None, :, :]).reshape(-1, 2)
    r = radii.repeat_interleave(len(dirs))
    w0 = torch.tensor(cfg.w0, dtype=torch.float64).expand_as(target).clone()
    model, opt = build(w0, mode, lr=cfg.lr, init="norm", batch_dims=1)  # s starts at ‖W0‖ (seed-findings)
    hit = torch.full((len(target),), -1, dtype=torch.long)
    for t in range(max_steps + 1):
        d = model.weight - target
        reached = (d.detach().norm(dim=-1) / r < cfg.tol) & (hit < 0)
        hit[reached] = t
        if t == max_steps or (t % 200 == 0 and bool((hit >= 0).all())):
            break
        opt.zero_grad()
        d.square().sum().backward()  # summed loss, as in seed-findings' scaling check
        opt.step()
    return hit.view(len(radii), len(dirs))


def scaling_run(cfg: ScalingConfig, progress) -> list[dict]:
    radii, dirs, angles = _targets(cfg)
    records = []
    for mode in progress(MODES, desc="liu-scaling"):
        keep = radii <= cfg.no_scale_max_radius if mode == "no_scale" else torch.ones_like(radii, dtype=torch.bool)
        max_steps = cfg.no_scale_max_steps if mode == "no_scale" else cfg.max_steps
        hits = _steps_to_reach(mode, radii[keep], dirs, cfg, max_steps)
        for i, R in enumerate(radii[keep].tolist()):
            for k, a in enumerate(angles):
                h = int(hits[i, k])
                records.append({"kind": "point", "mode": mode, "radius": R, "direction": k, "angle": a,
                                "steps": h if h >= 0 else None, "max_steps": max_steps})
    return records


def _medians(records, mode) -> list[tuple[float, float]] | None:
    """(R, median steps over target directions) for ``mode``; None if a point never reached."""
    by_r: dict[float, list] = {}
    for r in records:
        if r["kind"] == "point" and r["mode"] == mode:
            by_r.setdefault(r["radius"], []).append(r["steps"])
    if not by_r or any(s is None for v in by_r.values() for s in v):
        return None
    return sorted((R, float(np.median(v))) for R, v in by_r.items())


def _fit(records, mode, *, log_y: bool = True):
    """Least-squares line through (log10 R, log10 steps) — or (log10 R, steps) — of the per-R medians.

    The median over target directions removes the direction's scatter, which is not what the law
    is about.
    """
    from scipy.stats import linregress

    pts = _medians(records, mode)
    if pts is None or len(pts) < 2:
        return None
    x = np.log10([R for R, _ in pts])
    y = np.log10([s for _, s in pts]) if log_y else np.array([s for _, s in pts])
    f = linregress(x, y)
    return {"slope": float(f.slope), "intercept": float(f.intercept), "r2": float(f.rvalue**2),
            "radii": [R for R, _ in pts], "median_steps": [s for _, s in pts]}


def scaling_claims(records, cfg: ScalingConfig) -> list[Claim]:
    src = SRC_001 + ", Problem setup / Steps 1-2"
    claims = []
    # no_scale: the post's own formula t = R/(√N·η) is asymptotic (R ≫ ‖W0‖), so it is checked at the
    # largest radius run, with the local slope over the last interval
    pts = _medians(records, "no_scale")
    n = len(cfg.w0)
    if pts is None or len(pts) < 2:
        claims.append(Claim("scaling-no_scale", src, "no_scale: t = R/(√N·η), i.e. O(R).", "", "a point never reached "
                            "the target within the step cap", False, {}))
    else:
        # the formula assumes Adam ≈ sign descent moves every coordinate by η toward a target whose
        # coordinates are equal: the source's own direction (1, 1), our direction 0 (angle π/4)
        diag = sorted((r["radius"], r["steps"]) for r in records
                      if r["kind"] == "point" and r["mode"] == "no_scale" and r["direction"] == 0)
        r2, s2 = diag[-1]
        (r1, m1), (_, m2) = pts[-2], pts[-1]
        formula = r2 / (math.sqrt(n) * cfg.lr)
        local = math.log10(m2 / m1) / math.log10(r2 / r1)
        ok = abs(s2 / formula - 1) <= 0.25 and abs(local - 1) <= 0.15
        claims.append(Claim(
            "scaling-no_scale", src, "no_scale: when R ≫ ‖W0‖ the time to reach the target is t = R/(√N·η): O(R).",
            "at the largest R and the source's diagonal target direction, steps within ±25% of R/(√N·η); and the "
            "log-log slope of the median steps over the last interval within 1 ± 0.15",
            f"R = {r2:g}, diagonal: {s2} steps vs R/(√N·η) = {formula:.0f} ({100 * (s2 / formula - 1):+.0f}%); median "
            f"over directions {m2:.0f}; slope {r1:g}→{r2:g}: {local:.3f}; whole-range fit slope "
            f"{_fit(records, 'no_scale')['slope']:.3f}", ok, {"steps": s2, "formula": formula, "local_slope": local}))
    f = _fit(records, "learnable_scale")
    ok = f is not None and abs(f["slope"] - 0.5) <= 0.15
    claims.append(Claim(
        "scaling-learnable_scale", src, "learnable_scale: |s| and ‖Ŵ‖ both grow to O(√R), so t = O(√R/η).",
        "slope of log(median steps) vs log(R) within 0.5 ± 0.15",
        "some point never reached the target" if f is None else
        f"slope {f['slope']:.3f} (R² {f['r2']:.3f}) over R = {f['radii'][0]:g}…{f['radii'][-1]:g}", ok, f or {}))
    for mode in ("absorb_learnable_scale", "absorb_fixed_scale"):
        lin, power = _fit(records, mode, log_y=False), _fit(records, mode)
        ok = lin is not None and lin["slope"] > 0 and lin["r2"] >= 0.9 and power["slope"] <= 0.15
        measured = ("some point never reached the target" if lin is None else
                    f"median steps ≈ {lin['intercept']:.0f} + {lin['slope']:.1f}·log10(R) (R² {lin['r2']:.3f}); "
                    f"power-law slope {power['slope']:.3f}, over R = {lin['radii'][0]:g}…{lin['radii'][-1]:g}")
        claims.append(Claim(f"scaling-{mode}", src, f"{mode}: with re-parametrization the time grows as O(log R).",
                            "median steps linear in log10(R) (positive slope, R² ≥ 0.9) and a power-law slope ≤ 0.15 "
                            "(far below learnable_scale's 0.5)", measured, ok, {"linear_in_log": lin, "power": power}))
    return claims


def scaling_figures(records, cfg: ScalingConfig, out_dir) -> list[str]:
    from .figures import new_figure, save

    fig, ax = new_figure(size=(6.5, 4.8))
    for mode, marker in zip(MODES, "osd^"):
        pts = [(r["radius"], r["steps"]) for r in records if r["kind"] == "point" and r["mode"] == mode and r["steps"]]
        if not pts:
            continue
        ax.loglog(*zip(*pts), marker, label=mode, alpha=0.7)
        f = _fit(records, mode)
        if f is not None:
            xs = np.array(f["radii"])
            ax.loglog(xs, 10 ** (f["intercept"] + f["slope"] * np.log10(xs)), "-", lw=0.8,
                      color=ax.lines[-1].get_color())
    ax.set(xlabel="R = ‖W*‖", ylabel=f"steps to relative error {cfg.tol:g}",
           title="time to reach a far target (lines: power-law fits)")
    ax.legend(fontsize=8)
    return save(fig, out_dir, "scaling")


def scaling_notes(records, cfg: ScalingConfig) -> str:
    capped = [r for r in records if r["kind"] == "point" and r["steps"] is None]
    lines = [f"Setup (from seed-findings' scaling check; the post gives only the growth laws): 2D, W0 = {cfg.w0}, "
             f"s started at ‖W0‖ (`init='norm'`), summed loss, Adam lr {cfg.lr}, {cfg.directions} target directions "
             "(π/4 and random angles in the first quadrant), steps until ‖W - W*‖/R < "
             f"{cfg.tol:g}. All (R, direction) copies of one mode run as one tensor program (`batch_dims=1`).", "",
             f"Cap: no_scale runs only R ≤ {cfg.no_scale_max_radius:g} (it needs ~R/lr steps: R = 10⁴ would take ~7·10⁵ "
             "steps, beyond the suite's time budget), so its fit spans fewer decades than the others'."]
    if capped:
        lines.append(f"{len(capped)} (mode, R, direction) points did not reach the target within their step cap.")
    lines += ["", "For no_scale the time depends on the target's direction, not only on R: Adam moves each coordinate "
              "by about η per step, so reaching W* takes about max_i |W*_i|/η steps, which equals the post's "
              "R/(√N·η) only for a diagonal target such as its (100, 100). The formula is therefore checked on "
              "the diagonal direction."]
    return "\n".join(lines)


register(Experiment(
    name="liu-scaling",
    description="Steps to reach a target at distance R (Liu 001): O(R), O(√R), O(log R) for no/learnable/absorbed scale",
    sources=("001_e072fe36ebd0c64d.txt",),
    config_cls=ScalingConfig, run=scaling_run, claims=scaling_claims, figures=scaling_figures, notes=scaling_notes,
    quick={"radii": (10.0, 31.6, 100.0), "directions": 2, "no_scale_max_radius": 100.0}))


# ==== liu-linreg ==================================================================================

LINREG_SCALES = ("tensor", "element")  # the source's "Scalar" and "Matrix (element-wise)"
# The source's figure legend colours, inferred from its three observations (the post names colours,
# not modes): green/red = scalar learnable with/without re-parametrization, pink/gray = element-wise
# learnable with/without, purple/brown = element-wise fixed with/without.
COLOURS = {"tensor-learnable-absorb": "green", "tensor-learnable-none": "red",
           "element-learnable-absorb": "pink", "element-learnable-none": "gray",
           "element-fixed-absorb": "purple", "element-fixed-none": "brown"}
PLOT_COLOURS = {"pink": "hotpink", "tensor-fixed-absorb": "tab:blue", "tensor-fixed-none": "tab:orange"}
# Final losses read off the source's figure at 5000 steps (seed-findings), as (low, high)
FIGURE_FINAL = {"element-learnable-absorb": (1e-10, 1e-8), "element-learnable-none": (1e-10, 1e-8),
                "tensor-learnable-none": (1e-6, 1e-4), "tensor-learnable-absorb": (1e-3, 1e-1),
                "tensor-fixed-none": (1.3e2, 1.3e2), "element-fixed-none": (1.3e2, 1.3e2),
                "element-fixed-absorb": (2.5e2, 2.5e2), "tensor-fixed-absorb": (1.1e3, 1.1e3)}


def linreg_modes() -> list[tuple[str, str, bool, bool]]:
    """(label, scale, trainable, absorb) for the 8 = [tensor, element] × [learnable, fixed] × [absorb, none] modes."""
    return [(f"{sc}-{'learnable' if tr else 'fixed'}-{'absorb' if ab else 'none'}", sc, tr, ab)
            for sc in LINREG_SCALES for tr in (True, False) for ab in (True, False)]


@dataclass
class LinregConfig:
    dim: int = 10
    lr: float = 0.01
    steps: int = 5000
    batch: int = 128  # not stated by the source
    seeds: int = 3
    early: int = 500  # the claims' early window: steps [0, early)
    late: int = 1000  # the claims' late window: the last `late` steps
    record_every: int = 5
    states: tuple[str, ...] = ("keep", "rescale", "reset")
    dtype: str = "float32"  # PyTorch's default, which the source's notebook presumably used

    def validate(self):
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if self.early + self.late > self.steps:
            raise ValueError(f"early ({self.early}) + late ({self.late}) windows exceed steps ({self.steps})")
        if self.seeds < 1 or self.batch < 1 or self.record_every < 1:
            raise ValueError("seeds, batch and record_every must be >= 1")
        bad = [s for s in self.states if s not in po.STATES]
        if bad or "keep" not in self.states:
            raise ValueError(f"states must include 'keep' and be among {po.STATES}, got {self.states}")


def linreg_run(cfg: LinregConfig, progress) -> list[dict]:
    d, S = cfg.dim, cfg.seeds
    dtype = getattr(torch, cfg.dtype)
    scales = 10.0 ** (-1 + 2 * torch.arange(d, dtype=torch.float64) / (d - 1))  # s_i = 10^(-1 + 2i/9)
    w_star, w0 = [], []
    for seed in range(S):
        g = torch.Generator().manual_seed(seed)
        w_star.append(scales[:, None] * scales[None, :] * torch.randn(d, d, generator=g, dtype=torch.float64))
        bound = 1 / math.sqrt(d)  # nn.Linear's default init, U(-1/√d, 1/√d): the source does not say
        w0.append((torch.rand(d, d, generator=g, dtype=torch.float64) * 2 - 1) * bound)
    w_star, w0 = torch.stack(w_star).to(dtype), torch.stack(w0).to(dtype)  # (seeds, d, d): copies, batch_dims=1
    records = []
    # runs sharing a state policy train side by side in one model and one Adam: the parameters are
    # independent and Adam is elementwise, so this equals separate runs, with one step loop instead of eight
    groups = [("keep", linreg_modes())] + [(st, [m for m in linreg_modes() if m[3]]) for st in cfg.states if st != "keep"]
    for state, modes in progress(groups, desc="liu-linreg"):
        model = nn.ModuleDict()
        for label, sc, tr, ab in modes:
            model[label] = Weights(w0)
            po.polarize(model[label], "weight", scale=sc, init="one", batch_dims=1, trainable_scale=tr,
                        mode="absorb" if ab else "free")
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
        attach(opt, model, state)
        g = torch.Generator().manual_seed(12345)  # the same fresh batches for every group
        kept = torch.arange(0, cfg.steps, cfg.record_every)
        hist = torch.empty(len(kept), len(modes), S, dtype=torch.float64)
        j = 0
        for t in range(cfg.steps):
            x = torch.randn(S, cfg.batch, d, generator=g, dtype=torch.float64).to(dtype)
            y = x @ w_star.transpose(1, 2)
            per = torch.stack([(x @ model[m[0]].weight.transpose(1, 2) - y).square().mean((1, 2)) for m in modes])
            if t % cfg.record_every == 0:
                hist[j] = per.detach()
                j += 1
            opt.zero_grad()
            per.sum().backward()
            opt.step()
        for k, (label, sc, tr, ab) in enumerate(modes):
            for seed in range(S):
                records.append({"kind": "curve", "run": label if state == "keep" else f"{label}+{state}", "mode": label,
                                "state": state, "metric": "loss", "seed": seed, "step": kept.tolist(),
                                "value": hist[:, k, seed].tolist()})
    return records


def _window_logloss(records, run: str, cfg: LinregConfig, window: str) -> float:
    """Median over seeds of the mean log10 loss over the early or late window (recorded steps)."""
    vals = []
    for r in records:
        if r["kind"] == "curve" and r["run"] == run:
            steps, loss = np.asarray(r["step"]), np.asarray(r["value"])
            sel = steps < cfg.early if window == "early" else steps >= cfg.steps - cfg.late
            vals.append(float(np.mean(np.log10(np.maximum(loss[sel], 1e-300)))))
    return float(np.median(vals))


def linreg_claims(records, cfg: LinregConfig) -> list[Claim]:
    W = lambda run, win: _window_logloss(records, run, cfg, win)  # noqa: E731
    claims = []
    e_t, e_e = W("tensor-learnable-absorb", "early"), W("element-learnable-absorb", "early")
    claims.append(Claim(
        "linreg-scalar-faster-early", SRC_000 + ", Linear regression, observation 1",
        "Scalar normalization is faster than element-wise normalization in the early stage (green vs pink).",
        f"early window (steps < {cfg.early}): mean log10 loss of tensor-learnable-absorb < element-learnable-absorb",
        f"{e_t:.2f} vs {e_e:.2f}", e_t < e_e, {"tensor": e_t, "element": e_e}))
    pairs = [("tensor-learnable-absorb", "tensor-learnable-none"), ("element-learnable-absorb", "element-learnable-none")]
    early = {a: (W(a, "early"), W(b, "early")) for a, b in pairs}
    late = {a: (W(a, "late"), W(b, "late")) for a, b in pairs}
    claims.append(Claim(
        "linreg-reparam-helps-early", SRC_000 + ", Linear regression, observation 2",
        "Re-parametrization helps during early training (green vs red; pink vs gray).",
        f"early window: mean log10 loss with absorb < without, for both the scalar and the element-wise pair",
        "; ".join(f"{a}: {x:.2f} vs none {y:.2f}" for a, (x, y) in early.items()),
        all(x < y for x, y in early.values()), {"early": early}))
    claims.append(Claim(
        "linreg-reparam-slows-late", SRC_000 + ", Linear regression, observation 2",
        "...but not as much, and can even slow things down, during later training.",
        f"late window (last {cfg.late} steps): absorb's mean log10 loss ≥ the plain one's for at least one pair",
        "; ".join(f"{a}: {x:.2f} vs none {y:.2f}" for a, (x, y) in late.items()),
        any(x >= y for x, y in late.values()), {"late": late}))
    ess = {("element-learnable-absorb", "element-fixed-absorb"), ("element-learnable-none", "element-fixed-none")}
    vals = {f"{a} vs {b}": (W(a, "late"), W(b, "late")) for a, b in sorted(ess)}
    claims.append(Claim(
        "linreg-element-needs-learnable-scale", SRC_000 + ", Linear regression, observation 3",
        "A learnable scale is essential for element-wise normalization (purple vs pink; brown vs gray).",
        "late window: the learnable mode's mean log10 loss is at least 2 decades below the fixed one's, in both pairs",
        "; ".join(f"{k}: {x:.2f} vs {y:.2f}" for k, (x, y) in vals.items()),
        all(y - x >= 2 for x, y in vals.values()), {"late": vals}))
    final = {m: 10 ** W(m, "late") for m in FIGURE_FINAL}
    inside = {m: lo / 10 <= final[m] <= hi * 10 for m, (lo, hi) in FIGURE_FINAL.items()}
    claims.append(Claim(
        "linreg-final-losses-match-figure", SRC_000 + " figure, read off in seed-findings",
        "Final losses at 5000 steps as read off the source's figure: element-wise learnable 1e-10…1e-8, scalar "
        "learnable 1e-6…1e-4 (none) and 1e-3…1e-1 (absorb), plain ≈ 1.3e2, element-wise fixed absorb ≈ 2.5e2, scalar "
        "fixed absorb ≈ 1.1e3.",
        "each mode's late-window geometric-mean loss within a factor 10 of the figure's range",
        "; ".join(f"{m}: {final[m]:.2g} {'✓' if inside[m] else '✗'}" for m in FIGURE_FINAL),
        all(inside.values()), {"final": final, "inside": inside}))
    for st in cfg.states:
        if st == "keep":
            continue
        got = {a: (W(f"{a}+{st}", "late"), W(a, "late"), W(b, "late")) for a, b in pairs}
        claims.append(Claim(
            f"linreg-{st}-removes-late-slowdown", "beyond the sources (issue 3): Adam state on re-parametrization",
            f"With state='{st}', re-parametrization no longer slows down late training.",
            "late window: absorb+" + st + " mean log10 loss ≤ the plain (no absorb) run's + 0.5, for both pairs",
            "; ".join(f"{a}+{st}: {x:.2f} (keep {k:.2f}, none {y:.2f})" for a, (x, k, y) in got.items()),
            all(x <= y + 0.5 for x, k, y in got.values()), {"late": got}))
    return claims


def linreg_figures(records, cfg: LinregConfig, out_dir) -> list[str]:
    from .figures import new_figure, save

    names = []
    for which, title in (("keep", "the source's 8 modes (state=keep)"), ("beyond", "absorb modes: state policies")):
        fig, ax = new_figure(size=(8, 5))
        runs = sorted({r["run"] for r in records if r["kind"] == "curve"})
        for run in runs:
            is_keep = "+" not in run
            if which == "keep" and not is_keep or which == "beyond" and "absorb" not in run:
                continue
            curves = np.array([r["value"] for r in records if r["kind"] == "curve" and r["run"] == run])
            steps = next(r["step"] for r in records if r["kind"] == "curve" and r["run"] == run)
            med = np.median(curves, axis=0)
            mode = run.split("+")[0]
            colour = PLOT_COLOURS.get(COLOURS.get(mode, mode), COLOURS.get(mode)) if is_keep else None
            line, = ax.semilogy(steps, med, lw=1.2, label=run + (f" ({COLOURS[run]})" if run in COLOURS else ""),
                                ls="-" if is_keep else "--", color=colour)
            ax.fill_between(steps, curves.min(0), curves.max(0), color=line.get_color(), alpha=0.15)
        ax.set(xlabel="step", ylabel="MSE loss (median, band: min-max over seeds)", title=title)
        ax.legend(fontsize=7, ncol=2)
        names += save(fig, out_dir, f"linreg_{which}")
    return names


def linreg_notes(records, cfg: LinregConfig) -> str:
    return "\n".join([
        f"Setup: y = W*x, x ~ N(0, I{cfg.dim}), W*_ij = s_i s_j v_ij, s_i = 10^(-1+2i/9), MSE, Adam lr {cfg.lr}, "
        f"{cfg.steps} steps, a fresh Gaussian batch of {cfg.batch} every step (the source states no batch size), "
        f"{cfg.dtype} (the source states none; PyTorch's default float32 gives its figure's floor near 1e-10, "
        "float64 goes on to ~1e-30), "
        f"{cfg.seeds} seeds (each its own W* and W0) run as copies with `batch_dims=1`; W0 ~ U(-1/√{cfg.dim}, 1/√{cfg.dim}) "
        "(nn.Linear's default; the source does not say); s starts at 1 and Ŵ at W0 (`init='one'`).", "",
        "Mode labels are scale-trainability-renormalization: `tensor` = the source's Scalar, `element` = Matrix "
        "(element-wise); `learnable`/`fixed`; `absorb` = re-parametrization, `none` = no re-parametrization. "
        "`*-fixed-none` modes keep s = 1 and train V = W: they are plain Adam on W (the two curves coincide). "
        "The figure colours the observations name are inferred: " +
        ", ".join(f"{c} = {m}" for m, c in COLOURS.items()) + ".", "",
        "Windows: the claims compare the mean log10 loss over the first "
        f"{cfg.early} and the last {cfg.late} steps (recorded every {cfg.record_every} steps), median over seeds.", "",
        "Why re-parametrization can slow late training (an interpretation the records support): after every "
        "step Ŵ is back on the unit sphere, so Adam's step of about lr per entry is a relative change of W of "
        "about lr, and the loss stalls where that relative noise sits (tensor-learnable-absorb near 1e-1…1e-2). "
        "Transporting the moments (`state='rescale'`) leaves Adam's normalized step m̂/√v̂ unchanged, so it cannot "
        "remove that floor; `reset` restarts Adam's bias correction after every step and is worse. See the "
        "`linreg-*-removes-late-slowdown` claims for the measured numbers.", "",
        "seed-findings: under the Optimization-1 rules the scalar fixed-scale absorb mode converges in a few hundred "
        "steps, while the source's figure shows it flat near 1.1e3, so the notebook must differ there (unresolved); "
        "`linreg-final-losses-match-figure` shows each mode against the figure.",
    ])


register(Experiment(
    name="liu-linreg",
    description="Linear regression with anisotropic W* (Liu 000): 8 modes of scalar/element-wise scale, plus Adam-state policies",
    sources=("000_cf93c4077b34771f.txt",),
    config_cls=LinregConfig, run=linreg_run, claims=linreg_claims, figures=linreg_figures, notes=linreg_notes,
    quick={"steps": 600, "seeds": 2, "early": 100, "late": 200, "states": ("keep", "rescale")}))
