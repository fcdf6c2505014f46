"""cs182-rms: the RMS norm (CS182 004, problem 2): ‖x‖₂ and ‖x‖_RMS against d for Gaussian x; E‖Wx‖²_RMS = d1
and the 1/√d1 (Xavier) fix; the unit balls of ℓ1, ℓ2, RMS and ℓ∞ in 2D."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..framework import Check, Claim, Experiment, param
from ..records import by, select
from .common import SRC

SRC2 = SRC + ", problem 2"


@dataclass(frozen=True)
class Config:
    dims: tuple[int, ...] = param((1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096), "sizes d of Gaussian x")
    samples: int = param(2000, "Gaussian vectors per d")
    d1s: tuple[int, ...] = param((4, 16, 64, 256, 1024), "layer input sizes d1")
    d2s: tuple[int, ...] = param((8, 256), "layer output sizes d2")
    layer_samples: int = param(400, "at least this many (W, x) pairs per (d1, d2) (more where the variance asks)")
    tol: float = param(0.05, "E‖x‖_RMS ≥ 1 − tol; the layer means have a relative standard error ≤ tol/z_max")
    seed: int = param(0, "seed of the Monte Carlo samples")
    z_max: float = param(3.0, "a Monte Carlo mean may miss its bound or target by this many standard errors")
    fit_from: int = param(16, "the slope fit and the RMS check use d ≥ fit_from")
    slope_tol: float = param(0.02, "the log-log slope of E‖x‖₂ against d is 0.5 ± slope_tol")
    round_tol: float = param(1e-12, "rounding slack of the 2D unit balls' radii")

    def validate(self):
        if min(self.dims) < 1 or min(self.d1s) < 1 or min(self.d2s) < 1:
            raise ValueError(f"dims, d1s and d2s must be positive, got {self.dims}, {self.d1s}, {self.d2s}")
        if self.samples < 10 or self.layer_samples < 10:
            raise ValueError(f"samples and layer_samples must be at least 10, got {self.samples}, {self.layer_samples}")
        if min(self.tol, self.z_max, self.slope_tol, self.round_tol) <= 0:
            raise ValueError(f"tol, z_max, slope_tol and round_tol must be > 0, got {self.tol}, {self.z_max}, "
                             f"{self.slope_tol}, {self.round_tol}")


QUICK = Config(dims=(1, 4, 16, 64, 256, 1024), samples=500, d1s=(4, 64, 256), layer_samples=100)


def run(cfg: Config, progress) -> list[dict]:
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
            # enough samples for a standard error ≤ tol/z_max: ‖Wx‖²_RMS/d1 = (‖x‖²/d1)·(χ²_d2/d2) has relative
            # variance (1 + 2/d1)(1 + 2/d2) − 1, large when d1 and d2 are small
            relvar = (1 + 2 / d1) * (1 + 2 / d2) - 1
            total = max(cfg.layer_samples, math.ceil(cfg.z_max**2 * relvar / cfg.tol**2 * 1.2))
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


def layer_target(r) -> float:
    """What E‖Wx‖²_RMS should be: d1 for unit Gaussian W, 1 with Xavier's 1/√d1."""
    return r["d1"] if r["init"] == "plain" else 1.0


def claims(records, cfg: Config) -> list[Claim]:
    norms = sorted(select(records, "point", part="norms"), key=lambda r: r["d"])
    big = [r for r in norms if r["d"] >= cfg.fit_from]
    slope = (float(np.polyfit(np.log([r["d"] for r in big]), np.log([r["l2_mean"] for r in big]), 1)[0])
             if len(big) >= 2 else float("nan"))
    out = [Claim.of(
        id="l2-grows-like-sqrt-d", source=SRC2 + " (a)",
        statement="E‖x‖₂ ≤ √(Σ E xᵢ²) = O(√d) for x with i.i.d. standard Gaussian entries.",
        checks=[Check.at_most("largest (E‖x‖₂ − √d)/standard error over d (the Monte Carlo mean may exceed the bound "
                              "by a few standard errors)", max((r["l2_mean"] - math.sqrt(r["d"])) / r["l2_se"]
                                                               for r in norms), cfg.z_max),
                Check.near(f"log-log slope of E‖x‖₂ against d over d ≥ {cfg.fit_from}", slope, 0.5, tol=cfg.slope_tol)],
        values={"slope": slope})]
    out.append(Claim.of(
        id="rms-is-constant", source=SRC2 + " (a)",
        statement="The RMS norm is the Euclidean norm divided by √d, so for Gaussian x its expectation is constant, O(1).",
        checks=[Check.between(f"E‖x‖_RMS at d={r['d']} (s.e. {r['rms_se']:.1e})", r["rms_mean"], 1 - cfg.tol,
                              1 + cfg.z_max * r["rms_se"]) for r in big]
        or Check.holds(f"a d ≥ {cfg.fit_from}", "no such d", False),
        values={"rms_mean": {r["d"]: r["rms_mean"] for r in big}}))
    for init, stmt in (
            ("plain", "E‖y‖²_RMS = d1 for y = Wx with i.i.d. unit Gaussian W and x; it does not depend on d2."),
            ("xavier", "Multiplying W by 1/√d1 (Xavier) makes E‖Wx‖²_RMS = 1 regardless of d1 and d2.")):
        rows = select(records, "point", part="layer", init=init)
        rel = [r["rms_sq_mean"] / layer_target(r) for r in rows]
        z = [abs(r["rms_sq_mean"] - layer_target(r)) / r["rms_sq_se"] for r in rows]
        se = [r["rms_sq_se"] / layer_target(r) for r in rows]
        worst = max(range(len(rows)), key=lambda i: z[i], default=None)
        checks = [] if worst is None else [
            Check.at_most(f"largest distance of the Monte Carlo mean from {'d1' if init == 'plain' else '1'} in "
                          f"standard errors over {len(rows)} (d1, d2) (worst at d1={rows[worst]['d1']}, "
                          f"d2={rows[worst]['d2']}: ratio {rel[worst]:.3f}, n={rows[worst]['samples']})", max(z),
                          cfg.z_max),
            Check.at_most(f"largest relative standard error (so a {100 * cfg.tol:g}% departure would be seen)",
                          max(se), cfg.tol / cfg.z_max)]
        out.append(Claim.of(id=f"layer-rms-{init}", source=SRC2 + " (c)", statement=stmt,
                            checks=checks or Check.holds("a (d1, d2) pair", "no layer records", False),
                            values={"ratios": rel, "z": z, "relative_se": se}))
    balls = {k: np.asarray(v) for k, v in by(records, "norm", kind="curve", part="ball").items()}
    nested = bool(np.all(balls["l1"] <= balls["l2"] + cfg.round_tol)
                  and np.all(balls["l2"] <= balls["linf"] + cfg.round_tol)
                  and np.all(balls["linf"] <= balls["rms"] + cfg.round_tol))
    rms_r = float(np.max(np.abs(balls["rms"] - math.sqrt(2))))
    out.append(Claim.of(
        id="unit-balls-2d", source=SRC2 + " (b), Figure 1",
        statement="The unit balls in 2D: the RMS ball is the ℓ2 ball of radius √2, and the balls nest ℓ1 ⊂ ℓ2 ⊂ ℓ∞ ⊂ "
                  "RMS (the ℓ∞ square touches the RMS circle at its corners).",
        checks=[Check.at_most("max |r_RMS − √2| over the directions", rms_r, cfg.round_tol),
                Check.holds("radii ordered ℓ1 ≤ ℓ2 ≤ ℓ∞ ≤ RMS in every direction",
                            f"nested in every direction: {nested}", nested)]))
    return out


