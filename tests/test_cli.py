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
