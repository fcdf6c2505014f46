"""liu-1d: a 1D target W* = 100 from negative starts W0 (Liu 000): which modes can change the weight's sign,
the absorb plateau, and the learnable-scale saddle at W0 = -1."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..framework import Check, Claim, Experiment, first_below, fmt, param, require_distinct
from ..records import by
from .common import MODES, NOTES, SRC_000, mode_names, train_toys

SRC = SRC_000 + ", Failure mode when normalizing element-wise"
SADDLE_W0 = -1.0  # with s = 1 and Ŵ = W0 at the start (init='one'), W0 = -1 puts learnable_scale on s = -Ŵ
# the last step of absorb_learnable_scale's plateau near W*², read off the source's 1D figure by eye (seed-findings)
FIGURE_PLATEAU_END = {-10.0: 700, -50.0: 1800}


@dataclass(frozen=True)
class Config:
    w0s: tuple[float, ...] = param((-1.0, -10.0, -50.0), "the negative starts W0 (one run each, side by side)")
    target: float = param(100.0, "the target W*")
    lr: float = param(0.01, "Adam's learning rate")
    steps: int = param(3000, "Adam steps")
    threshold: float = param(1e-3, "the loss the claims' 'steps to' counts to")
    faster_factor: float = param(2.0, "'much faster': absorb_learnable_scale reaches the threshold this many times "
                                      "sooner than every other mode")
    saddle_tol: float = param(1e-12, "at the saddle W0 = -1, max |s + Ŵ| over the run may be this large")
    plateau_band: float = param(0.5, "the notes count a step as 'W near 0' when the loss is within this fraction "
                                     "of W*² (the loss at W = 0)")
    figure_tol: float = param(0.15, "the plateau's last step may differ from the figure's by this fraction (a step "
                                    "read by eye off a 3000-step axis)")

    def validate(self):
        if not self.w0s or self.steps < 1 or self.lr <= 0:
            raise ValueError(f"w0s must be non-empty, steps >= 1 and lr > 0, got w0s={self.w0s}, steps={self.steps}, "
                             f"lr={self.lr}")
        require_distinct(w0s=self.w0s)
        if any(x0 >= 0 for x0 in self.w0s) or self.target <= 0:
            raise ValueError(f"the experiment is about changing sign: every W0 must be negative and the target "
                             f"positive, got w0s={self.w0s}, target={self.target}")


QUICK = Config(steps=2100)  # long enough for every crossing and plateau end of the full run


def run(cfg: Config, progress) -> list[dict]:
    # every W0 is one copy of a (copies, 1) weight: batch_dims=1 keeps their scales apart
    w0 = torch.tensor(cfg.w0s, dtype=torch.float64).unsqueeze(1)
    records = []
    runs = train_toys(w0, torch.tensor(cfg.target, dtype=torch.float64), MODES, lr=cfg.lr, steps=cfg.steps,
                      batch_dims=1)
    for mode in progress(MODES, desc="liu-1d"):
        loss, w, s_hist, v_hist = runs[mode]
        for k, x0 in enumerate(cfg.w0s):
            base = {"mode": mode, "w0": x0, "seed": 0, "step": list(range(cfg.steps + 1))}
            curves = {"loss": loss[:, k], "w": w[:, k, 0]}
            if s_hist is not None:
                curves.update(s=s_hist[:, k], v=v_hist[:, k, 0])
            for metric, values in curves.items():
                records.append({"kind": "curve", "run": f"{mode}@{x0:g}", "metric": metric, **base,
                                "value": values.tolist()})
    return records


def plateau(loss: list[float], target: float, band: float) -> tuple[int, int | None]:
    """Steps spent with W near 0 (loss within ±band of W*², the loss at W = 0), and the last such step."""
    near = [i for i, x in enumerate(loss) if (1 - band) * target**2 <= x <= (1 + band) * target**2]
    return len(near), (near[-1] if near else None)


def claims(records, cfg: Config) -> list[Claim]:
    loss, w, s, v = (by(records, ("mode", "w0"), kind="curve", metric=m) for m in ("loss", "w", "s", "v"))
    best = "absorb_learnable_scale"
    others = [m for m in MODES if m != best]
    out = []
    for x0 in cfg.w0s:
        hits = {m: first_below(loss[(m, x0)], cfg.threshold) for m in MODES}
        out.append(Claim.of(
            id=f"1d-absorb-learnable-fastest@{x0:g}", source=SRC,
            statement=f"With re-parametrization and a learnable scale, learning is much faster than in the other modes "
                      f"(the text states W0 = -1; its figure shows W0 = -10 and -50; here W0 = {x0:g}).",
            checks=[Check.sooner(f"steps to loss {cfg.threshold:g} of {best}" if m == others[0] else best,
                                 hits[best], m, hits[m], factor=cfg.faster_factor) for m in others],
            values={"steps_to_threshold": hits}))
    # the figure's plateau ends, where this run is long enough to see them end
    shown = {x0: end for x0, end in FIGURE_PLATEAU_END.items()
             if x0 in cfg.w0s and end * (1 + cfg.figure_tol) < cfg.steps}
    if shown:
        ends = {x0: plateau(loss[(best, x0)], cfg.target, cfg.plateau_band)[1] for x0 in shown}
        out.append(Claim.of(
            id="1d-absorb-plateau-matches-figure", source=SRC + " (its figure)",
            statement="The re-parametrized learnable mode sits on a plateau near W*² (W near 0) until step ≈ "
                      + " and ≈ ".join(f"{end} at W0 = {x0:g}" for x0, end in shown.items())
                      + " (read off the source's figure).",
            checks=[Check.near(f"last plateau step@{x0:g}", ends[x0], end, rel=cfg.figure_tol)
                    for x0, end in shown.items()],
            values={"plateau_end": {f"{x0:g}": ends[x0] for x0 in shown}}))
    stuck = {x0: max(w[("absorb_fixed_scale", x0)]) for x0 in cfg.w0s}
    out.append(Claim.of(
        id="1d-fixed-scale-cannot-change-sign", source=SRC,
        statement="When s is not learnable, the weight cannot change sign, since Ŵ can only take values +1 or -1.",
        checks=[Check.below(f"max W of absorb_fixed_scale@{x0:g}", m, 0) for x0, m in stuck.items()],
        values={"max_w": stuck}))
    highest = {(m, x0): max(w[(m, x0)]) for m in ("learnable_scale", "absorb_learnable_scale") for x0 in cfg.w0s}
    out.append(Claim.of(
        id="1d-learnable-scale-changes-sign", source=SRC,
        statement="As long as s is learnable, the weight can change its sign even in 1D, because s itself can cross "
                  "zero.",
        checks=[Check.above(f"max W of {m}@{x0:g}", top, 0) for (m, x0), top in highest.items()
                if not (m == "learnable_scale" and x0 == SADDLE_W0)],
        values={"max_w": {f"{m}@{x0:g}": top for (m, x0), top in highest.items()}}))
    if SADDLE_W0 in cfg.w0s:
        key = ("learnable_scale", SADDLE_W0)
        gap = max(abs(a + b) for a, b in zip(s[key], v[key]))
        wmax = max(w[key])
        out.append(Claim.of(
            kind="derived", id="1d-learnable-saddle-at-minus-one", source=NOTES,
            statement="At W0 = -1 with s = 1, Ŵ = -1, learnable_scale is stuck exactly: s = -Ŵ is preserved, so "
                      "W = -s² ≤ 0 (a symmetric saddle, not a bug).",
            checks=[Check.at_most("max |s + Ŵ| over the run", gap, cfg.saddle_tol),
                    Check.at_most("max W", wmax, 0)],
            values={"max_abs_s_plus_v": gap, "max_w": wmax}))
    return out


def figures(records, cfg: Config, out_dir) -> list[str]:
    from ..figures import new_figure, save

    loss = by(records, ("mode", "w0"), kind="curve", metric="loss")
    fig, axes = new_figure(1, len(cfg.w0s) + 1, size=(4.2 * (len(cfg.w0s) + 1), 4))
    for ax, x0 in zip(axes, cfg.w0s):
        for m in MODES:
            ax.semilogy(np.maximum(loss[(m, x0)], 1e-300), label=m)
        ax.set(title=f"W0 = {x0:g}, W* = {cfg.target:g}", xlabel="step", ylabel="loss", ylim=(1e-12, None))
        ax.legend(fontsize=7)
    ax = axes[-1]
    saddle = by(records, "metric", kind="curve", mode="learnable_scale", w0=SADDLE_W0)
    if "s" in saddle:
        ax.plot(saddle["s"], label="s")
        ax.plot(saddle["v"], label="Ŵ")
        ax.plot(saddle["w"], label="W = s·Ŵ")
        ax.set(title="learnable_scale at W0 = -1: s = -Ŵ", xlabel="step")
        ax.legend(fontsize=7)
    return save(fig, out_dir, "one_d")


def details(records, cfg: Config) -> str:
    """The plateau each mode spends near W = 0, per W0."""
    loss = by(records, ("mode", "w0"), kind="curve", metric="loss")
    lines = [f"Measured steps with the loss within ±{100 * cfg.plateau_band:g}% of W*² (W near 0), and the last such "
             "step:", ""]
    for x0 in cfg.w0s:
        cells = []
        for m in ("absorb_learnable_scale", "learnable_scale", "no_scale"):
            n, last = plateau(loss[(m, x0)], cfg.target, cfg.plateau_band)
            cells.append(f"{m} {n} steps (last {fmt(last)})")
        lines.append(f"- W0 = {x0:g}: " + "; ".join(cells))
    return "\n".join(lines) + "\n\n" + mode_names()


EXPERIMENT = Experiment(
    name="liu-1d",
    description="1D target W* = 100 from W0 in {-1, -10, -50} (Liu 000): the absorb plateau and the W0 = -1 saddle",
    sources=("000_cf93c4077b34771f.txt",), config=Config, quick=QUICK, run=run, claims=claims, figures=figures,
    notes=Path(__file__).with_suffix(".md"), details=details)
