"""The benchmark scripts build what their docs say they measure (a wrong build would time plain models)."""

import json
import sys
from pathlib import Path

import pytest
import torch

import polaropt as po

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
overhead = pytest.importorskip("overhead")


@pytest.mark.parametrize("kind,expected", [("mlp", 3), ("gpt", 16)])
def test_overhead_polarizes_every_linear_but_the_tied_head(kind, expected):
    for variant in ("free", "absorb", "absorb-unfolded"):
        model, opt = overhead.build(variant, kind=kind, width=32, seq=8)
        assert len(list(po.polar_tensors(model))) == expected, variant
    plain, _ = overhead.build("plain", kind=kind, width=32, seq=8)
    assert not list(po.polar_tensors(plain))
    if kind == "gpt":
        assert plain.head.weight is plain.tok.weight


def test_overhead_runs_end_to_end():
    record = overhead.main(["--model", "gpt", "--width", "32", "--seq", "8", "--batches", "2", "--repeats", "1",
                            "--steps", "1", "--warmup", "1", "--renorm", "--variants", "plain", "absorb"])
    assert set(record["results"]) == {"2", "renorm"} and record["results"]["renorm"]["ratio"] > 0
    torch.testing.assert_close(torch.tensor(record["results"]["2"]["plain"]["ratio_to_plain"]), torch.tensor(1.0))


def test_the_gpu_smoke_check_passes_on_cpu(capsys):
    """The script a GPU session runs by hand: its checks hold on CPU (compile is tested in test_nancheck)."""
    import gpu_smoke
    gpu_smoke.main(["--device", "cpu", "--no-compile"])
    out = capsys.readouterr().out
    assert out.count("ok torch.") == 2 * len(po.MODES) and "largest difference 0" in out


def test_renorm_benchmark_counts_fewer_ops_stacked():
    import renorm as renorm_bench
    record = renorm_bench.main(["--layers", "8", "--width", "8", "--repeats", "1", "--calls", "1"])
    r = record["results"]
    assert r["stacked"]["ops"] < r["loop"]["ops"] and r["lazy"]["ops"] <= r["grouped"]["ops"]


def test_overhead_compares_with_weight_norm_and_times_forward_backward_alone(monkeypatch):
    steps = []
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: steps.append(1))
    record = overhead.main(["--model", "gpt", "--width", "16", "--seq", "4", "--batches", "1", "--repeats", "4",
                            "--steps", "1", "--warmup", "0", "--no-step", "--variants", "plain", "weight_norm"])
    assert steps == []  # --no-step: the optimizer never steps
    ci = record["results"]["1"]["plain"]["paired_vs_weight_norm"]
    assert ci["low"] <= ci["median"] <= ci["high"]
    assert record["results"]["1"]["weight_norm"]["paired_vs_weight_norm"] == {"median": 1.0, "low": 1.0, "high": 1.0}


def test_overhead_pools_the_rounds_of_several_records(tmp_path):
    def record(plain, wn, absorb):
        return {"results": {"8": {"plain": {"times_ms": plain}, "absorb": {"times_ms": absorb},
                                  "weight_norm": {"times_ms": wn}}}}
    paths = []
    for i, rec in enumerate([record([10, 20], [11, 22], [12, 24]), record([10, 10, 10], [10, 10, 10], [12, 12, 12])]):
        paths.append(str(tmp_path / f"run{i}.json"))
        (tmp_path / f"run{i}.json").write_text(json.dumps(rec))
    out = overhead.main(["--pool", *paths])
    assert out["absorb"]["plain"]["median"] == pytest.approx(1.2)  # five rounds, each ×1.2
    # against weight_norm the rounds read 12/11, 12/11, 1.2, 1.2, 1.2: pooled, the median is 1.2
    assert out["absorb"]["weight_norm"]["median"] == pytest.approx(1.2)
    assert out["absorb"]["weight_norm"]["low"] == pytest.approx(12 / 11)


def test_overhead_times_every_copy_and_takes_their_mean_per_round():
    record = overhead.main(["--model", "gpt", "--width", "16", "--seq", "4", "--batches", "1", "--repeats", "3",
                            "--steps", "1", "--warmup", "0", "--instances", "2", "--variants", "plain", "absorb"])
    for v in ("plain", "absorb"):
        r = record["results"]["1"][v]
        copies = r["instance_times_ms"]
        assert len(copies) == 2 and all(len(c) == 3 for c in copies)  # 2 copies, each timed in all 3 rounds
        assert r["times_ms"] == pytest.approx([sum(c) / 2 for c in zip(*copies)])
    with pytest.raises(SystemExit):
        overhead.main(["--instances", "0"])


