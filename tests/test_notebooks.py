"""The Colab notebooks run top to bottom on CPU with the embedded model, and are committed without outputs."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "colab").glob("*.ipynb"))


def test_there_are_three_notebooks_with_a_colab_badge_and_no_outputs():
    assert [p.name for p in NOTEBOOKS] == ["causal_trace.ipynb", "evaluate.ipynb", "rome.ipynb"]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert "colab.research.google.com/assets/colab-badge.svg" in nb.cells[0].source
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has outputs committed"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch):
    monkeypatch.setenv("JROME_MODEL", "smollm2")  # CI is offline; never reach for GPT-2 XL
    monkeypatch.setenv("JROME_NOTEBOOK_FACTS", "16")
    monkeypatch.setenv("JROME_NOTEBOOK_CASES", "2")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    if "JROME_DATA_DIR" in os.environ:  # the kernel runs in tmp_path, where a relative path would point elsewhere
        monkeypatch.setenv("JROME_DATA_DIR", str(Path(os.environ["JROME_DATA_DIR"]).resolve()))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert os.environ["JROME_MODEL"] == "smollm2"
