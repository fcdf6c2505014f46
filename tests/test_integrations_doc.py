"""docs/integrations.md: every example runs as written (a user pastes them), each on its own."""

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "integrations.md"


def test_every_integration_example_runs_on_its_own(tmp_path, monkeypatch):
    pytest.importorskip("transformers", reason="the test extra installs transformers")
    pytest.importorskip("safetensors")
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 3
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        exec(compile(code, str(DOC), "exec"), {})  # each block imports what it uses
    assert (tmp_path / "ema.pt").exists()
