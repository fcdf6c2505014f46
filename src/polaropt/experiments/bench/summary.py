"""``OUT/bench/summary.md`` and ``summary.png``: the benchmark's headline table and figure, across tasks.

Built from the finished task runs on disk (``config.json`` + ``records.jsonl``) alone, so ``polaropt
report DIR`` rebuilds it too. One row per recipe, one column per task: the final validation loss (mean
over seeds at its best lr), the steps it took to reach AdamW's final loss, and its step time against
AdamW's; then which recipes ended no worse than AdamW on every task.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..figures import new_figure, save
from ..framework import config_from_dict
from ..records import read_records, write_text_atomic
from .analysis import Stats


def _finished(out_root: Path, benchmarks: dict) -> tuple[dict[str, Stats], bool]:
    """The ``Stats`` of every finished task run in ``out_root``, and whether any of them was ``--quick``."""
    out, quick = {}, False
    for exp in benchmarks.values():
        d = out_root / exp.path
        if (d / "meta.json").exists():
            quick |= json.loads((d / "meta.json").read_text())["quick"]
            cfg = config_from_dict(exp.config, json.loads((d / "config.json").read_text()))
            task = exp.name.removeprefix("bench-")
            out[task] = Stats(read_records(d / "records.jsonl"), cfg, task)
    return out, quick


def headline(stats: dict[str, Stats]) -> list[str]:
    """The recipe × task table: final loss, steps to AdamW's final loss, step time × AdamW."""
    recipes = list(dict.fromkeys(e for st in stats.values() for e in st.recipes))
    head = "| recipe | " + " | ".join(f"{t} ({st.cfg.preset}, {st.steps} steps)" for t, st in stats.items()) + " |"
    lines = [head, "|---|" + "---|" * len(stats)]
    for e in recipes:
        cells = []
        for st in stats.values():
            if e not in st.recipes:
                cells.append("–")
                continue
            m, _ = st.final(e)
            reach = st.steps_to_adamw(e)
            loss = f"**{m:.3f}**" if math.isfinite(m) and m <= st.final("adamw")[0] else (
                f"{m:.3f}" if math.isfinite(m) else "diverged")
            cells.append(f"{loss} · {reach if reach is not None else 'never'}/{st.steps} · ×{st.time_ratio(e):.2f}")
        lines.append(f"| {e} | " + " | ".join(cells) + " |")
    return lines


def never_worse(stats: dict[str, Stats]) -> list[str]:
    """Recipes whose final loss is at most AdamW's × (1 + worse_tol) on every task (AdamW itself aside)."""
    recipes = [e for e in dict.fromkeys(e for st in stats.values() for e in st.recipes) if e != "adamw"]
    return [e for e in recipes if all(e in st.recipes and st.final(e)[0] <= st.final("adamw")[0] * (1 + st.cfg.worse_tol)
                                      for st in stats.values())]


def figure(stats: dict[str, Stats], out_dir: Path) -> list[str]:
    """Final loss relative to AdamW's, per recipe and task (bars; < 1 is better than AdamW)."""
    recipes = list(dict.fromkeys(e for st in stats.values() for e in st.recipes))
    fig, ax = new_figure(size=(11, 4.8))
    width = 0.8 / len(stats)
    for k, (task, st) in enumerate(stats.items()):
        base = st.final("adamw")[0]
        y = [st.final(e)[0] / base if e in st.recipes else np.nan for e in recipes]
        y = [min(v, 1.5) for v in y]  # a diverged or far-off recipe sits at the top
        ax.bar(np.arange(len(recipes)) + (k - (len(stats) - 1) / 2) * width, [v - 1 for v in y], width, bottom=1,
               label=task)
    ax.axhline(1, color="k", lw=1)
    ax.set_xticks(range(len(recipes)), recipes, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("final validation loss / AdamW's (clipped at 1.5)")
    ax.set_title("polaropt bench: each recipe at its best lr, mean over seeds (below 1: better than AdamW)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    return save(fig, out_dir, "summary")


def write_summary(out_root: Path, benchmarks: dict, *, missing_ok: bool = False) -> Path | None:
    """Write ``OUT/bench/summary.md`` (and ``summary.png``) from the finished task runs; return its path.
    With no finished task: None when ``missing_ok``, else a ValueError."""
    out_root = Path(out_root)
    stats, quick = _finished(out_root, benchmarks)
    if not stats:
        if missing_ok:
            return None
        raise ValueError(f"{out_root}/bench holds no finished benchmark task; run `polaropt bench --out {out_root}`")
    folder = out_root / "bench"
    good = never_worse(stats)
    tol = {st.cfg.worse_tol for st in stats.values()}
    lines = ["# polaropt bench: which recipe should I use?", ""]
    if quick:
        lines += ["**--quick run: tiny settings for tests; these numbers say nothing about the recipes.**", ""]
    lines += ["Each cell: final validation loss (mean over seeds, at the recipe's own best lr; **bold** when at or "
              "below AdamW's) · steps to reach AdamW's final loss / steps · time per step × AdamW's (interleaved "
              "in one process).", ""] + headline(stats) + [
              "", f"Never worse than AdamW (final loss within {', '.join(f'{t:.0%}' for t in tol)}) on every task "
              f"({', '.join(stats)}): {', '.join(good) if good else 'none'}.", "",
              "Per task, with lr windows, accuracies and the judged claims: "
              + ", ".join(f"[{t}]({t}/report.md)" for t in stats) + "."]
    figure(stats, folder)
    write_text_atomic(folder / "summary.md", "\n".join(lines) + "\n")
    return folder / "summary.md"
