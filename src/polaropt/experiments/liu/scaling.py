"""liu-scaling: steps to reach a target at distance R (Liu 001): O(R) without a scale, O(√R) with a
learnable scale, O(log R) with re-parametrization."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..framework import Check, Claim, Experiment, param, require_distinct
from ..records import by, select
from ..training import train
from .common import MODES, SRC_001, adam, polar_modes

SRC = SRC_001 + ", Problem setup / Steps 1-2"
ABSORB = ("absorb_learnable_scale", "absorb_fixed_scale")


@dataclass(frozen=True)
class Config:
    radii: tuple[float, ...] = param((10.0, 31.6, 100.0, 316.0, 1000.0, 3162.0, 10000.0), "the distances R = ‖W*‖")
    directions: int = param(3, "target directions: π/4 (the source's W* = (100, 100)) and random angles in the "
                               "first quadrant")
    w0: tuple[float, ...] = param((-0.5, 0.0), "the start W0")
    lr: float = param(0.01, "Adam's learning rate")
    tol: float = param(0.01, "relative error ‖W - W*‖/R that counts as reached")
    max_steps: int = param(40000, "step cap of the scaled modes")
    no_scale_max_radius: float = param(1000.0, "no_scale needs ~R/lr steps: larger R is out of the time budget")
    no_scale_max_steps: int = param(120000, "step cap of no_scale")
    seed: int = param(0, "seed of the random target directions")
    formula_rel: float = param(0.25, "no_scale's steps at the largest R (diagonal target) within this fraction of "
                                     "R/(√N·η)")
    no_scale_slope: float = param(1.0, "the log-log slope of no_scale's median steps that O(R) predicts")
    no_scale_slope_tol: float = param(0.15, "allowed deviation of no_scale's slope over the last interval")
    learnable_slope: float = param(0.5, "the log-log slope of learnable_scale's median steps that O(√R) predicts")
    learnable_slope_tol: float = param(0.15, "allowed deviation of learnable_scale's slope")
    absorb_min_r2: float = param(0.9, "the absorb modes' median steps vs log10(R) must fit a line with R² at "
                                      "least this")
    absorb_max_power: float = param(0.15, "the absorb modes' log-log slope must be at most this (far below √R's 0.5)")

    def validate(self):
        if len(self.radii) < 2 or min(self.radii) <= 0 or self.directions < 1:
            raise ValueError("radii needs at least 2 positive values and directions >= 1")
        require_distinct(radii=self.radii)
        if len(self.w0) != 2:
            raise ValueError(f"w0 must have 2 entries (the targets are 2D), got {self.w0}")


QUICK = Config(radii=(10.0, 31.6, 100.0), directions=2, no_scale_max_radius=100.0)


def targets(cfg: Config) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    g = torch.Generator().manual_seed(cfg.seed)
    angles = [math.pi / 4] + (torch.rand(cfg.directions - 1, generator=g, dtype=torch.float64) * math.pi / 2).tolist()
    dirs = torch.tensor([[math.cos(a), math.sin(a)] for a in angles], dtype=torch.float64)
    radii = torch.tensor(cfg.radii, dtype=torch.float64)
    return radii, dirs, angles


def steps_to_reach(mode, radii, dirs, cfg: Config, max_steps: int) -> torch.Tensor:
    """First step at which every (R, direction) copy is within tol·R of its target: one batched run."""
    target = (radii[:, None, None] * dirs[None, :, :]).reshape(-1, 2)
    r = radii.repeat_interleave(len(dirs))
    w0 = torch.tensor(cfg.w0, dtype=torch.float64).expand_as(target).clone()
    model = polar_modes([mode], w0, init="norm", batch_dims=1)  # s starts at ‖W0‖ (seed-findings)
    hit = torch.full((len(target),), -1, dtype=torch.long)

    def loss_at(t):
        d = model[mode].weight - target
        reached = (d.detach().norm(dim=-1) / r < cfg.tol) & (hit < 0)
        hit[reached] = t
        return d.square().sum()  # summed loss, as in seed-findings' scaling check

    def all_reached(t):
        return t % 200 == 0 and bool((hit >= 0).all())

    train(loss_at, adam(model, cfg.lr), max_steps, stop=all_reached)
    return hit.view(len(radii), len(dirs))


def run(cfg: Config, progress) -> list[dict]:
    radii, dirs, angles = targets(cfg)
    records = []
    for mode in progress(MODES, desc="liu-scaling"):
        keep = radii <= cfg.no_scale_max_radius if mode == "no_scale" else torch.ones_like(radii, dtype=torch.bool)
        max_steps = cfg.no_scale_max_steps if mode == "no_scale" else cfg.max_steps
        hits = steps_to_reach(mode, radii[keep], dirs, cfg, max_steps)
        for i, R in enumerate(radii[keep].tolist()):
            for k, a in enumerate(angles):
                h = int(hits[i, k])
                records.append({"kind": "point", "mode": mode, "radius": R, "direction": k, "angle": a,
                                "steps": h if h >= 0 else None, "max_steps": max_steps})
    return records


def medians(steps: dict) -> list[tuple[float, float]] | None:
    """(R, median steps over target directions) sorted by R, from ``{(R, direction): steps}``; None if a
    point never reached."""
    by_r: dict[float, list] = {}
    for (R, _), s in steps.items():
        by_r.setdefault(R, []).append(s)
    if not by_r or any(s is None for v in by_r.values() for s in v):
        return None
    return sorted((R, float(np.median(v))) for R, v in by_r.items())


def fit(steps: dict, *, log_y: bool = True) -> dict | None:
    """Least-squares line through (log10 R, log10 steps) — or (log10 R, steps) — of the per-R medians.

    The median over target directions removes the direction's scatter, which is not what the law is about.
    """
    from scipy.stats import linregress

    pts = medians(steps)
    if pts is None or len(pts) < 2:
        return None
    x = np.log10([R for R, _ in pts])
    y = np.log10([s for _, s in pts]) if log_y else np.array([s for _, s in pts])
    f = linregress(x, y)
    return {"slope": float(f.slope), "intercept": float(f.intercept), "r2": float(f.rvalue**2),
            "radii": [R for R, _ in pts], "median_steps": [s for _, s in pts]}


def claims(records, cfg: Config) -> list[Claim]:
    steps = {m: by(records, ("radius", "direction"), "steps", kind="point", mode=m) for m in MODES}
    never = "some point never reached the target within its step cap"
    out = []
    # no_scale: the post's own formula t = R/(√N·η) is asymptotic (R ≫ ‖W0‖), so it is checked at the largest
    # radius run, with the local slope over the last interval
    statement = "no_scale: when R ≫ ‖W0‖ the time to reach the target is t = R/(√N·η): O(R)."
    pts = medians(steps["no_scale"])
    if pts is None or len(pts) < 2:
        out.append(Claim.failed(id="scaling-no_scale", source=SRC, statement=statement,
                                expected="every no_scale point reaches the target at two radii or more", why=never))
    else:
        # the formula assumes Adam ≈ sign descent moves every coordinate by η toward a target whose coordinates
        # are equal: the source's own direction (1, 1), our direction 0 (angle π/4)
        diag = by(records, "radius", "steps", kind="point", mode="no_scale", direction=0)
        r2 = max(diag)
        (r1, m1), (_, m2) = pts[-2], pts[-1]
        formula = r2 / (math.sqrt(len(cfg.w0)) * cfg.lr)
        local = math.log10(m2 / m1) / math.log10(r2 / r1)
        out.append(Claim.of(
            id="scaling-no_scale", source=SRC, statement=statement,
            checks=[Check.near(f"steps at R = {r2:g} toward the diagonal target (R/(√N·η) = {formula:.0f})",
                               diag[r2], formula, rel=cfg.formula_rel),
                    Check.near(f"log-log slope of the median steps over R = {r1:g}→{r2:g}", local,
                               cfg.no_scale_slope, tol=cfg.no_scale_slope_tol)],
            values={"steps": diag[r2], "formula": formula, "local_slope": local, "median_steps": m2,
                    "fit_slope": fit(steps["no_scale"])["slope"]}))
    # a mode with a point that never reached its target has no fit: its checks see None and fail
    f = fit(steps["learnable_scale"])
    out.append(Claim.of(
        id="scaling-learnable_scale", source=SRC,
        statement="learnable_scale: |s| and ‖Ŵ‖ both grow to O(√R), so t = O(√R/η).",
        checks=Check.near("slope of log(median steps) vs log(R)", f and f["slope"], cfg.learnable_slope,
                          tol=cfg.learnable_slope_tol),
        values=f or {"why": never}))
    for mode in ABSORB:
        lin, power = fit(steps[mode], log_y=False), fit(steps[mode])
        out.append(Claim.of(
            id=f"scaling-{mode}", source=SRC, statement=f"{mode}: with re-parametrization the time grows as O(log R).",
            checks=[Check.above("slope of the median steps vs log10(R)", lin and lin["slope"], 0),
                    Check.at_least("R² of that line", lin and lin["r2"], cfg.absorb_min_r2),
                    Check.at_most("power-law slope", power and power["slope"], cfg.absorb_max_power)],
            values={"linear_in_log": lin, "power": power} if lin else {"why": never}))
    return out


def figures(records, cfg: Config, out_dir) -> list[str]:
    from ..figures import new_figure, save

    fig, ax = new_figure(size=(6.5, 4.8))
    for mode, marker in zip(MODES, "osd^"):
        pts = [(r["radius"], r["steps"]) for r in select(records, "point", mode=mode) if r["steps"]]
        if not pts:
            continue
        ax.loglog(*zip(*pts), marker, label=mode, alpha=0.7)
        f = fit(by(records, ("radius", "direction"), "steps", kind="point", mode=mode))
        if f is not None:
            xs = np.array(f["radii"])
            ax.loglog(xs, 10 ** (f["intercept"] + f["slope"] * np.log10(xs)), "-", lw=0.8,
                      color=ax.lines[-1].get_color())
    ax.set(xlabel="R = ‖W*‖", ylabel=f"steps to relative error {cfg.tol:g}",
           title="time to reach a far target (lines: power-law fits)")
    ax.legend(fontsize=8)
    return save(fig, out_dir, "scaling")


def details(records, cfg: Config) -> str:
    capped = select(records, "point", steps=None)
    return (f"{len(capped)} (mode, R, direction) points did not reach the target within their step cap."
            if capped else "Every (mode, R, direction) point reached the target within its step cap.")


EXPERIMENT = Experiment(
    name="liu-scaling",
    description="Steps to reach a target at distance R (Liu 001): O(R), O(√R), O(log R) for no/learnable/absorbed scale",
    sources=("001_e072fe36ebd0c64d.txt",), config=Config, quick=QUICK, run=run, claims=claims, figures=figures,
    notes=Path(__file__).with_suffix(".md"), details=details)