def figures(records, cfg: Config, out_dir) -> list[str]:
    from ..figures import new_figure, save

    fig, (ax1, ax2, ax3) = new_figure(1, 3, size=(15, 4.5))
    norms = sorted(select(records, "point", part="norms"), key=lambda r: r["d"])
    d = np.array([r["d"] for r in norms])
    ax1.loglog(d, [r["l2_mean"] for r in norms], "o-", label="E‖x‖₂")
    ax1.loglog(d, [r["rms_mean"] for r in norms], "s-", label="E‖x‖_RMS")
    ax1.loglog(d, np.sqrt(d), "k:", lw=1, label="√d")
    ax1.set(xlabel="d", ylabel="norm", title="Gaussian x: ℓ2 grows like √d, RMS stays O(1)")
    ax1.legend(fontsize=8)
    for i, d2 in enumerate(cfg.d2s):
        for init, marker in (("plain", "o-"), ("xavier", "s--")):
            rows = sorted(select(records, "point", part="layer", d2=d2, init=init), key=lambda r: r["d1"])
            ax2.loglog([r["d1"] for r in rows], [r["rms_sq_mean"] for r in rows], marker, color=f"C{i}",
                       label=f"{'W' if init == 'plain' else 'W/√d1'}, d2={d2}")
    d1 = np.array(sorted(cfg.d1s))
    ax2.loglog(d1, d1, "k:", lw=1, label="d1")
    ax2.set(xlabel="d1", ylabel="E‖Wx‖²_RMS", title="layer output scale and the Xavier fix")
    ax2.legend(fontsize=7)
    for r in select(records, "curve", part="ball"):
        th, rad = np.asarray(r["step"]), np.asarray(r["value"])
        ax3.plot(rad * np.cos(th), rad * np.sin(th), label={"l1": "ℓ1", "l2": "ℓ2", "rms": "RMS", "linf": "ℓ∞"}[r["norm"]])
    ax3.set(aspect="equal", title="unit balls in 2D", xlabel="x₁", ylabel="x₂")
    ax3.legend(fontsize=8)
    return save(fig, out_dir, "rms")


def details(records, cfg: Config) -> str:
    """The layer means against their targets, per (d1, d2) (Xavier's rows rescale the same samples)."""
    lines = ["| d1 | d2 | samples | E‖Wx‖²_RMS / d1 | distance in standard errors |", "|---|---|---|---|---|"]
    for r in select(records, "point", part="layer", init="plain"):
        lines.append(f"| {r['d1']} | {r['d2']} | {r['samples']} | "
                     f"{r['rms_sq_mean'] / layer_target(r):.3f} | "
                     f"{abs(r['rms_sq_mean'] - layer_target(r)) / r['rms_sq_se']:.1f} |")
    return "\n".join(lines)


EXPERIMENT = Experiment(
    name="cs182-rms",
    description="RMS norm (CS182 004): ‖x‖₂ vs ‖x‖_RMS against d, E‖Wx‖²_RMS = d1 and Xavier, 2D unit balls",
    sources=("004_65400c7305219704.txt",), config=Config, quick=QUICK, run=run, claims=claims, figures=figures,
    notes=Path(__file__).with_suffix(".md"), details=details)
