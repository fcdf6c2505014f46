"""The benchmark's records → statistics, claims, figures and tables (nothing here trains).

Every number is taken at each recipe's best lr (from the search) over its ``seeds`` runs: the mean
validation-loss curve, the final loss mean ± sd, the steps to reach AdamW's final loss, the interleaved
step time relative to AdamW; and, from the search runs (seed 0), the width of the lr window.
"""

from __future__ import annotations

import math
import statistics

import numpy as np

from pathlib import Path

from ..figures import new_figure, save
from ..framework import Check, Claim, Experiment, fmt
from ..records import by, one, select
from .common import FEWER_STEPS, FIXES, SRC_000, WN_STYLE, best_lrs, final_loss, lr_factor

SRC_002 = "002 Wu et al. 2020, Introduction"
SRC_MUON = "Jordan et al. 2024 (Muon), and Wen et al. (Hyperball): fewer steps to a given loss than AdamW"
SRC_FIX = "this project (going beyond the sources)"


class Stats:
    """Everything the claims, figures and tables read, computed once from one task's records."""

    def __init__(self, records: list[dict], cfg, task: str):
        self.task, self.cfg = task, cfg
        self.recipes = list(cfg.recipes)
        self.best = best_lrs(records, cfg)
        self.sizes = one(records, "scalar", metric="sizes")["value"]
        self.steps = self.sizes["steps"]
        self.search = by(records, ("recipe", "lr"), kind="curve", metric="val_loss", phase="search")
        self.at = select(records, "curve", metric="val_loss")[0]["step"]
        self.curves, self.acc = {}, {}
        for e in self.recipes:
            runs = [r for r in select(records, "curve", recipe=e, lr=self.best[e])
                    if r["phase"] == "seed" or r["seed"] == 0]
            self.curves[e] = [r["value"] for r in sorted(runs, key=lambda r: r["seed"]) if r["metric"] == "val_loss"]
            self.acc[e] = [r["value"] for r in sorted(runs, key=lambda r: r["seed"]) if r["metric"] == "val_acc"]
        self.step_time = by(records, "recipe", kind="point", metric="step_time")
        self.early_index = next(i for i, t in enumerate(self.at) if t >= cfg.early * self.steps)

    def mean_curve(self, e: str) -> list[float]:
        """The mean over seeds at every evaluation; +∞ from the first evaluation any seed had diverged at."""
        return [math.inf if any(v is None for v in col) else statistics.fmean(col) for col in zip(*self.curves[e])]

    def final(self, e: str) -> tuple[float, float]:
        """Final validation loss: mean and sd over seeds (+∞ if a seed diverged)."""
        finals = [final_loss(c) for c in self.curves[e]]
        if not all(map(math.isfinite, finals)):
            return math.inf, math.nan
        return statistics.fmean(finals), statistics.stdev(finals) if len(finals) > 1 else 0.0

    def final_acc(self, e: str) -> float | None:
        finals = [c[-1] for c in self.acc[e]]
        return statistics.fmean(finals) if finals and None not in finals else None

    def steps_to(self, e: str, target: float) -> int | None:
        """The step at which the mean curve first reaches ``target``, interpolated linearly between the two
        evaluations around the crossing (None: never, or an unreachable target such as +∞)."""
        if not math.isfinite(target):
            return None
        curve = self.mean_curve(e)
        for i, (t, v) in enumerate(zip(self.at, curve)):
            if v <= target:
                if i == 0 or not math.isfinite(curve[i - 1]):
                    return t
                t0, v0 = self.at[i - 1], curve[i - 1]
                return round(t0 + (t - t0) * (v0 - target) / (v0 - v))
        return None

    def steps_to_adamw(self, e: str) -> int | None:
        """Steps to AdamW's final mean loss (None when never, or when AdamW itself diverged)."""
        return self.steps_to(e, self.final("adamw")[0])

    def early(self, e: str) -> float:
        return self.mean_curve(e)[self.early_index]

    def late_gain(self, e: str) -> float:
        """How much the mean loss falls from the early point to the end (smaller: slower late training)."""
        return self.early(e) - self.final(e)[0]

    def time_ratio(self, e: str) -> float:
        """Time per step over AdamW's. The handover fix is absorb for the warm-up steps and AdamW after:
        its time is that mix of the two measured times."""
        t = self.step_time[e]
        if e == "polar-absorb-handover":
            warm = lr_factor(self.steps, self.cfg.warmup)[1]
            t = (warm * t + (self.steps - warm) * self.step_time["adamw"]) / self.steps
        return t / self.step_time["adamw"]

    def lr_window(self, e: str) -> tuple[float, bool]:
        """Width, in decades of lr, of the window around the best lr whose final loss (seed 0) is within
        ``window`` of the best; its edges are interpolated linearly in log lr. True when the window reaches
        the end of the grid (the width is then a lower bound)."""
        lrs = sorted(self.cfg.grid(e))
        x = np.log10(lrs)
        y = np.array([final_loss(self.search[(e, lr)]) for lr in lrs])
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
        censored = cens_lo or cens_hi
        return float(hi - lo), censored


