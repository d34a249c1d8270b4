"""The command line, run as a user would run it."""

from __future__ import annotations

import json
import subprocess
import sys


def jrome(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jrome.cli", *args], capture_output=True, text=True)


def test_predict_prints_and_writes_json(tmp_path):
    out = jrome("predict", "--prompt", "The capital of France is", "--top", "3", "--json", str(tmp_path / "p.json"))
    assert out.returncode == 0, out.stderr
    assert "' Paris'" in out.stdout
    rows = json.loads((tmp_path / "p.json").read_text())
    assert rows[0]["top"][0]["token"] == " Paris" and len(rows[0]["top"]) == 3


def test_bad_model_is_a_clear_error():
    out = jrome("predict", "--model", "/nonexistent/model", "--prompt", "x")
    assert out.returncode == 2
    assert "model '/nonexistent/model' not found" in out.stderr
