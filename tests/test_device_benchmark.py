"""The accelerator benchmark (benchmarks/device.py) runs every step on a tiny model, so it is ready for a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "device.py"


def test_the_device_benchmark_runs_every_step_on_a_tiny_model(tmp_path):
    out = tmp_path / "device.json"
    cmd = [sys.executable, str(BENCHMARK), "--shape", "tiny", "--dtypes", "float32", "--out", str(out)]
    done = subprocess.run(cmd, env=os.environ, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    steps = results["float32"]
    assert set(steps) == {"trace hidden", "trace mlp", "trace attn", "ROME edit", "K edits", "Fig. 2", "decoding", "key statistics"}  # fmt: skip
    failed = {name: r["error"] for name, r in steps.items() if "error" in r or "skipped" in r}
    assert not failed, failed
    assert steps["trace hidden"]["programs"] == 2  # the runs and the restorations of the bucket, compiled once ...
    assert steps["trace mlp"]["programs"] == steps["trace attn"]["programs"] == 0  # ... and used by every kind
    assert steps["Fig. 2"]["traced"] == 4 and steps["K edits"]["K=2"]["edits_per_s"] > 0
    assert steps["decoding"]["batch 8"]["transformers_tokens_per_s"] > 0  # transformers' generate ran beside it
    assert "trace hidden" in done.stdout and "jrome_steady_s=" in done.stdout  # the summary lines
