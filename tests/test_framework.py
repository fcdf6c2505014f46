"""The experiment framework's parts, each on its own: checks and claims, record queries, the training
loop, the atomic writer, config parsing and help, and the core's independence from the suite's
dependencies."""

import dataclasses
import subprocess
import sys

import pytest
import torch

from polaropt.experiments.framework import Check, Claim, apply_overrides, at_source_setup, config_from_dict, field_help, param
from polaropt.experiments.records import atomic, by, one, select
from polaropt.experiments.training import train


# ---- checks write their expected text from the threshold they test ---------------------------------

@pytest.mark.parametrize("make,value,passed", [
    (lambda v: Check.at_most("gap", v, 0.1), 0.1, True), (lambda v: Check.at_most("gap", v, 0.1), 0.1000001, False),
    (lambda v: Check.at_least("slope", v, 2), 2, True), (lambda v: Check.at_least("slope", v, 2), 1.99, False),
    (lambda v: Check.below("W", v, 0), -1e-9, True), (lambda v: Check.below("W", v, 0), 0.0, False),
    (lambda v: Check.above("W", v, 0), 1e-9, True), (lambda v: Check.above("W", v, 0), 0.0, False),
    (lambda v: Check.between("x", v, 1, 2), 2.0, True), (lambda v: Check.between("x", v, 1, 2), 2.01, False),
    (lambda v: Check.near("n", v, 288, rel=0.1), 316, True), (lambda v: Check.near("n", v, 288, rel=0.1), 317, False),
    (lambda v: Check.near("x", v, 1.0, tol=1e-3), 1.001, True), (lambda v: Check.near("x", v, 1.0, tol=1e-3), 1.0011, False),
])
def test_checks_pass_exactly_at_their_threshold(make, value, passed):
    assert make(value).passed is passed


def test_never_is_infinitely_late():
    assert Check.sooner("a", 5, "b", None).passed  # reaching beats never reaching
    assert not Check.sooner("a", None, "b", None).passed  # never is not sooner than never
    assert not Check.sooner("a", None, "b", 3).passed
    assert Check.sooner("a", 5, "b", 10, factor=2).passed and not Check.sooner("a", 6, "b", 10, factor=2).passed
    assert not Check.at_most("steps", None, 100).passed and "never" in Check.at_most("steps", None, 100).measured


def test_expected_text_follows_the_threshold():
    assert Check.at_most("relative gap", 0.01, 0.1).expected == "relative gap ≤ 0.1"
    assert Check.at_most("relative gap", 0.01, 1.0).expected == "relative gap ≤ 1"  # a loosened limit shows
    assert Check.near("n", 300, 288, rel=0.1).expected == "n within ±10% of 288"
    assert Check.less("a", 1.0, "b", 4.0, margin=2).expected == "a + 2 ≤ b"
    with pytest.raises(ValueError, match="exactly one of rel= or tol="):
        Check.near("n", 1, 1)


def test_claims_are_keyword_only_and_judge_all_or_any():
    with pytest.raises(TypeError):
        Claim("id", "src", "st", "exp", "meas", True)  # noqa: the positional form is gone
    good, bad = Check.at_most("x", 1, 2), Check.at_most("y", 3, 2)
    both = Claim.of(id="c", source="s", statement="t", checks=[good, bad])
    either = Claim.of(id="c", source="s", statement="t", checks=[good, bad], require="any")
    assert not both.passed and either.passed
    assert both.expected == "x ≤ 2; and y ≤ 2" and either.expected == "x ≤ 2; or y ≤ 2"
    assert both.measured == "x = 1; y = 3 ✗"  # the failing condition is marked
    with pytest.raises(ValueError, match="require must be 'all' or 'any'"):
        Claim.of(id="c", source="s", statement="t", checks=good, require="most")
    with pytest.raises(ValueError, match="no checks"):
        Claim.of(id="c", source="s", statement="t", checks=[])
    assert Claim.failed(id="c", source="s", statement="t", expected="e", why="never reached").passed is False


# ---- record queries ----------------------------------------------------------------------------------

RECORDS = [{"kind": "curve", "run": "a", "metric": "loss", "value": [1, 2]},
           {"kind": "curve", "run": "b", "metric": "loss", "value": [3]},
           {"kind": "curve", "run": "a", "metric": "w", "value": [5]},
           {"kind": "point", "run": "a", "steps": 7}]


def test_select_one_by():
    assert [r["run"] for r in select(RECORDS, "curve", metric="loss")] == ["a", "b"]
    assert one(RECORDS, "point")["steps"] == 7
    assert by(RECORDS, "run", kind="curve", metric="loss") == {"a": [1, 2], "b": [3]}
    assert by(RECORDS, ("run", "metric"), kind="curve") == {("a", "loss"): [1, 2], ("b", "loss"): [3], ("a", "w"): [5]}
    with pytest.raises(LookupError, match="found 3"):
        one(RECORDS, "curve")
    with pytest.raises(LookupError, match="repeat the key 'a'"):
        by(RECORDS, "run", kind="curve")  # two curves of run a: the query was not specific enough
    with pytest.raises(ValueError, match="unknown record kind 'curves'; valid kinds are curve, point"):
        select(RECORDS, "curves")


# ---- the training loop -------------------------------------------------------------------------------

