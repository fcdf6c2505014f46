"""The README's examples run as written (a new user pastes them), the first one checked in detail."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs_and_its_export_loads_into_the_plain_model(tmp_path, monkeypatch):
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    nn = torch.nn
    assert float(scope["loss"].detach()) < 0.5  # (x + 1) mod 100 through a tied head: learnable
    plain = nn.Sequential(nn.Embedding(100, 64), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 100))
    plain[3].weight = plain[0].weight
    plain.load_state_dict(torch.load(tmp_path / "export.pt", weights_only=True), strict=True)
    x = torch.randint(0, 100, (4, 16))
    torch.testing.assert_close(plain(x), scope["model"](x), rtol=1e-5, atol=1e-5)


def test_every_other_readme_example_runs_on_its_own(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[1:]
    assert blocks, "the README shows more than one example"
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        exec(compile(code, str(README), "exec"), {})  # each block imports what it uses