def test_overhead_builds_the_gpt_asked_for_and_steps_it_under_autocast():
    model, opt = overhead.build("absorb", kind="gpt", width=16, seq=4, blocks=3, heads=2, vocab=40)
    assert len(model.blocks) == 3 and model.blocks[0].heads == 2 and model.tok.num_embeddings == 40
    x, y = overhead.batch_of("gpt", 2, 4, "cpu", vocab=40)
    assert int(x.max()) < 40
    dtypes = []
    model.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    overhead.train_step(model, opt, x, y, autocast=torch.bfloat16)()
    overhead.train_step(model, opt, x, y)()
    assert dtypes == [torch.bfloat16, torch.float32]
    v = po.direction_of(model.blocks[0].qkv)
    assert v.dtype == torch.float32  # the weights stay float32; absorb renormalized them after each step
    torch.testing.assert_close(v.norm(dim=1), torch.ones(v.shape[0]))


def test_overhead_main_passes_the_gpt_size_and_autocast_on(monkeypatch):
    built, steps = [], []
    build, train_step = overhead.build, overhead.train_step
    monkeypatch.setattr(overhead, "build", lambda *a, **k: (built.append(k), build(*a, **k))[1])
    monkeypatch.setattr(overhead, "train_step", lambda *a, **k: (steps.append(k), train_step(*a, **k))[1])
    overhead.main(["--model", "gpt", "--width", "16", "--heads", "2", "--blocks", "2", "--vocab", "40", "--seq", "4",
                   "--batches", "1", "--repeats", "1", "--steps", "1", "--warmup", "0", "--autocast", "bf16",
                   "--variants", "absorb", "weight_norm"])
    assert [(k["blocks"], k["heads"], k["vocab"]) for k in built] == [(2, 2, 40)] * 2
    assert [k["autocast"] for k in steps] == [torch.bfloat16] * 2
    for bad in (["--heads", "3"], ["--blocks", "0"], ["--autocast", "fp8"]):
        with pytest.raises(SystemExit):
            overhead.main(["--model", "gpt", "--width", "16", *bad])


def test_the_generate_benchmark_runs_and_every_variant_writes_the_plain_tokens(tmp_path):
    pytest.importorskip("transformers")
    import generate

    record = generate.main(["--layers", "1", "--width", "32", "--vocab", "64", "--prompt", "3", "--new-tokens", "4",
                            "--batches", "2", "--repeats", "2", "--out", str(tmp_path / "g.json")])
    assert json.loads((tmp_path / "g.json").read_text())["benchmark"] == "generate"
    got = record["results"]["batch2"]
    assert set(got) == {"plain", "polar-cached", "polar-uncached"}
    assert all(v["same_tokens_as_plain"] for v in got.values())


@pytest.mark.parametrize("variant", ["plain", "weight_norm", "attach-default", "attach-restore", "attach-step",
                                     "attach-off"])
def test_the_memory_benchmark_runs_every_variant(variant):
    import memory

    got = memory.worker(variant, "gpt", 1, "cpu")
    assert got["peak_bytes"] > got["param_bytes"] > 0


def test_the_sgd_rescale_benchmark_runs_on_the_real_data(tmp_path):
    from polaropt.experiments.bench import data

    try:
        data.fashion_mnist()
    except data.DataMissing:
        if __import__("os").environ.get("POLAROPT_REQUIRE_DATA"):
            raise
        pytest.skip("Fashion-MNIST missing: apt-get install -y dataset-fashion-mnist")
    import polaropt.transport as transport
    import sgd_rescale

    record = sgd_rescale.main(["--steps", "3", "--variants", "keep", "rescale-gradient", "--out", str(tmp_path / "s.json")])
    assert set(record["results"]) == {"keep", "rescale-gradient"}
    assert transport.MOMENT_ORDER["momentum_buffer"] == -1  # the old rule was put back


def test_the_orthogonalize_benchmark_runs_and_reports_every_backend(tmp_path):
    import orthogonalize

    record = orthogonalize.main(["--blocks", "2", "--repeats", "1", "--calls", "1", "--out", str(tmp_path / "o.json")])
    backends = record["results"]["backends"]
    assert set(backends) == set(orthogonalize.BACKENDS)
    assert backends["svd"]["max_sigma_error_one"] < 1e-4 < backends["torch-bf16"]["max_sigma_error_one"]
    assert (tmp_path / "o.json").exists()


def test_the_gpu_bench_script_parses_and_its_settings_are_valid_config():
    """benchmarks/bench_gpu.sh is run by hand on a GPU machine: its shell must parse and each --set it passes must
    be a field the benchmark's config accepts (a typo would only show there, after the machine was started)."""
    import re
    import shutil
    import subprocess

    from polaropt.cli import bench_configs
    from polaropt.experiments.registry import BENCHMARKS

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.sh"
    if shutil.which("bash"):
        subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    keys = re.findall(r'--set "?(\w+)=', text)
    assert set(keys) == {"preset", "workers", "data_dir"} and "--device cuda" in text and "--resume" in text
    configs = bench_configs(BENCHMARKS, None, {"preset": "gpu", "workers": "6", "data_dir": "data/fashion-mnist",
                                               "device": "cuda"}, quick=False)
    assert {c.preset for c in configs.values()} == {"gpu"} and {c.workers for c in configs.values()} == {6}