def claims(records: list[dict], cfg, task: str) -> list[Claim]:
    st = Stats(records, cfg, task)
    out = []
    at_early = st.at[st.early_index]
    if not math.isfinite(st.final("adamw")[0]):
        return [Claim.failed(id=f"adamw-trains@{task}", source=SRC_FIX, statement="AdamW, the baseline every claim "
                             "compares with, trains without diverging at its best lr", expected="every seed finite",
                             why="an AdamW seed diverged at its best lr: no comparison can be made")]
    if "polar-absorb" in st.recipes:
        out.append(Claim.of(
            id=f"absorb-early@{task}", source=SRC_000,
            statement="Re-parametrization helps during early training (carried to a real model: polar-absorb's mean "
                      f"validation loss at step {at_early} is below AdamW's, each at its best lr)",
            checks=Check.less(f"polar-absorb at step {at_early}", st.early("polar-absorb"),
                              f"adamw at step {at_early}", st.early("adamw"))))
        late = st.late_gain("polar-absorb")
        out.append(Claim.of(
            id=f"absorb-late@{task}", source=SRC_000,
            statement="…but not as much, and can even slow things down, during later training (polar-absorb's loss "
                      f"falls less than AdamW's from step {at_early} to the end: its lead shrinks or its lag grows)",
            checks=Check.less("polar-absorb's late fall", late if math.isfinite(late) else None, "adamw's late fall",
                              st.late_gain("adamw"))))
    width_adamw, cens_adamw = st.lr_window("adamw")
    for e in [r for r in WN_STYLE if r in st.recipes]:
        width, cens = st.lr_window(e)
        mark = " (reaches the grid's end: a lower bound)"
        out.append(Claim.of(
            id=f"lr-window-{e}@{task}", source=SRC_002,
            statement=f"Normalization makes learning more robust to the learning rate: {e}'s lr window (final loss "
                      f"within {cfg.window:.0%} of its best) is wider than AdamW's",
            checks=Check.holds(f"{e}'s window > adamw's window (decades of lr), adamw's inside the grid",
                               f"{e} {fmt(width)}{mark if cens else ''}, adamw {fmt(width_adamw)}"
                               f"{mark + ': inconclusive, widen the grid' if cens_adamw else ''}",
                               width > width_adamw + 1e-9 and not cens_adamw),
            values={"width": width, "censored": cens, "width_adamw": width_adamw, "censored_adamw": cens_adamw}))
    reach_adamw = st.steps_to_adamw("adamw")
    for e in [r for r in FEWER_STEPS if r in st.recipes]:
        conv = " (Muon steps the 2-D matrices only: here the conv kernels go to AdamW)" if task == "fmnist-cnn" \
            and "muon" in e else ""
        out.append(Claim.of(
            id=f"fewer-steps-{e}@{task}", source=SRC_MUON,
            statement=f"{e} reaches AdamW's final validation loss in fewer steps than AdamW{conv} (steps "
                      "interpolated between evaluations)",
            checks=Check.sooner(f"{e}'s steps", st.steps_to_adamw(e), "adamw's", reach_adamw)))
    for e in [r for r in FIXES if r in st.recipes]:
        out.append(Claim.of(
            id=f"not-worse-{e}@{task}", source=SRC_FIX,
            statement=f"{e} (a fix for absorb's late phase) ends no worse than AdamW",
            checks=Check.not_above(f"{e}'s final loss", st.final(e)[0], "adamw's", st.final("adamw")[0],
                                   rtol=cfg.worse_tol)))
    return out


