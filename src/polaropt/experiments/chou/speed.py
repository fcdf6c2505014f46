"""chou-sparse's speed claims: WN against GD in steps to the converged loss, at the experiment's step in
w-units (``wn-faster``, ``wn-faster-grows-with-init``) and each at its own fastest step of the sweep
(``wn-faster-at-tuned-step``)."""

from __future__ import annotations

from scipy import stats

from ..framework import Check, Claim
from ..records import select
from .common import SRC, best_wn, fastest, steps_to


def speed_claims(records, gd, wn, cfg) -> list[Claim]:
    conv = cfg.converged_loss
    out = []
    checks = []
    for g in gd:
        best = best_wn(wn, g["alpha"], converged_below=conv)
        checks.append(Check.sooner(
            f"α={g['alpha']:g}: steps to loss {conv:g} of the most accurate converged WN run"
            + ("" if best is None else f" (c={best['ratio']:g})"), None if best is None else steps_to(best),
            "GD's", steps_to(g)))
    out.append(Claim.of(
        id="wn-faster", source=SRC + ", Key Results",
        statement="Experiments show WN significantly improves convergence speed (at every α of the grid; "
                  "`wn-faster-grows-with-init` tests 'especially for larger initializations').",
        checks=checks))
    speedup, censored = {}, set()  # GD's steps over the fastest converged WN run's, per α where WN converged;
    for g in gd:  # GD never converging counts as all the steps (the speed-up is then a lower bound, marked ≥)
        fast = [steps_to(p) for p in wn if p["alpha"] == g["alpha"] and steps_to(p) is not None]
        if fast:
            speedup[g["alpha"]] = (steps_to(g) or cfg.steps) / min(fast)
            if steps_to(g) is None:
                censored.add(g["alpha"])
    trend = (float(stats.spearmanr(list(speedup), list(speedup.values())).statistic) if len(speedup) >= 3
             else float("nan"))
    out.append(Claim.of(
        id="wn-faster-grows-with-init", source=SRC + ", Key Results",
        statement="…especially for larger initializations: WN's speed-up over GD (GD's steps to the converged loss "
                  "over WN's fastest converged run's, at the same step in w-units) grows with α.",
        checks=Check.holds("Spearman rank correlation of the speed-up with α, over the α where WN converged, > 0",
                           f"{trend:.2f} over {len(speedup)} α (speed-up at α = "
                           f"{', '.join(f'{a:g}: ' + ('≥' if a in censored else '') + f'×{v:.2f}' for a, v in speedup.items())})",
                           trend > 0),
        values={"speedup": {f"{a:g}": v for a, v in speedup.items()}, "spearman": trend}))
    swept = [p for p in select(records, "point") if p.get("sweep") == "tuned"] + gd + wn
    top = max((p.get("lr", cfg.lr) for p in swept), default=cfg.lr)
    checks, tuned = [], {}
    for g in gd:
        best = {m: fastest(swept, m, g["alpha"], conv) for m in ("gd", "wn")}
        tuned[f"{g['alpha']:g}"] = {m: None if p is None else [p.get("lr", cfg.lr), steps_to(p)] for m, p in best.items()}
        name = {m: "never" if p is None else f"lr {p.get('lr', cfg.lr):g}"
                + (" (the sweep's largest)" if p.get("lr", cfg.lr) == top else "")
                for m, p in best.items()}
        checks.append(Check.sooner(
            f"α={g['alpha']:g}: fewest steps to loss {conv:g} over the step sweep of WN ({name['wn']}"
            + ("" if best["wn"] is None else f", c={best['wn']['ratio']:g}") + ")",
            None if best["wn"] is None else steps_to(best["wn"]), f"GD's ({name['gd']})",
            None if best["gd"] is None else steps_to(best["gd"])))
    if len(swept) > len(gd) + len(wn):
        out.append(Claim.of(
            id="wn-faster-at-tuned-step", source=SRC + ", Key Results",
            statement="Experiments show WN significantly improves convergence speed, each method at its own fastest "
                      f"step (lr in {', '.join(f'{x:g}' for x in sorted({p.get('lr', cfg.lr) for p in swept}))}; WN also over c).",
            checks=checks, values={"fastest (lr, steps)": tuned}))
    return out
