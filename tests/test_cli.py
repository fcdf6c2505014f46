import subprocess
import sys

import polaropt as po
from polaropt.cli import main


def test_version_and_help(capsys):
    try:
        main(["--version"])
    except SystemExit as e:
        assert e.code == 0
    assert po.__version__ in capsys.readouterr().out
    assert main([]) == 0
    assert "usage: polaropt" in capsys.readouterr().out


def test_python_dash_m():
    out = subprocess.run([sys.executable, "-m", "polaropt", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"polaropt {po.__version__}"


def test_the_suite_runs_on_one_thread_unless_omp_num_threads_is_set(tmp_path, monkeypatch):
    import torch

    from polaropt.cli import main
    from polaropt.experiments import runner

    real, seen = runner.run_experiment, []

    def run_experiment(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "run_experiment", run_experiment)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        main(["run", "liu-1d", "--quick", "--quiet", "--out", str(tmp_path / "a")])
        assert torch.get_num_threads() == 2  # for the command only: a caller's setting comes back
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        main(["run", "liu-1d", "--quick", "--quiet", "--out", str(tmp_path / "b")])
        assert seen == [1, 2]
    finally:
        torch.set_num_threads(before)
