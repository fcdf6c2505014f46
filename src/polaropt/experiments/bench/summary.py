"""``OUT/bench/summary.md`` and ``summary.png``: the benchmark's answer, across tasks.

Built from the finished task runs on disk (``config.json`` + ``records.jsonl``) alone, so ``polaropt
report DIR`` rebuilds it too. First a recommendation per task (a recipe resolved better than tuned AdamW, or
none), then one row per recipe and task: the paired difference to tuned AdamW and to tuned Muon with its 95%
interval, the steps and the time to AdamW's final loss, throughput and state memory; the figure plots the
intervals. A ``--quick`` run never mixes with a full one: when any task's run is full, the quick ones are left
out (and named); a summary of quick runs only says so at its top.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..figures import new_figure, save
from ..framework import config_from_dict
from ..records import read_records, write_text_atomic
from .analysis import Stats, _reach, interval_panel, recommendation


def _finished(out_root: Path, benchmarks: dict) -> tuple[dict[str, Stats], bool, list[str]]:
    """The ``Stats`` of the finished task runs in ``out_root``: the full ones when there is any (else the quick
    ones), whether those are quick, and the quick tasks left out."""
    full, quick = {}, {}
    for exp in benchmarks.values():
        d = out_root / exp.path
        if (d / "meta.json").exists():
            cfg = config_from_dict(exp.config, json.loads((d / "config.json").read_text()))
            task = exp.name.removeprefix("bench-")
            st = Stats(read_records(d / "records.jsonl"), cfg, task)
            (quick if json.loads((d / "meta.json").read_text())["quick"] else full)[task] = st
    if full:
        return full, False, list(quick)
    return quick, bool(quick), []


def rows(st: Stats) -> list[str]:
    """One task's rows of the cross-task table."""
    out = []
    for e in st.recipes:
        cells = [st.pair_cell(e, ref) for ref in ("adamw", "muon")]
        m, _ = st.final(e)
        out.append(f"| {st.task} | {e} | {m:.3f} | " + " | ".join(cells)
                   + f" | {_reach(st.reach(e))} | {_reach(st.time_to(e))} | {st.time_ratio(e):.2f} | "
                   f"{st.throughput(e)[0]:,.0f} | {st.state[e] / 2 ** 20:.1f} |")
    return out


def figure(stats: dict[str, Stats], out_dir: Path) -> list[str]:
    """Each task's paired differences to tuned AdamW with their intervals, one panel per task."""
    n = max(len(st.recipes) for st in stats.values())
    fig, axes = new_figure(1, len(stats), size=(5 * len(stats), 0.8 + 0.45 * n))
    for ax, st in zip(axes if len(stats) > 1 else [axes], stats.values()):
        interval_panel(ax, st)
    fig.suptitle("polaropt bench: final validation loss − tuned AdamW's, paired over seeds (left of 0: better)")
    return save(fig, out_dir, "summary")


def write_summary(out_root: Path, benchmarks: dict, *, missing_ok: bool = False) -> Path | None:
    """Write ``OUT/bench/summary.md`` (and ``summary.png``) from the finished task runs; return its path.
    With no finished task: None when ``missing_ok``, else a ValueError."""
    out_root = Path(out_root)
    stats, quick, left_out = _finished(out_root, benchmarks)
    if not stats:
        if missing_ok:
            return None
        raise ValueError(f"{out_root}/bench holds no finished benchmark task; run `polaropt bench --out {out_root}`")
    folder = out_root / "bench"
    lines = ["# polaropt bench: which recipe should I use?", ""]
    if quick:
        lines += ["**--quick run: tiny settings for tests; these numbers say nothing about the recipes.**", ""]
    if left_out:
        lines += [f"(--quick runs of {', '.join(left_out)} are in this folder and left out of this summary.)", ""]
    lines += [f"- {recommendation(st)}" for st in stats.values()]
    devices = sorted({f"{st.cfg.device}, {st.cfg.workers} worker(s)" for st in stats.values()})
    lines += ["", "Each recipe at its own best lr (searched on seeds never reported), its AdamW parts at AdamW's "
              "tuned lr; differences are paired over the reported seeds (same initialization and batches), with a "
              "95% t interval, **bold** when Holm-resolved across the recipes compared with that baseline on that "
              "task. Steps / time to AdamW's final loss: median over seeds (in brackets when some never got there); "
              f"time is steps × the interleaved step time ({'; '.join(devices)}; one thread per process on CPU) "
              "over AdamW's whole run, so below 1 is faster at equal time.", "",
              "| task | recipe | final loss | − AdamW [95% CI] | − Muon [95% CI] | steps to AdamW's loss | time to it × "
              "AdamW's run | step time × AdamW | throughput (/s) | state MiB |", "|" + "---|" * 10]
    for st in stats.values():
        lines += rows(st)
    everywhere = [e for e in dict.fromkeys(e for st in stats.values() for e in st.recipes) if e != "adamw"
                  and all(e in st.recipes and st.resolved(e) < 0 for st in stats.values())]
    lines += ["", f"Resolved better than tuned AdamW on every task ({', '.join(stats)}): "
              f"{', '.join(everywhere) if everywhere else 'none'}.", "",
              "Per task, with accuracies, lr windows, memory and the judged claims: "
              + ", ".join(f"[{t}]({t}/report.md)" for t in stats) + "."]
    figure(stats, folder)
    write_text_atomic(folder / "summary.md", "\n".join(lines) + "\n")
    return folder / "summary.md"
