"""The benchmark's protocol, shared by its three tasks: configs, the lr search, the reported seeds, timing.

For every entry (a recipe, or one of the fixes below) on one task:

1. **lr search, on seeds that are never reported** (``search_seeds`` of them, numbered from 1000): the coarse
   grid ``lrs`` (half decades), then, while the best lr (the lowest final validation loss, averaged over the
   search seeds; a diverged run counts as +∞) sits at an end of what was tried, one more half decade beyond it
   (at most ``max_extend`` per side), then the two quarter-decade neighbours of the best; for AdamW and the
   weight-normalization-style recipes, also one half decade past an end whose loss is still within ``window`` of
   the best (same bound), so that their lr windows have both edges. AdamW is searched
   first: every other entry steps what is not a hidden matrix (embeddings, head, biases, gains) with AdamW at
   AdamW's tuned lr (``rest_lr``), so its own grid never drags them.
2. **reported seeds** 0 … ``seeds`` − 1 at the best lr: a seed gives every entry the same initialization and
   the same batches in the same order, so recipes are compared seed by seed (paired).
3. **timing and memory**: every entry's training step at its best lr, interleaved in one process (each round
   times ``time_steps`` steps of every entry, in a rotated order), median over rounds; the bytes its training
   state holds (parameters, gradients, optimizer state), and on CUDA its peak allocation.

Every run has the same number of steps, batch and schedule (linear warm-up, then cosine to 0), the same
gradient clipping (global norm ``clip``) and weight decay ``weight_decay`` (0 by default: at these lengths
torch's 0.01 moves nothing). Runs are independent, so with ``workers`` > 1 they go to that many processes of
one thread each (results then match a one-thread run exactly, not a ``workers=1`` run with more threads: the
order of floating-point sums depends on the thread count).

The fixes, for absorb's slow late phase (Liu 000, observation 2):
- ``polar-absorb-every10``: renormalize every 10 steps instead of every step (``every=10``);
- ``polar-absorb-handover``: absorb during warm-up, then ``unpolarize_model`` and plain AdamW (fresh moments)
  for the rest, on the same schedule.
"""

from __future__ import annotations

import contextlib
import functools
import gc
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
# the default set, sized so the full CPU run fits 45 minutes on 2 cores: the two baselines (AdamW, Muon), the
# field's fixed-radius and per-row methods (Hyperball with either direction, Muown), and polaropt's two modes the
# claims carry from the sources (absorb: Liu; normalize: Wu); every other entry (normuon, multipliers, scion,
# absorb-muon, the fixes, ...) runs with --recipes
RECIPES = ("adamw", "muon", "hyperball-adamw", "hyperball-muon", "muown", "polar-absorb", "polar-normalize")
LRS = (1e-3, 3.162e-3, 1e-2, 3.162e-2)  # half decades
# Hyperball's lr is the fraction of ‖W‖ one step moves (≈ 10-50 × an AdamW lr's relative step at these
# initializations); absorb-muon's direction has unit Frobenius norm per matrix, so Muon's RMS-matched
# step is large relative to its entries. Only the coarse grid moves: the AdamW parts keep AdamW's tuned lr
LR_SCALE = ("hyperball-adamw=10", "hyperball-muon=10", "absorb-muon=0.1")
WN_STYLE = ("adamw-weight-norm", "polar-normalize", "polar-project")
FEWER_STEPS = ("muon", "normuon", "hyperball-adamw", "hyperball-muon", "muown", "scion", "absorb-muon")
SRC_000 = "000 Optimization 2 (Liu), Experiment: linear regression, Observations"
SEARCH_SEED0 = 1000  # search seeds are 1000, 1001, ...; reported seeds 0, 1, ...: never the same run


def snap(lr: float) -> float:
    """An lr with its log10 rounded to 3 decimals and 4 significant digits, so that steps of 10^(±1/4) from
    any tried lr land on one grid point however they are reached (1e-4, not 9.999e-05)."""
    return float(f"{10 ** round(math.log10(lr), 3):.4g}")


