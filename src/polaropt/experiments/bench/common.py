"""The benchmark's protocol, shared by its three tasks: configs, the fair lr search, timing, records.

For every entry (a recipe, or one of the fixes below) on one task:

1. **lr search**: one run (seed 0) at every lr of the grid; the best lr is the one with the lowest final
   validation loss (a diverged run counts as +∞).
2. **seeds**: ``seeds − 1`` more runs at the best lr (seeds 1, 2, …); with the search run, ``seeds`` runs.
3. **timing**: every entry's training step at its best lr, interleaved in one process (each round times
   ``time_steps`` steps of every entry, in a rotated order), median over rounds, ratio to AdamW.

Every run has the same model initialization and batch order for a given seed, the same number of steps,
batch and schedule (linear warm-up, then cosine to 0). Runs are independent, so with ``workers`` > 1
they go to that many processes of one thread each (results then match a one-thread run exactly, not a
``workers=1`` run with more threads: the order of floating-point sums depends on the thread count).

The fixes, for absorb's slow late phase (Liu 000, observation 2):
- ``polar-absorb-every10``: renormalize every 10 steps instead of every step (``every=10``);
- ``polar-absorb-handover``: absorb during warm-up, then ``unpolarize_model`` and plain AdamW (fresh moments)
  for the rest, on the same schedule.
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import torch

import polaropt as po
from polaropt.recipes import ATTACHED

from ..framework import param, require_distinct
from ..records import by
from ..timing import time_interleaved
from . import data, tasks

FIXES = {"polar-absorb-every10": ("polar-absorb", {"every": 10}),
         "polar-absorb-handover": ("polar-absorb", {})}
ENTRIES = (*po.RECIPES, *FIXES)
LRS = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
# Hyperball's lr is the fraction of ‖W‖ one step moves (≈ 10-50 × an AdamW lr's relative step at these
# initializations); absorb-muon's direction has unit Frobenius norm per matrix, so Muon's RMS-matched
# step is large relative to its entries
LR_SCALE = ("hyperball-adamw=10", "hyperball-muon=10", "absorb-muon=0.1")
WN_STYLE = ("adamw-weight-norm", "polar-normalize", "polar-project")
FEWER_STEPS = ("muon", "hyperball-adamw", "hyperball-muon")
SRC_000 = "000 Optimization 2 (Liu), Experiment: linear regression, Observations"


@dataclass(frozen=True)
class BenchConfig:
    preset: str = param("cpu", f"model size, batch and steps: {' or '.join(tasks.PRESETS)} (fields set to 0 "
                               "take the preset's value)")
    device: str = param("cpu", "torch device the runs train on (cpu, cuda, cuda:1, ...)")
    recipes: tuple[str, ...] = param(ENTRIES, "the recipes (po.RECIPES) and fixes compared; must include adamw")
    lrs: tuple[float, ...] = param(LRS, "the learning-rate grid every recipe is searched over (≥ 4 values)")
    lr_scale: tuple[str, ...] = param(LR_SCALE, "RECIPE=FACTOR: that recipe searches the grid × FACTOR (Hyperball's "
                                                "lr is the fraction of ‖W‖ a step moves, 10-50× AdamW's lr here; "
                                                "absorb-muon steps on a unit-norm direction)")
    seeds: int = param(3, "runs at each recipe's best lr (seed 0 is the search run)")
    steps: int = param(0, "training steps (0: the preset's)")
    width: int = param(0, "model width (0: the preset's)")
    batch: int = param(0, "batch size (0: the preset's)")
    warmup: float = param(0.05, "fraction of the steps spent in linear lr warm-up (then cosine to 0)")
    weight_decay: float = param(0.01, "decoupled weight decay, where each recipe puts it (torch's AdamW default)")
    evals: int = param(10, "validation evaluations over training (plus one at step 0)")
    early: float = param(0.2, "the 'early' point of the claims: the first evaluation at or after this fraction of "
                              "the steps")
    window: float = param(0.10, "the lr window: lrs whose final loss is within this fraction of the best")
    worse_tol: float = param(0.01, "'not worse than AdamW': final loss at most this fraction above AdamW's")
    time_rounds: int = param(7, "timing rounds (each times every recipe in turn)")
    time_steps: int = param(10, "steps timed per recipe per round")
    workers: int = param(2, "CPU processes of one thread each the runs are spread over (1: all in this process, "
                            "as on a GPU)")

    def scales(self) -> dict[str, float]:
        """``lr_scale`` as {recipe: factor}; a malformed item or an unknown recipe is refused."""
        out = {}
        for item in self.lr_scale:
            name, _, factor = item.partition("=")
            try:
                value = float(factor)
            except ValueError:
                value = math.nan
            if name not in ENTRIES or not (math.isfinite(value) and value > 0):
                raise ValueError(f"lr_scale item {item!r}: expected RECIPE=FACTOR with a recipe of {', '.join(ENTRIES)} "
                                 "and a positive factor")
            if name in out:
                raise ValueError(f"lr_scale repeats {name!r}: give each recipe once, got {self.lr_scale}")
            out[name] = value
        return out

    def grid(self, entry: str) -> tuple[float, ...]:
        """The lrs ``entry`` is searched over."""
        f = self.scales().get(entry, 1.0)
        return tuple(lr * f for lr in self.lrs)

    def validate(self):
        if self.preset not in tasks.PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; valid presets are {', '.join(tasks.PRESETS)}")
        unknown = [r for r in self.recipes if r not in ENTRIES]
        if unknown:
            raise ValueError(f"unknown recipe {', '.join(map(repr, unknown))}; valid recipes are {', '.join(ENTRIES)}")
        if "adamw" not in self.recipes or len(self.recipes) < 2:
            raise ValueError(f"recipes must include adamw (every comparison is against it) and at least one recipe "
                             f"besides adamw, got {self.recipes}")
        require_distinct(recipes=self.recipes, lrs=self.lrs)
        self.scales()
        if len(self.lrs) < 4 or any(lr <= 0 for lr in self.lrs):
            raise ValueError(f"lrs must hold at least 4 positive values (a fair search), got {self.lrs}")
        for name in ("seeds", "evals", "time_rounds", "time_steps", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("steps", "width", "batch"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0: the preset's), got {getattr(self, name)}")
        if not 0 <= self.warmup < 1 or not 0 < self.early < 1 or self.window <= 0 or self.worse_tol < 0:
            raise ValueError(f"need 0 <= warmup < 1, 0 < early < 1, window > 0 and worse_tol >= 0, got "
                             f"warmup={self.warmup}, early={self.early}, window={self.window}, "
                             f"worse_tol={self.worse_tol}")
        if self.early > 1 - 1 / self.evals:
            raise ValueError(f"early={self.early} falls on the last of evals={self.evals} evaluations: nothing is left "
                             f"for 'late'; use early <= {1 - 1 / self.evals:g} or more evals")
        if self.warmup == 0 and "polar-absorb-handover" in self.recipes:
            raise ValueError("warmup=0 leaves polar-absorb-handover no absorb phase (it hands over to AdamW after the "
                             "warm-up): use warmup > 0 or leave it out of recipes")
        # the device is checked when a run starts (require_data), not here: a GPU run's records must
        # rebuild (`polaropt report`) on a machine without one


def sizes(task: str, cfg) -> dict:
    """The task's sizes: the preset's, with every nonzero field of ``cfg`` in its place."""
    out = dict(tasks.SIZES[task][cfg.preset])
    out.update({k: getattr(cfg, k) for k in ("steps", "width", "batch") if getattr(cfg, k)})
    return out


def eval_steps(steps: int, evals: int) -> list[int]:
    return sorted({round(i * steps / evals) for i in range(evals + 1)})


def lr_factor(steps: int, warmup: float):
    """Linear warm-up over ``warmup``·steps, then cosine to 0 (a ``LambdaLR`` factor)."""
    w = max(1, round(warmup * steps)) if warmup > 0 else 0

    def factor(t: int) -> float:
        if t < w:
            return (t + 1) / w
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (t - w) / max(1, steps - w))))
    return factor, w


def require_data(task_name: str, cfg) -> None:
    """Refuse, before anything runs, a device torch cannot use here or a dataset that is not installed
    (``data.DataMissing`` names its install command)."""
    if cfg.device != "cpu":
        try:
            torch.empty(0, device=cfg.device)
        except (RuntimeError, AssertionError) as e:
            raise ValueError(f"device={cfg.device!r} cannot be used here ({e}); use --device cpu") from None
    if task_name.startswith("fmnist"):
        data.fashion_mnist(cfg.data_dir)
    else:
        data.bible_text()


def _sync(device: str):
    """A callable that waits for ``device``'s queued work (a no-op on CPU)."""
    if device.startswith("cuda"):
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def make_optimizer(entry: str, model, lr: float, weight_decay: float):
    name, options = FIXES.get(entry, (entry, {}))
    if name in ATTACHED:  # a NaN stops the step it enters (not a lazy read up to 100 steps later): the
        options = {**options, "check": "step"}  # run's "diverged" step is exact, as the records were made
    return po.recipe(name, model, lr=lr, weight_decay=weight_decay, **options)


