"""What the source's linear-regression figure (Liu 000) shows, read off by polaropt, the claims that compare
liu-linreg's runs with it, and the plots of those runs."""

from __future__ import annotations

import numpy as np

from ..framework import Check, Claim
from ..records import select
from .common import SRC_000

# The source's figure legend colours, inferred from its three observations (the post names colours,
# not modes): green/red = scalar learnable with/without re-parametrization, pink/gray = element-wise
# learnable with/without, purple/brown = element-wise fixed with/without.
COLOURS = {"tensor-learnable-absorb": "green", "tensor-learnable-none": "red",
           "element-learnable-absorb": "pink", "element-learnable-none": "gray",
           "element-fixed-absorb": "purple", "element-fixed-none": "brown"}
PLOT_COLOURS = {"pink": "hotpink", "tensor-fixed-absorb": "tab:blue", "tensor-fixed-none": "tab:orange",
                "tensor-fixed-project": "tab:cyan"}
# Final losses read off the source's figure at 5000 steps (seed-findings), as (low, high)
FIGURE_FINAL = {"element-learnable-absorb": (1e-10, 1e-8), "element-learnable-none": (1e-10, 1e-8),
                "tensor-learnable-none": (1e-6, 1e-4), "tensor-learnable-absorb": (1e-3, 1e-1),
                "tensor-fixed-none": (1.3e2, 1.3e2), "element-fixed-none": (1.3e2, 1.3e2),
                "element-fixed-absorb": (2.5e2, 2.5e2), "tensor-fixed-absorb": (1.1e3, 1.1e3)}
# Not one of the source's modes: a candidate for what its notebook ran as "scalar fixed + re-parametrization"
# (s fixed, Ŵ projected back to the sphere, the norm thrown away instead of absorbed into s)
VARIANTS = {"tensor-fixed-project": dict(scale="tensor", trainable_scale=False, mode="project")}
FLAT_FIGURE_MODE = "tensor-fixed-absorb"  # the mode the figure draws flat


def figure_claims(late: dict[str, float], first: dict[str, float], cfg) -> list[Claim]:
    """``late``: mode -> the late window's mean log10 loss (median over seeds); ``first``: mode -> log10 of the
    first recorded loss (median over seeds)."""
    final = {m: 10 ** late[m] for m in FIGURE_FINAL}
    out = [Claim.of(
        id="linreg-final-losses-match-figure", source=SRC_000 + " figure (values read off by polaropt)",
        statement="Final losses at 5000 steps as read off the source's figure: element-wise learnable 1e-10…1e-8, "
                  "scalar learnable 1e-6…1e-4 (none) and 1e-3…1e-1 (absorb), plain ≈ 1.3e2, element-wise fixed "
                  "absorb ≈ 2.5e2, scalar fixed absorb ≈ 1.1e3.",
        # a range that starts at the figure's floor (float32's, ~1e-10) bounds the loss from above only: a run that
        # goes below it is not contradicted by a figure that cannot show lower
        checks=[Check.at_most(f"{m}'s late geometric-mean loss (the figure's range starts at its floor)", final[m],
                              hi * cfg.figure_factor) if lo <= cfg.figure_floor else
                Check.between(f"{m}'s late geometric-mean loss", final[m], lo / cfg.figure_factor,
                              hi * cfg.figure_factor) for m, (lo, hi) in FIGURE_FINAL.items()],
        values={"final": final})]
    for variant in VARIANTS:
        if variant not in late:
            continue
        lo, hi = FIGURE_FINAL[FLAT_FIGURE_MODE]
        drop = first[variant] - late[variant]
        out.append(Claim.of(
            kind="beyond", id="linreg-fixed-project-draws-the-flat-curve",
            source="beyond the sources: which rule draws the figure's flat scalar-fixed curve (a polaropt question)",
            statement="The figure's flat scalar fixed + re-parametrization curve (≈ 1.1e3) is what a fixed scalar s "
                      "gives when Ŵ is projected back to the sphere and its norm thrown away (mode='project'); "
                      "absorbing the norm into the fixed s (the Optimization-1 rule) lets it converge.",
            checks=[Check.between(f"{variant}'s late geometric-mean loss", 10 ** late[variant],
                                  lo / cfg.figure_factor, hi * cfg.figure_factor),
                    Check.at_most(f"decades {variant} drops from its first recorded loss to the late window", drop,
                                  cfg.flat_decades),
                    Check.above(f"decades {FLAT_FIGURE_MODE} drops", first[FLAT_FIGURE_MODE] - late[FLAT_FIGURE_MODE],
                                cfg.flat_decades)],
            values={"late_geomean": 10 ** late[variant], "drop_decades": drop,
                    "absorb_drop_decades": first[FLAT_FIGURE_MODE] - late[FLAT_FIGURE_MODE]}))
    return out


def figures(records, cfg, out_dir) -> list[str]:
    from ..figures import new_figure, save

    names = []
    runs = sorted({r["run"] for r in select(records, "curve")})
    for which, title in (("keep", "the source's 8 modes (state=keep), and s fixed + project (dotted)"),
                         ("beyond", "absorb modes: state policies")):
        fig, ax = new_figure(size=(8, 5))
        for run_name in runs:
            is_keep = "+" not in run_name
            if which == "keep" and not is_keep or which == "beyond" and ("absorb" not in run_name):
                continue
            found = select(records, "curve", run=run_name)
            curves = np.array([r["value"] for r in found])
            mode = found[0]["mode"]
            colour = PLOT_COLOURS.get(COLOURS.get(mode, mode), COLOURS.get(mode)) if is_keep else None
            label = run_name + (f" ({COLOURS[run_name]})" if run_name in COLOURS else "")
            style = ":" if mode in VARIANTS else "-" if is_keep else "--"
            line, = ax.semilogy(found[0]["step"], np.median(curves, axis=0), lw=1.2, label=label, ls=style,
                                color=colour)
            ax.fill_between(found[0]["step"], curves.min(0), curves.max(0), color=line.get_color(), alpha=0.15)
        ax.set(xlabel="step", ylabel="MSE loss (median, band: min-max over seeds)", title=title)
        ax.legend(fontsize=7, ncol=2)
        names += save(fig, out_dir, f"linreg_{which}")
    return names