@dataclass(frozen=True)
class BenchConfig:
    preset: str = param("cpu", f"model size, batch and steps: {' or '.join(tasks.PRESETS)} (fields set to 0 "
                               "take the preset's value)")
    device: str = param("cpu", "torch device the runs train on (cpu, cuda, cuda:1, ...)")
    recipes: tuple[str, ...] = param(RECIPES, f"the recipes and fixes compared (any of {', '.join(ENTRIES)}); "
                                              "must include adamw")
    lrs: tuple[float, ...] = param(LRS, "the coarse lr grid every recipe's search starts from (≥ 3 values, half "
                                        "decades apart: the search extends it at an edge and refines the best by "
                                        "quarter decades)")
    lr_scale: tuple[str, ...] = param(LR_SCALE, "RECIPE=FACTOR: that recipe's coarse grid × FACTOR (Hyperball's "
                                                "lr is the fraction of ‖W‖ a step moves, 10-50× AdamW's lr here; "
                                                "absorb-muon steps on a unit-norm direction)")
    search_seeds: int = param(1, "seeds the lr search runs on (1000, 1001, ...; never reported)")
    seeds: int = param(5, "reported seeds (0, 1, ...) at each recipe's best lr, paired across recipes")
    max_extend: int = param(2, "half decades the search may add beyond each end of the coarse grid")
    steps: int = param(0, "training steps (0: the preset's)")
    width: int = param(0, "model width (0: the preset's)")
    batch: int = param(0, "batch size (0: the preset's)")
    warmup: float = param(0.1, "fraction of the steps spent in linear lr warm-up (then cosine to 0)")
    clip: float = param(1.0, "gradient clipping: the global gradient norm's maximum, the same for every recipe "
                             "(0: none)")
    weight_decay: float = param(0.0, "decoupled weight decay, where each recipe puts it (0: none; at these run "
                                     "lengths torch's 0.01 shrinks a weight by ~1e-5)")
    evals: int = param(25, "validation evaluations over training (plus one at step 0)")
    early: float = param(0.2, "the 'early' point of the claims: the first evaluation at or after this fraction of "
                              "the steps")
    window: float = param(0.10, "the lr window: lrs whose final loss is within this fraction of the best")
    margin: float = param(0.5, "'not worse than AdamW': the paired difference's upper 95% bound is below this many "
                               "of AdamW's seed standard deviations")
    alpha: float = param(0.05, "familywise error rate of the paired comparisons (Holm over the recipes compared "
                               "with one baseline on one task)")
    time_rounds: int = param(7, "timing rounds (each times every recipe in turn)")
    time_steps: int = param(10, "steps timed per recipe per round")
    workers: int = param(2, "processes of one CPU thread each the runs are spread over (1: all in this process); on "
                            "a GPU they share it")

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
        """The coarse lrs ``entry``'s search starts from."""
        f = self.scales().get(entry, 1.0)
        return tuple(snap(lr * f) for lr in self.lrs)

    def search_seed_list(self) -> list[int]:
        return [SEARCH_SEED0 + i for i in range(self.search_seeds)]

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
        if len(self.lrs) < 3 or any(lr <= 0 for lr in self.lrs):
            raise ValueError(f"lrs must hold at least 3 positive values (a fair search), got {self.lrs}")
        for name in ("seeds", "search_seeds", "evals", "time_rounds", "time_steps", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seeds < 2:
            raise ValueError(f"seeds must be >= 2 (a paired interval needs two differences), got {self.seeds}")
        if self.max_extend > 10:
            raise ValueError(f"max_extend must be at most 10 (5 decades past each end of the grid), got {self.max_extend}")
        if self.seeds > SEARCH_SEED0:
            raise ValueError(f"seeds must be at most {SEARCH_SEED0} (the search seeds start there), got {self.seeds}")
        for name in ("steps", "width", "batch", "max_extend"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0: the preset's, or no extension), got {getattr(self, name)}")
        if not 0 <= self.warmup < 1 or not 0 < self.early < 1 or self.window <= 0 or self.margin < 0 \
                or self.clip < 0 or not 0 < self.alpha < 1 or self.weight_decay < 0:
            raise ValueError(f"need 0 <= warmup < 1, 0 < early < 1, window > 0, margin >= 0, clip >= 0, "
                             f"0 < alpha < 1 and weight_decay >= 0, got warmup={self.warmup}, early={self.early}, "
                             f"window={self.window}, margin={self.margin}, clip={self.clip}, alpha={self.alpha}, "
                             f"weight_decay={self.weight_decay}")
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


def make_optimizer(entry: str, model, lr: float, weight_decay: float, rest_lr: float | None = None):
    """``entry``'s optimizer at ``lr``; every entry but AdamW steps the non-matrix parameters at ``rest_lr``."""
    name, options = FIXES.get(entry, (entry, {}))
    if name in ATTACHED:  # a NaN stops the step it enters (not a lazy read up to 100 steps later): the
        options = {**options, "check": "step"}  # run's "diverged" step is exact, as the records were made
    if name != "adamw" and rest_lr is not None:
        options = {**options, "rest_lr": rest_lr}
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


def _step(task, model, opt, x, y, clip: float):
    loss = task.loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    return loss


def handover_adamw(model, lr: float, rest_lr: float | None, weight_decay: float):
    """The plain AdamW the handover fix continues with: compose's plain cell, the hidden matrices at ``lr``, the rest
    (embeddings, head, biases, gains) at ``rest_lr`` as in every other recipe, decay where AdamW's recipe puts it;
    no NaN check (plain AdamW had none)."""
    return po.compose(model, direction="adamw", radial="none", lr=lr, rest_lr=rest_lr, weight_decay=weight_decay,
                      check=None)


def train_one(task_name: str, cfg, entry: str, lr: float, seed: int, phase: str, rest_lr: float | None = None
              ) -> list[dict]:
    """One training run; its curves as records. A run whose loss turns non-finite (or that polaropt's
    guard stops with a FloatingPointError) is recorded as diverged from that evaluation on."""
    task = task_for(task_name, cfg)
    steps = sizes(task_name, cfg)["steps"]
    model = task.model(seed)
    opt = make_optimizer(entry, model, lr, cfg.weight_decay, rest_lr)
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
            opt = handover_adamw(model, lr, rest_lr, cfg.weight_decay)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: factor(k + warm))
        t0 = time.perf_counter()
        x, y = batches[t]
        try:
            loss = _step(task, model, opt, x, y, cfg.clip)
        except FloatingPointError:  # polaropt's guard: a NaN/Inf gradient, nothing written
            diverged, loss = t, torch.zeros(())
        sched.step()
        sync()
        wall += time.perf_counter() - t0
        running += loss.detach()
        since += 1
    base = {"kind": "curve", "recipe": entry, "lr": lr, "rest_lr": rest_lr, "seed": seed, "phase": phase, "step": at,
            "diverged": diverged}
    return [{**base, "metric": m, "value": v} for m, v in curves.items() if any(x is not None for x in v)
            or m == "val_loss"]


def _init_worker():
    torch.set_num_threads(1)


def pool_for(cfg):
    """The worker processes of one task's runs (one CPU thread each), or a no-op context with ``workers=1``."""
    if cfg.workers == 1:
        return contextlib.nullcontext()
    # on CUDA the workers share the one GPU: small models leave most of it idle between kernel launches
    return ProcessPoolExecutor(cfg.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker)


def run_all(task_name: str, cfg, jobs: list[tuple], progress, desc: str, pool=None) -> list[dict]:
    """Run ``jobs`` ((entry, lr, seed, phase, rest_lr) each) here, or on ``pool`` (``pool_for``'s, else one made
    for them when ``cfg.workers`` > 1); records in job order."""
    if not jobs:
        return []
    if cfg.workers == 1:
        bar = progress(jobs, desc=desc)
        return [r for job in bar for r in train_one(task_name, cfg, *job)]
    if pool is None:
        with pool_for(cfg) as own:
            return run_all(task_name, cfg, jobs, progress, desc, own)
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


def search_scores(records: list[dict], entry: str) -> dict[float, float]:
    """{lr: final validation loss averaged over the search seeds} of ``entry``'s search runs (+∞: one diverged)."""
    runs = by(records, ("lr", "seed"), kind="curve", metric="val_loss", phase="search", recipe=entry)
    lrs = sorted({lr for lr, _ in runs})
    return {lr: statistics.fmean(final_loss(v) for (x, _), v in runs.items() if x == lr) for lr in lrs}


def best_of(scores: dict[float, float]) -> float:
    """The lr with the lowest score (the smaller lr on a tie)."""
    return min(scores, key=lambda lr: (scores[lr], lr))


def next_lrs(scores: dict[float, float], grid: tuple[float, ...], max_extend: int, window: float | None = None
             ) -> list[float]:
    """The lrs the search tries next, given ``scores`` so far: the coarse ``grid`` first; then one half decade
    beyond an end of the tried range while the best sits there (up to ``max_extend`` half decades past the grid
    on each side, never further); then the best's quarter-decade neighbours inside that range; then, with
    ``window``, one half decade beyond an end whose loss is still within ``window`` of the best (inside the same
    range), so the lr window's edges are found; [] when the search is done."""
    def tried(lr: float) -> bool:
        return any(abs(math.log10(lr / x)) < 0.05 for x in scores)

    todo = [lr for lr in grid if not tried(lr)]
    if todo:
        return todo
    lo, hi = min(grid) / 10 ** (0.5 * max_extend + 0.05), max(grid) * 10 ** (0.5 * max_extend + 0.05)
    best, lrs = best_of(scores), sorted(scores)
    for edge, step in ((lrs[0], -0.5), (lrs[-1], 0.5)):
        q = snap(best * 10 ** step)
        if best == edge and lo <= q <= hi:
            return [q]
    refine = [q for q in (snap(best / 10 ** 0.25), snap(best * 10 ** 0.25)) if lo <= q <= hi and not tried(q)]
    if refine or window is None or not math.isfinite(scores[best]):
        return refine
    limit = scores[best] * (1 + window)
    for edge, step in ((lrs[0], -0.5), (lrs[-1], 0.5)):
        q = snap(edge * 10 ** step)
        if scores[edge] <= limit and lo <= q <= hi:
            return [q]
    return []


def mapped(cfg) -> set[str]:
    """The entries whose lr window the search maps to its edges: AdamW and the weight-normalization-style recipes,
    when one of those is compared (Wu's claim that normalization widens the window needs both edges)."""
    wn = {e for e in WN_STYLE if e in cfg.recipes}
    return wn | {"adamw"} if wn else set()


def search(task_name: str, cfg, entries: list[str], rest_lr: float | None, progress, records: list[dict],
           pool=None) -> list[dict]:
    """The adaptive lr search of ``entries`` (in rounds, each round's runs in parallel); returns its records."""
    out = []
    for round_ in range(1, 100):
        jobs = [(e, lr, seed, "search", None if e == "adamw" else rest_lr) for e in entries
                for lr in next_lrs(search_scores(records + out, e), cfg.grid(e), cfg.max_extend,
                                   cfg.window if e in mapped(cfg) else None)
                for seed in cfg.search_seed_list()]
        if not jobs:
            return out
        out += run_all(task_name, cfg, jobs, progress, f"{task_name}: lr search, round {round_}", pool)
    raise RuntimeError("the lr search did not settle in 99 rounds")  # each round adds lrs from a finite lattice


def run_task(task_name: str, cfg, progress) -> list[dict]:
    """The whole protocol on one task: AdamW's lr search, the others' (at AdamW's lr for what is not a hidden
    matrix), the reported seeds, timing and memory. Returns the records."""
    require_data(task_name, cfg)
    info = task_for(task_name, cfg).info
    records = [{"kind": "scalar", "metric": "sizes", "value": sizes(task_name, cfg)},
               {"kind": "scalar", "metric": "data", "value": info}]
    with pool_for(cfg) as pool:
        records += search(task_name, cfg, ["adamw"], None, progress, records, pool)
        rest_lr = best_of(search_scores(records, "adamw"))
        records.append({"kind": "scalar", "metric": "rest_lr", "value": rest_lr})
        records += search(task_name, cfg, [e for e in cfg.recipes if e != "adamw"], rest_lr, progress, records, pool)
        best = best_lrs(records, cfg)
        seeds = [(e, best[e], seed, "seed", None if e == "adamw" else rest_lr) for e in cfg.recipes
                 for seed in range(cfg.seeds)]
        records += run_all(task_name, cfg, seeds, progress, f"{task_name}: seeds", pool)
    records += time_recipes(task_name, cfg, best, progress, rest_lr)
    return records


def best_lrs(records: list[dict], cfg) -> dict[str, float]:
    """Each entry's lr with the lowest mean final validation loss over the search seeds (the smaller on a tie)."""
    return {e: best_of(search_scores(records, e)) for e in cfg.recipes}


def state_bytes(model, opt) -> int:
    """Bytes the training state holds: parameters, their gradients and the optimizer's state tensors (each
    storage once)."""
    seen, total = set(), 0
    tensors = [p for p in model.parameters()] + [p.grad for p in model.parameters() if p.grad is not None]
    tensors += [v for st in opt.state.values() for v in st.values() if isinstance(v, torch.Tensor)]
    for t in tensors:
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def time_recipes(task_name: str, cfg, best: dict[str, float], progress, rest_lr: float | None = None) -> list[dict]:
    """Median seconds per training step of every entry at its best lr, interleaved in this process, and the
    bytes of its training state (on CUDA also its peak allocation over a few steps from a fresh start).

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
        runs[e] = (model, make_optimizer(e, model, best[e], cfg.weight_decay, rest_lr))

    failed = {e: [] for e in cfg.recipes}  # per round: did the guard stop this entry's steps

    def steps(entry) -> None:
        model, opt = runs[entry]
        try:
            for x, y in batches:
                _step(task, model, opt, x, y, cfg.clip)
        except FloatingPointError:
            fresh(entry)
            failed[entry].append(True)
            return
        failed[entry].append(False)

    cuda = cfg.device.startswith("cuda")
    peak = {}
    for e in cfg.recipes:  # warm-up: first calls allocate state and caches (on CUDA: the peak of a fresh start)
        if cuda:  # above what is held already (the data): the earlier recipes' models are freed first
            runs.clear()
            gc.collect()  # a polarized model sits in reference cycles
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(cfg.device)
            held_before = torch.cuda.memory_allocated(cfg.device)
        fresh(e)
        steps(e)
        failed[e].clear()
        if cuda:
            peak[e] = torch.cuda.max_memory_allocated(cfg.device) - held_before
            runs.pop(e)
    for e in [e for e in cfg.recipes if e not in runs]:  # CUDA: built again after its peak was read
        fresh(e)
        steps(e)
        failed[e].clear()
    held = {e: state_bytes(*runs[e]) for e in cfg.recipes}
    times = time_interleaved({e: functools.partial(steps, e) for e in cfg.recipes}, repeats=cfg.time_rounds, calls=1,
                             sync=sync, rotate=True, progress=lambda r: progress(r, desc=f"{task_name}: timing"))
    samples = {e: [t / n for t, bad in zip(times[e], failed[e]) if not bad] for e in cfg.recipes}
    lost = [e for e, v in samples.items() if not v]
    if lost:
        raise FloatingPointError(f"{task_name}: every timing round of {', '.join(lost)} hit a NaN/Inf gradient at its "
                                 "best lr from the initialization")
    out = [{"kind": "point", "metric": "step_time", "recipe": e, "lr": best[e],
            "value": statistics.median(samples[e]), "samples": samples[e]} for e in cfg.recipes]
    out += [{"kind": "point", "metric": "state_bytes", "recipe": e, "value": held[e]} for e in cfg.recipes]
    out += [{"kind": "point", "metric": "peak_bytes", "recipe": e, "value": peak[e]} for e in peak]
    return out
