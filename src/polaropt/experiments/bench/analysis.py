"""The benchmark's records → statistics, claims, figures and tables (nothing here trains).

Every number is taken at each recipe's best lr (from the search seeds, never reported) over the reported
seeds, which are paired across recipes (same initialization, same batches): the final validation loss, its
paired difference to AdamW's and to Muon's with a 95% t interval and a Holm-adjusted p (the family: the
recipes compared with one baseline on one task), the steps and the time to reach AdamW's final loss
(per seed, interpolated between evaluations), the interleaved step time, throughput and state memory; and,
from the search runs, the width of the lr window.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats as sps

from ..figures import new_figure, save
from ..framework import Check, Claim, Experiment, fmt
from ..records import by, one, select
from .common import FEWER_STEPS, FIXES, SRC_000, WN_STYLE, best_of, lr_factor, search_scores

SRC_002 = "002 Wu et al. 2020, Introduction"
SRC_MUON = "Jordan et al. 2024 (Muon), and Wen et al. (Hyperball): fewer steps to a given loss than AdamW"
SRC_FIX = "this project (going beyond the sources)"


@dataclass(frozen=True)
class Pair:
    """A paired difference (recipe − baseline, seed by seed): mean, 95% t interval, p (two-sided) and Holm's p."""
    mean: float
    lo: float
    hi: float
    p: float
    n: int
    holm: float = math.nan

    def text(self, digits: int = 3) -> str:
        return f"{self.mean:+.{digits}f} [{self.lo:+.{digits}f}, {self.hi:+.{digits}f}]"


def paired(a: list[float], b: list[float]) -> Pair | None:
    """``a − b`` seed by seed with SciPy's paired t test and its 95% interval; None when a run diverged."""
    if not all(map(math.isfinite, a + b)) or len(a) != len(b) or len(a) < 2:
        return None
    d = np.subtract(a, b)
    if np.ptp(d) <= 1e-12 * max(1.0, float(np.abs(d).max())):  # no spread (to rounding): the interval is the
        m = float(d.mean())  # point, and the test says "certain" unless it is 0
        return Pair(m, m, m, 1.0 if abs(m) <= 1e-12 else 0.0, len(d))
    res = sps.ttest_rel(a, b)
    ci = res.confidence_interval(0.95)
    return Pair(float(d.mean()), float(ci.low), float(ci.high), float(res.pvalue), len(d))