def _task(task_name: str, cfg):
    s = sizes(task_name, cfg)
    kw = {k: s[k] for k in ("width", "batch", "depth", "context", "val") if k in s}
    if task_name.startswith("fmnist"):
        kw["data_dir"] = cfg.data_dir  # only the Fashion-MNIST tasks' configs have it
    return tasks.build(task_name, device=cfg.device, **kw)


_TASKS: dict = {}  # one built task per (name, config) in each process


def task_for(task_name: str, cfg):
    key = (task_name, cfg)
    if key not in _TASKS:
        _TASKS.clear()
        _TASKS[key] = _task(task_name, cfg)
    return _TASKS[key]


def train_one(task_name: str, cfg, entry: str, lr: float, seed: int, phase: str) -> list[dict]:
    """One training run; its curves as records. A run whose loss turns non-finite (or that polaropt's
    guard stops with a FloatingPointError) is recorded as diverged from that evaluation on."""
    task = task_for(task_name, cfg)
    steps = sizes(task_name, cfg)["steps"]
    model = task.model(seed)
    opt = make_optimizer(entry, model, lr, cfg.weight_decay)
    factor, warm = lr_factor(steps, cfg.warmup)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    at = eval_steps(steps, cfg.evals)
    curves = {"val_loss": [], "val_acc": [], "train_loss": [], "wall_s": []}
    diverged, wall, since, running = None, 0.0, 0, torch.zeros((), device=cfg.device)
    batches = task.batches(seed, steps)
    sync = _sync(cfg.device)
    for t in range(steps + 1):
        if t in at:
            ev = task.evaluate(model) if diverged is None else {}
            train_loss = running.item() / since if since else None
            if diverged is None and not (math.isfinite(ev["val_loss"]) and (train_loss is None or math.isfinite(train_loss))):
                diverged, ev = t, {}
            curves["val_loss"].append(ev.get("val_loss"))
            curves["val_acc"].append(ev.get("val_acc"))
            curves["train_loss"].append(train_loss if diverged is None else None)
            curves["wall_s"].append(wall)
            running, since = torch.zeros((), device=cfg.device), 0
        if t == steps:
            break
        if diverged is not None:
            continue
        if entry == "polar-absorb-handover" and t == warm:  # absorb's part is done: plain weights, plain AdamW
            for h in opt.polar_handles:
                h.remove()
            po.unpolarize_model(model)
            opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: factor(k + warm))
        t0 = time.perf_counter()
        x, y = batches[t]
        loss = task.loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        try:
            opt.step()
        except FloatingPointError:  # polaropt's guard: a NaN/Inf gradient, nothing written
            diverged = t
        sched.step()
        sync()
        wall += time.perf_counter() - t0
        running += loss.detach()
        since += 1
    base = {"kind": "curve", "recipe": entry, "lr": lr, "seed": seed, "phase": phase, "step": at,
            "diverged": diverged}
    return [{**base, "metric": m, "value": v} for m, v in curves.items() if any(x is not None for x in v)
            or m == "val_loss"]