def test_train_evaluates_steps_plus_one_times_and_steps_in_torchs_order():
    w = torch.nn.Parameter(torch.tensor([4.0]))
    opt = torch.optim.SGD([w], lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    seen = []

    def loss_at(t):
        seen.append((t, w.item(), opt.param_groups[0]["lr"]))
        return w.square().sum()

    assert train(loss_at, opt, 3, schedulers=[sched]) == 3
    ref, lr = 4.0, 0.1  # by hand: w ← w − lr·2w, then the lr halves
    for t, (seen_t, seen_w, seen_lr) in enumerate(seen):
        assert seen_t == t and seen_w == pytest.approx(ref) and seen_lr == pytest.approx(lr)
        ref, lr = ref - lr * 2 * ref, lr / 2
    assert len(seen) == 4 and w.item() == pytest.approx(seen[-1][1])  # the last state is evaluated, not updated


def test_train_stops_after_the_evaluation_that_asks():
    w = torch.nn.Parameter(torch.tensor([1.0]))
    opt = torch.optim.SGD([w], lr=0.1)
    assert train(lambda t: w.sum(), opt, 100, stop=lambda t: t == 5) == 5
    assert w.item() == pytest.approx(1.0 - 0.1 * 5)
    with pytest.raises(ValueError, match="steps must be >= 0"):
        train(lambda t: w.sum(), opt, -1)


# ---- the one atomic writer ----------------------------------------------------------------------------

def test_atomic_replaces_whole_or_leaves_the_old(tmp_path):
    target = tmp_path / "run"
    with atomic(target, directory=True) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic(target, directory=True) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("interrupted")
    assert (target / "a.txt").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    with atomic(target, directory=True) as tmp:
        (tmp / "b.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    f = tmp_path / "x.json"
    with pytest.raises(KeyError):
        with atomic(f) as tmp:
            tmp.write_text("{")
            raise KeyError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


# ---- configs ------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ToyConfig:
    steps: int = param(10, "how many steps")
    lrs: tuple[float, ...] = param((0.1, 0.2), "learning rates")
    init: str = param("one", "how s starts")

    def validate(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


def test_configs_parse_validate_and_explain_themselves():
    cfg = apply_overrides(ToyConfig(), {"steps": "3", "lrs": "1e-3,2", "init": "norm"})
    assert cfg == ToyConfig(steps=3, lrs=(1e-3, 2.0), init="norm")
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        apply_overrides(ToyConfig(), {"steps": "0"})
    assert config_from_dict(ToyConfig, {"steps": 3, "lrs": [0.5], "init": "one"}) == ToyConfig(3, (0.5,))
    with pytest.raises(ValueError, match=r"unknown keys \['nope'\], missing keys \['init'\]; valid keys are init, lrs"):
        config_from_dict(ToyConfig, {"steps": 3, "lrs": [0.5], "nope": 1})
    with pytest.raises(ValueError, match=r"steps='3' should be int"):
        config_from_dict(ToyConfig, {"steps": "3", "lrs": [0.5], "init": "one"})
    with pytest.raises(ValueError, match=r"lrs=0.5 should be a list"):
        config_from_dict(ToyConfig, {"steps": 3, "lrs": 0.5, "init": "one"})
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        config_from_dict(ToyConfig, {"steps": 0, "lrs": [0.5], "init": "one"})
    assert field_help(ToyConfig)[0] == ("steps", "int", "10", "how many steps")
    assert field_help(ToyConfig)[1][1] == "tuple[float, ...]"
    assert at_source_setup(ToyConfig(steps=99), "lrs", "init") and not at_source_setup(ToyConfig(init="x"), "init")


# ---- the core library does not need the suite's dependencies ------------------------------------------

BLOCK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('numpy', 'scipy', 'matplotlib', 'tqdm'):
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Block())
import importlib.util
real = importlib.util.find_spec
importlib.util.find_spec = lambda n, *a: None if n in ('numpy', 'scipy', 'matplotlib', 'tqdm') else real(n, *a)
"""


def test_core_imports_and_trains_without_the_experiments_extra():
    code = BLOCK + """
import torch, polaropt as po
m = torch.nn.Linear(4, 3)
po.polarize_model(m)
opt = torch.optim.AdamW(po.param_groups(m, weight_decay=0.1), lr=1e-2)
po.attach(opt, m)
m(torch.randn(2, 4)).sum().backward(); opt.step()
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


def test_the_suite_without_its_extra_names_the_install_command():
    code = BLOCK + "from polaropt.cli import main\nsys.exit(main(['reproduce', '--quick']))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 2
    assert 'pip install "polaropt[experiments]"' in out.stderr and "numpy, scipy, matplotlib, tqdm" in out.stderr


def test_atomic_results_get_the_usual_permissions_and_a_failed_swap_keeps_the_old(tmp_path, monkeypatch):
    import os

    target = tmp_path / "run"
    with atomic(target, directory=True) as tmp:
        (tmp / "a.txt").write_text("old")
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o777 & ~mask  # not mkdtemp's private 0700
    with atomic(tmp_path / "f.txt") as tmp:
        tmp.write_text("x")
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o666 & ~mask
    real = os.replace

    def second_rename_fails(src, dst):
        if ".partial-" in str(src):
            raise OSError("disk gone")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", second_rename_fails)
    with pytest.raises(OSError, match="disk gone"):
        with atomic(target, directory=True) as tmp:
            (tmp / "a.txt").write_text("new")
    monkeypatch.undo()
    assert (target / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt", "run"]