def holm(ps: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjusted p-values of one family ({name: p})."""
    order = sorted(ps, key=ps.get)
    out, running = {}, 0.0
    for i, k in enumerate(order):
        running = max(running, min(1.0, (len(order) - i) * ps[k]))
        out[k] = running
    return out


def cross(curve: list, at: list[int], target: float) -> int | None:
    """The step at which ``curve`` first reaches ``target``, interpolated linearly between the two evaluations
    around the crossing (None: never, or an unreachable target such as +∞)."""
    if not math.isfinite(target):
        return None
    for i, (t, v) in enumerate(zip(at, curve)):
        if v is None:
            return None
        if v <= target:
            if i == 0:
                return t
            t0, v0 = at[i - 1], curve[i - 1]
            return round(t0 + (t - t0) * (v0 - target) / (v0 - v))
    return None


class Stats:
    """Everything the claims, figures and tables read, computed once from one task's records."""

    def __init__(self, records: list[dict], cfg, task: str):
        self.task, self.cfg = task, cfg
        self.recipes = list(cfg.recipes)
        self.search = {e: search_scores(records, e) for e in self.recipes}
        self.best = {e: best_of(scores) for e, scores in self.search.items()}  # as common.best_lrs
        self.sizes = one(records, "scalar", metric="sizes")["value"]
        self.info = one(records, "scalar", metric="data")["value"]
        self.steps = self.sizes["steps"]
        self.at = select(records, "curve", metric="val_loss")[0]["step"]
        self.curves, self.acc = {}, {}
        for e in self.recipes:
            runs = sorted(select(records, "curve", recipe=e, phase="seed"), key=lambda r: r["seed"])
            self.curves[e] = [r["value"] for r in runs if r["metric"] == "val_loss"]
            self.acc[e] = [r["value"] for r in runs if r["metric"] == "val_acc"]
        self.step_time = by(records, "recipe", kind="point", metric="step_time")
        self.state = by(records, "recipe", kind="point", metric="state_bytes")
        self.peak = by(records, "recipe", kind="point", metric="peak_bytes")
        self.early_index = next(i for i, t in enumerate(self.at) if t >= cfg.early * self.steps)
        self.pairs = {ref: self._family(ref) for ref in ("adamw", "muon") if ref in self.recipes}

    def _family(self, ref: str) -> dict[str, Pair | None]:
        """Every other recipe's final loss against ``ref``'s, paired; Holm over those that did not diverge."""
        out = {e: paired(self.finals(e), self.finals(ref)) for e in self.recipes if e != ref}
        adj = holm({e: 1.0 if p is None else p.p for e, p in out.items()})  # a diverged pair still counts as a test
        return {e: None if p is None else Pair(**{**p.__dict__, "holm": adj[e]}) for e, p in out.items()}

    def finals(self, e: str, index: int = -1) -> list[float]:
        """Each reported seed's validation loss at evaluation ``index`` (+∞: diverged by then)."""
        return [math.inf if c[index] is None else c[index] for c in self.curves[e]]

    def final(self, e: str) -> tuple[float, float]:
        """Final validation loss: mean and sd over seeds (+∞ if a seed diverged)."""
        finals = self.finals(e)
        if not all(map(math.isfinite, finals)):
            return math.inf, math.nan
        return statistics.fmean(finals), statistics.stdev(finals) if len(finals) > 1 else 0.0

    def final_acc(self, e: str) -> float | None:
        finals = [c[-1] for c in self.acc[e]]
        return statistics.fmean(finals) if finals and None not in finals else None

    def resolved(self, e: str, ref: str = "adamw") -> int:
        """−1: ``e`` ends lower than ``ref`` (Holm-adjusted p < alpha); +1: higher; 0: not resolved."""
        p = self.pairs.get(ref, {}).get(e)
        if p is None or not p.holm < self.cfg.alpha:
            return 0
        return -1 if p.mean < 0 else 1

    def pair_cell(self, e: str, ref: str, holm: bool = False) -> str:
        """A table cell for ``e`` − ``ref``: the difference and its interval, **bold** when resolved (with Holm's p
        after it if ``holm``); "–" for the baseline itself or one not compared, "diverged" when a run diverged."""
        if e == ref or ref not in self.pairs:
            return "–"
        p = self.pairs[ref][e]
        if p is None:
            return "diverged"
        mark = "**" if p.holm < self.cfg.alpha else ""
        return f"{mark}{p.text()}{mark}" + (f" ({p.holm:.2g})" if holm else "")

    def mean_curve(self, e: str) -> list[float]:
        """The mean over seeds at every evaluation; +∞ from the first evaluation any seed had diverged at."""
        return [math.inf if any(v is None for v in col) else statistics.fmean(col) for col in zip(*self.curves[e])]

    def steps_to(self, e: str, target: float) -> list[int | None]:
        """Per reported seed, the step its curve first reaches ``target`` (None: never)."""
        return [cross(c, self.at, target) for c in self.curves[e]]

    def reach(self, e: str) -> list[int | None]:
        """Per seed, the steps to AdamW's final mean loss."""
        return self.steps_to(e, self.final("adamw")[0])

    def time_to(self, e: str) -> list[float | None]:
        """Per seed, the time to reach AdamW's final mean loss over the time of AdamW's whole run (below 1:
        faster than AdamW at equal time)."""
        return [None if s is None else s * self.time_ratio(e) / self.steps for s in self.reach(e)]

    def time_ratio(self, e: str) -> float:
        """Time per step over AdamW's. The handover fix is absorb for the warm-up steps and AdamW after:
        its time is that mix of the two measured times."""
        t = self.step_time[e]
        if e == "polar-absorb-handover":
            warm = lr_factor(self.steps, self.cfg.warmup)[1]
            t = (warm * t + (self.steps - warm) * self.step_time["adamw"]) / self.steps
        return t / self.step_time["adamw"]

    def throughput(self, e: str) -> tuple[float, str]:
        """Training examples (images, or tokens for the language model) per second at the measured step time."""
        per_step = self.sizes["batch"] * self.sizes.get("context", 1)
        return per_step / (self.time_ratio(e) * self.step_time["adamw"]), "tokens/s" if "context" in self.sizes \
            else "images/s"

    def spread(self, index: int) -> float:
        """AdamW's seed standard deviation at evaluation ``index`` (NaN once a seed has diverged)."""
        values = self.finals("adamw", index)
        return statistics.stdev(values) if all(map(math.isfinite, values)) else math.nan

    def lr_window(self, e: str) -> tuple[float, bool]:
        """Width, in decades of lr, of the window around the best lr whose search loss is within ``window`` of
        the best; its edges are interpolated linearly in log lr between tried lrs. True when the window reaches
        the end of what was tried (the width is then a lower bound)."""
        lrs = sorted(self.search[e])
        x = np.log10(lrs)
        y = np.array([self.search[e][lr] for lr in lrs])
        i = int(np.argmin(y))
        if not math.isfinite(y[i]):  # diverged at every lr: no window at all
            return 0.0, False
        limit = y[i] * (1 + self.cfg.window)

        def edge(step: int) -> tuple[float, bool]:
            """Walk from the best lr (step −1: down, +1: up) while the loss stays within the limit; the edge is
            interpolated towards the first lr outside it, or is the grid's end (censored)."""
            j = i
            while 0 <= j + step < len(x) and y[j + step] <= limit:
                j += step
            if not 0 <= j + step < len(x):
                return x[j], True
            if not math.isfinite(y[j + step]):  # diverged next door: the window ends at the last good lr
                return x[j], False
            return x[j] + (x[j + step] - x[j]) * (limit - y[j]) / (y[j + step] - y[j]), False

        (lo, cens_lo), (hi, cens_hi) = edge(-1), edge(+1)
        return float(hi - lo), cens_lo or cens_hi

    def at_edge(self, e: str) -> bool:
        """The best lr is the smallest or the largest one tried (the search ran out of extensions)."""
        return self.best[e] in (min(self.search[e]), max(self.search[e]))


def _interval_check(what: str, pair: Pair | None, passed, expected: str) -> Check:
    if pair is None:
        return Check.holds(expected, f"{what}: a run diverged, no interval", False)
    return Check.holds(expected, f"{what} {pair.text()} (n = {pair.n}, p = {pair.p:.2g}"
                       + (f", Holm {pair.holm:.2g})" if math.isfinite(pair.holm) else ")"), bool(passed(pair)))


def claims(records: list[dict], cfg, task: str) -> list[Claim]:
    st = Stats(records, cfg, task)
    out = []
    at_early = st.at[st.early_index]
    if not math.isfinite(st.final("adamw")[0]):
        return [Claim.failed(id=f"adamw-trains@{task}", source=SRC_FIX, statement="AdamW, the baseline every claim "
                             "compares with, trains without diverging at its best lr", expected="every seed finite",
                             why="an AdamW seed diverged at its best lr: no comparison can be made")]
    if "polar-absorb" in st.recipes:
        early = paired(st.finals("polar-absorb", st.early_index), st.finals("adamw", st.early_index))
        out.append(Claim.of(
            id=f"absorb-early@{task}", source=SRC_000,
            statement="Re-parametrization helps during early training (carried to a real model: polar-absorb's "
                      f"validation loss at step {at_early} is below AdamW's, paired over seeds, each at its best lr)",
            checks=_interval_check(f"polar-absorb − adamw at step {at_early}", early, lambda p: p.hi < 0,
                                   "the paired difference's 95% interval below 0")))
        fall = {e: [a - b for a, b in zip(st.finals(e, st.early_index), st.finals(e))] for e in ("polar-absorb", "adamw")}
        late = paired(fall["polar-absorb"], fall["adamw"])
        out.append(Claim.of(
            id=f"absorb-late@{task}", source=SRC_000,
            statement="…but not as much, and can even slow things down, during later training (polar-absorb's loss "
                      f"falls less than AdamW's from step {at_early} to the end, paired over seeds)",
            checks=_interval_check("polar-absorb's late fall − adamw's", late, lambda p: p.hi < 0,
                                   "the paired difference's 95% interval below 0")))
    width_adamw, cens_adamw = st.lr_window("adamw")
    for e in [r for r in WN_STYLE if r in st.recipes]:
        width, cens = st.lr_window(e)
        mark = " (reaches the end of the lrs tried: a lower bound)"
        out.append(Claim.of(
            id=f"lr-window-{e}@{task}", source=SRC_002,
            statement=f"Normalization makes learning more robust to the learning rate: {e}'s lr window (search "
                      f"loss within {cfg.window:.0%} of its best) is wider than AdamW's",
            checks=Check.holds(f"{e}'s window > adamw's window (decades of lr), adamw's inside the lrs tried",
                               f"{e} {fmt(width)}{mark if cens else ''}, adamw {fmt(width_adamw)}"
                               f"{mark + ': inconclusive, widen the grid' if cens_adamw else ''}",
                               width > width_adamw + 1e-9 and not cens_adamw),
            values={"width": width, "censored": cens, "width_adamw": width_adamw, "censored_adamw": cens_adamw}))
    for e in [r for r in FEWER_STEPS if r in st.recipes]:
        pair = st.pairs["adamw"][e]
        out.append(Claim.of(
            id=f"fewer-steps-{e}@{task}", source=SRC_MUON,
            statement=f"{e} reaches AdamW's final validation loss in fewer steps than AdamW: its final loss is lower "
                      f"seed by seed, resolved at familywise α = {cfg.alpha:g} (Holm over the recipes compared with "
                      "AdamW)",
            checks=_interval_check(f"{e} − adamw, final loss", pair, lambda p: p.mean < 0 and p.holm < cfg.alpha,
                                   f"the difference below 0 with Holm's p < {cfg.alpha:g}")))
        times = st.time_to(e)
        ok = None not in times
        ratio = paired(times, [1.0] * len(times)) if ok else None
        out.append(Claim.of(
            id=f"less-time-{e}@{task}", source=SRC_MUON,
            statement=f"{e} reaches AdamW's final validation loss in less time than AdamW's whole run (its steps to "
                      f"that loss × its interleaved step time, on {cfg.device}, one thread per run)",
            checks=Check.holds("every seed reaches it, and the 95% interval of (time to it / AdamW's time) − 1 is "
                               "below 0", "never, on some seed" if not ok else
                               f"time ratio − 1 = {ratio.text(2)}; per seed {', '.join(f'{t:.2f}' for t in times)}",
                               ok and ratio.hi < 0)))
    sd = st.spread(-1)
    for e in [r for r in FIXES if r in st.recipes]:
        pair = st.pairs["adamw"][e]
        out.append(Claim.of(
            id=f"not-worse-{e}@{task}", source=SRC_FIX,
            statement=f"{e} (a fix for absorb's late phase) ends no worse than AdamW: the paired difference's upper "
                      f"95% bound is below {cfg.margin:g} × AdamW's seed sd",
            checks=_interval_check(f"{e} − adamw", pair, lambda p: p.hi < cfg.margin * sd,
                                   f"upper bound < {cfg.margin:g} × {sd:.3g}")))
    return out


def _mib(b) -> str:
    return "–" if b is None else f"{b / 2 ** 20:.1f}"


def _reach(values: list) -> str:
    """A per-seed list (None: never) as its median and how many seeds got there."""
    got = [v for v in values if v is not None]
    if not got:
        return "never"
    med = statistics.median(got)
    return (f"{med:.0f}" if isinstance(got[0], int) else f"{med:.2f}") + ("" if len(got) == len(values)
                                                                           else f" ({len(got)}/{len(values)})")


def table(st: Stats) -> list[str]:
    """The task's full table, one row per recipe (Markdown)."""
    acc = st.final_acc("adamw") is not None
    refs = list(st.pairs)
    unit = st.throughput("adamw")[1]
    head = ("| recipe | best lr | final val loss (mean ± sd) |" + (" val acc |" if acc else "")
            + "".join(f" − {r} [95% CI] (Holm p) |" for r in refs)
            + f" steps to AdamW's loss | time to it × AdamW's run | step time × AdamW | {unit} | state MiB |"
            + (" peak MiB |" if st.peak else "") + " lr window (decades) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for e in st.recipes:
        m, sd = st.final(e)
        width, cens = st.lr_window(e)
        loss = f"{m:.4f} ± {sd:.4f}" if math.isfinite(m) else "diverged"
        cells = [st.pair_cell(e, r, holm=True) for r in refs]
        lines.append(f"| {e} | {st.best[e]:g}{' (edge)' if st.at_edge(e) else ''} | {loss} |"
                     + (f" {fmt(st.final_acc(e))} |" if acc else "") + "".join(f" {c} |" for c in cells)
                     + f" {_reach(st.reach(e))} / {st.steps} | {_reach(st.time_to(e))} | {st.time_ratio(e):.2f} |"
                     f" {st.throughput(e)[0]:,.0f} | {_mib(st.state.get(e))} |"
                     + (f" {_mib(st.peak.get(e))} |" if st.peak else "") + f" {'≥ ' if cens else ''}{width:.2f} |")
    return lines


def recommendation(st: Stats) -> str:
    """One sentence: the recipe to use on this task, or that none is resolved better than tuned AdamW."""
    n, a = st.cfg.seeds, st.cfg.alpha
    better = [e for e in st.recipes if e != "adamw" and st.resolved(e) < 0]
    if not better:
        return (f"**{st.task}: no recipe is resolved better than tuned AdamW** ({n} paired seeds, Holm at α = {a:g}).")
    e = min(better, key=lambda r: st.final(r)[0])
    p = st.pairs["adamw"][e]
    times = [t for t in st.time_to(e) if t is not None]
    slower = f" (at equal time slower than AdamW on {st.cfg.device})" if times and statistics.median(times) > 1 else ""
    when = (f"reaches AdamW's final loss in {_reach(st.reach(e))} of {st.steps} steps, "
            f"{statistics.median(times):.2f}× AdamW's time{slower}" if times else "")
    vs = ""
    if "muon" in st.pairs and e != "muon":
        q = st.pairs["muon"][e]
        vs = "" if q is None else (f"; against tuned Muon {q.text()}" + (" (resolved)" if st.resolved(e, "muon")
                                                                        else " (not resolved)"))
    others = [r for r in better if r != e]
    return (f"**{st.task}: use {e}**: final loss {p.text()} against tuned AdamW ({n} paired seeds, Holm at "
            f"α = {a:g}), {when}{vs}." + (f" Also resolved better than AdamW: {', '.join(others)}." if others else ""))


def details(records: list[dict], cfg, task: str) -> str:
    st = Stats(records, cfg, task)
    grid = ", ".join(f"{lr:g}" for lr in cfg.lrs) + "".join(f" (× {f:g} for {e})" for e, f in cfg.scales().items()
                                                           if e in st.recipes)
    edge = [e for e in st.recipes if st.at_edge(e)]
    rest = select(records, "scalar", metric="rest_lr")
    tried = sum(len(v) for v in st.search.values())
    lines = [f"## Results ({task}, preset {cfg.preset}: {', '.join(f'{k}={v}' for k, v in st.sizes.items())})", "",
             recommendation(st), "",
             f"Data: {', '.join(f'{k} {v}' for k, v in st.info.items())}. Coarse lr grid: {grid}, extended at an edge "
             f"and refined by quarter decades ({tried} search runs on seed(s) {', '.join(map(str, cfg.search_seed_list()))}"
             f", never reported); {cfg.seeds} reported seeds at each recipe's best lr; {st.steps} steps, warm-up "
             f"{cfg.warmup:.0%} then cosine, gradient clipping at {cfg.clip:g}, weight decay {cfg.weight_decay:g}"
             + (f"; the AdamW parts of every other recipe at AdamW's lr {rest[0]['value']:g}" if rest else "") + ".",
             "", f"AdamW's seed spread (sd of the validation loss): {st.spread(1):.3f} at step {st.at[1]}, "
             f"{st.spread(st.early_index):.3f} at step {st.at[st.early_index]}, {st.spread(-1):.4f} at the end.", ""]
    lines += table(st)
    lines += ["", "Differences in **bold** are resolved (Holm-adjusted p < α). Steps and time to AdamW's loss: the "
              "median over seeds (in brackets when some never got there); time is steps × the step time, over "
              "AdamW's whole run."]
    if edge:
        lines += ["", f"Best lr at the end of the lrs tried, after {cfg.max_extend} extensions (a wider search may "
                      f"find a better one): {', '.join(edge)}."]
    return "\n".join(lines)


def figures(records: list[dict], cfg, out_dir, task: str) -> list[str]:
    st = Stats(records, cfg, task)
    colors = {e: f"C{i % 10}" for i, e in enumerate(st.recipes)}
    styles = {e: "-" if i < 10 else "--" for i, e in enumerate(st.recipes)}
    names = []
    fig, axes = new_figure(1, 2, size=(12, 4.8))
    for e in st.recipes:
        curve = np.array(st.mean_curve(e))
        kw = dict(color="k" if e == "adamw" else colors[e], lw=2.4 if e == "adamw" else 1.3, ls=styles[e], label=e)
        axes[0].plot(st.at, curve, **kw)
        axes[1].plot(np.array(st.at) * st.step_time[e], curve, **kw)
    finite = [v for e in st.recipes for v in st.mean_curve(e) if math.isfinite(v)]
    lo = min(finite)
    top = max(v for e in st.recipes for v in st.mean_curve(e)[st.early_index:] if math.isfinite(v))
    for ax, xlabel in zip(axes, ("step", "time (s): step × the interleaved median step time")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"validation loss (mean over {cfg.seeds} seeds, best lr)")
        ax.set_ylim(lo - 0.05 * (top - lo), top + 0.05 * (top - lo))
        ax.grid(alpha=0.3)
    axes[0].set_title(f"{task}: validation loss against step")
    axes[1].set_title(f"{task}: against time")
    axes[1].legend(fontsize=7, ncol=2)
    names += save(fig, out_dir, "curves")
    fig, ax = new_figure(size=(7, 4.8))
    scores = [v for sc in st.search.values() for v in sc.values() if math.isfinite(v)]
    ceiling = min(max(scores), 3 * min(scores))
    for e in st.recipes:
        lrs = sorted(st.search[e])
        y = [min(st.search[e][lr], ceiling) for lr in lrs]
        kw = dict(color="k" if e == "adamw" else colors[e])
        ax.plot(lrs, y, marker="o", ls=styles[e], lw=2.4 if e == "adamw" else 1.2, label=e, **kw)
        bad = [lr for lr in lrs if not math.isfinite(st.search[e][lr])]
        ax.plot(bad, [ceiling] * len(bad), ls="", marker="x", ms=9, **kw)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(f"final validation loss (search seeds: {', '.join(map(str, cfg.search_seed_list()))})")
    ax.set_title(f"{task}: lr search (clipped at {ceiling:.3g}; × marks a diverged run)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    names += save(fig, out_dir, "lr")
    fig, ax = new_figure(size=(7, 0.5 + 0.45 * len(st.recipes)))
    interval_panel(ax, st)
    names += save(fig, out_dir, "intervals")
    return names


def interval_panel(ax, st: Stats) -> None:
    """Each recipe's paired difference to AdamW's final loss with its 95% interval (filled: resolved, Holm)."""
    rows = [e for e in st.recipes if e != "adamw"]
    for i, e in enumerate(rows):
        p = st.pairs["adamw"][e]
        if p is None:
            ax.text(0, i, "diverged", va="center", ha="center", fontsize=8)
            continue
        ok = p.holm < st.cfg.alpha
        ax.errorbar([p.mean], [i], xerr=[[p.mean - p.lo], [p.hi - p.mean]], fmt="o", capsize=3,
                    color="C2" if ok and p.mean < 0 else "C3" if ok else "C7", mfc=None if ok else "white")
    ax.axvline(0, color="k", lw=1)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("Δ final val loss vs AdamW (95% CI; filled: Holm)")
    ax.set_title(f"{st.task}: {st.cfg.seeds} seeds", fontsize=10)
    ax.grid(axis="x", alpha=0.3)


def experiment(task: str, description: str, config: type, quick, run) -> Experiment:
    """The ``Experiment`` of one benchmark task: its run goes to ``OUT/bench/TASK``; claims, figures and the
    results table are this module's, for that task; the notes are ``bench.md``."""
    return Experiment(
        name=f"bench-{task}", folder=f"bench/{task}", description=description,
        sources=("000_cf93c4077b34771f.txt", "002_3dce160b64f5f734.txt"), config=config, quick=quick, run=run,
        claims=lambda records, cfg: claims(records, cfg, task),
        figures=lambda records, cfg, out: figures(records, cfg, out, task),
        details=lambda records, cfg: details(records, cfg, task),
        notes=Path(__file__).with_name("bench.md"), key_figure="intervals.png")