def table(st: Stats) -> list[str]:
    """The task's full table, one row per recipe (Markdown)."""
    acc = st.final_acc("adamw") is not None
    head = ("| recipe | best lr | final val loss (mean ± sd) |" + (" val acc |" if acc else "")
            + " steps to AdamW's loss | step time × AdamW | lr window (decades) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for e in st.recipes:
        m, sd = st.final(e)
        width, cens = st.lr_window(e)
        loss = f"{m:.4f} ± {sd:.4f}" if math.isfinite(m) else "diverged"
        reach = st.steps_to_adamw(e)
        lines.append(f"| {e} | {st.best[e]:g} | {loss} |" + (f" {fmt(st.final_acc(e))} |" if acc else "")
                     + f" {fmt(reach) if reach is not None else 'never'} / {st.steps} | {st.time_ratio(e):.2f} |"
                     f" {'≥ ' if cens else ''}{width:.2f} |")
    return lines


def details(records: list[dict], cfg, task: str) -> str:
    st = Stats(records, cfg, task)
    info = one(records, "scalar", metric="data")["value"]
    grid = ", ".join(f"{lr:g}" for lr in cfg.lrs) + "".join(f" (× {f:g} for {e})" for e, f in cfg.scales().items()
                                                           if e in st.recipes)
    edge = [e for e in st.recipes if st.best[e] in (min(cfg.grid(e)), max(cfg.grid(e)))]
    lines = [f"## Results ({task}, preset {cfg.preset}: {', '.join(f'{k}={v}' for k, v in st.sizes.items())})", "",
             f"Data: {', '.join(f'{k} {v}' for k, v in info.items())}. lr grid: {grid}; {cfg.seeds} seeds at each "
             f"recipe's best lr; {st.steps} steps, warm-up {cfg.warmup:.0%} then cosine.", ""] + table(st)
    if edge:
        lines += ["", f"Best lr at the edge of the grid (a wider grid may find a better one): {', '.join(edge)}."]
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
    lo = min(min(st.mean_curve(e)) for e in st.recipes)
    top = max(v for e in st.recipes for v in st.mean_curve(e)[st.early_index:] if math.isfinite(v))
    for ax, xlabel in zip(axes, ("step", "time (s): step × the interleaved median step time")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation loss (mean over seeds, best lr)")
        ax.set_ylim(lo - 0.05 * (top - lo), top + 0.05 * (top - lo))
        ax.grid(alpha=0.3)
    axes[0].set_title(f"{task}: validation loss against step")
    axes[1].set_title(f"{task}: against time")
    axes[1].legend(fontsize=7, ncol=2)
    names += save(fig, out_dir, "curves")
    fig, ax = new_figure(size=(7, 4.8))
    finite = [final_loss(v) for v in st.search.values() if math.isfinite(final_loss(v))]
    ceiling = min(max(finite), 3 * min(finite))
    for e in st.recipes:
        lrs = sorted(cfg.grid(e))
        y = [min(final_loss(st.search[(e, lr)]), ceiling) for lr in lrs]
        ax.plot(lrs, y, marker="o", color="k" if e == "adamw" else colors[e], ls=styles[e],
                lw=2.4 if e == "adamw" else 1.2, label=e)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("final validation loss (seed 0)")
    ax.set_title(f"{task}: lr sensitivity (clipped at {ceiling:.3g}: diverged runs sit there)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    names += save(fig, out_dir, "lr")
    return names


def experiment(task: str, description: str, config: type, quick, run) -> Experiment:
    """The ``Experiment`` of one benchmark task: its run goes to ``OUT/bench/TASK``; claims, figures and the
    results table are this module's, for that task; the notes are ``bench.md``."""
    return Experiment(
        name=f"bench-{task}", folder=f"bench/{task}", description=description,
        sources=("000_cf93c4077b34771f.txt", "002_3dce160b64f5f734.txt"), config=config, quick=quick, run=run,
        claims=lambda records, cfg: claims(records, cfg, task),
        figures=lambda records, cfg, out: figures(records, cfg, out, task),
        details=lambda records, cfg: details(records, cfg, task),
        notes=Path(__file__).with_name("bench.md"), key_figure="curves.png")