def _init_worker():
    torch.set_num_threads(1)


def run_all(task_name: str, cfg, jobs: list[tuple], progress, desc: str) -> list[dict]:
    """Run ``jobs`` ((entry, lr, seed, phase) each) here or over ``cfg.workers`` processes; records in job order."""
    if cfg.workers == 1 or cfg.device != "cpu":  # one GPU: its runs go one after another
        bar = progress(jobs, desc=desc)
        return [r for job in bar for r in train_one(task_name, cfg, *job)]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(cfg.workers, mp_context=ctx, initializer=_init_worker) as pool:
        futures = [pool.submit(train_one, task_name, cfg, *job) for job in jobs]
        bar = progress(total=len(futures), desc=desc)
        out = []
        for f in futures:  # in job order, so the records do not depend on which worker finished first
            out += f.result()
            bar.update(1)
        bar.close()
    return out


def final_loss(values: list) -> float:
    """A run's final validation loss (+∞ when it diverged)."""
    v = values[-1]
    return math.inf if v is None else v


def run_task(task_name: str, cfg, progress) -> list[dict]:
    """The whole protocol on one task: lr search, seeds, timing. Returns the records."""
    require_data(task_name, cfg)
    info = task_for(task_name, cfg).info
    records = [{"kind": "scalar", "metric": "sizes", "value": sizes(task_name, cfg)},
               {"kind": "scalar", "metric": "data", "value": info}]
    search = [(e, lr, 0, "search") for e in cfg.recipes for lr in cfg.grid(e)]
    records += run_all(task_name, cfg, search, progress, f"{task_name}: lr search")
    best = best_lrs(records, cfg)
    more = [(e, best[e], seed, "seed") for e in cfg.recipes for seed in range(1, cfg.seeds)]
    if more:
        records += run_all(task_name, cfg, more, progress, f"{task_name}: seeds")
    records += time_recipes(task_name, cfg, best, progress)
    return records


def best_lrs(records: list[dict], cfg) -> dict[str, float]:
    """Each entry's lr with the lowest final validation loss in the search (the smaller lr on a tie)."""
    finals = by(records, ("recipe", "lr"), kind="curve", metric="val_loss", phase="search")
    return {e: min(cfg.grid(e), key=lambda lr: (final_loss(finals[(e, lr)]), lr)) for e in cfg.recipes}


def time_recipes(task_name: str, cfg, best: dict[str, float], progress) -> list[dict]:
    """Median seconds per training step of every entry at its best lr, interleaved in this process.

    One round times ``time_steps`` steps of every entry (``time_interleaved``, rotated order). The step
    time does not depend on where training is; a step that polaropt's guard stops (a NaN at the peak lr,
    from the initialization) restarts that entry afresh and its round is not counted."""
    task = task_for(task_name, cfg)
    sync = _sync(cfg.device)
    n = cfg.time_steps
    batches = task.batches(12345, n)
    runs = {}

    def fresh(e):
        model = task.model(0)
        runs[e] = (model, make_optimizer(e, model, best[e], cfg.weight_decay))

    failed = {e: [] for e in cfg.recipes}  # per round: did the guard stop this entry's steps

    def steps(entry) -> None:
        model, opt = runs[entry]
        try:
            for x, y in batches:
                loss = task.loss(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
        except FloatingPointError:
            fresh(entry)
            failed[entry].append(True)
            return
        failed[entry].append(False)

    for e in cfg.recipes:  # warm-up: first calls allocate state and caches
        fresh(e)
        steps(e)
        failed[e].clear()
    times = time_interleaved({e: functools.partial(steps, e) for e in cfg.recipes}, repeats=cfg.time_rounds, calls=1,
                             sync=sync, rotate=True, progress=lambda r: progress(r, desc=f"{task_name}: timing"))
    samples = {e: [t / n for t, bad in zip(times[e], failed[e]) if not bad] for e in cfg.recipes}
    lost = [e for e, v in samples.items() if not v]
    if lost:
        raise FloatingPointError(f"{task_name}: every timing round of {', '.join(lost)} hit a NaN/Inf gradient at its "
                                 "best lr from the initialization")
    return [{"kind": "point", "metric": "step_time", "recipe": e, "lr": best[e],
             "value": statistics.median(samples[e]), "samples": samples[e]} for e in cfg.recipes]
