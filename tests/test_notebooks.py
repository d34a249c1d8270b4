"""The Colab notebooks: committed without outputs, and their code cells run top to bottom on the embedded model
with the smallest settings, in this process (so they reuse its compiled programs), with their printed output
and figures checked."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import matplotlib
import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "colab").glob("*.ipynb"))
SMALLEST = {
    "JROME_MODEL": "smollm2", "JROME_NOTEBOOK_SAMPLES": "1", "JROME_NOTEBOOK_FACTS": "4", "JROME_NOTEBOOK_CASES": "1",
    "JROME_NOTEBOOK_ROME_HPARAMS": '{"context_template_length_params": [[5, 3]]}',  # 4 context templates, not 21
}  # fmt: skip


def test_there_are_four_notebooks_with_a_colab_badge_and_no_outputs():
    assert [p.name for p in NOTEBOOKS] == ["causal_trace.ipynb", "evaluate.ipynb", "paper_gpt2xl.ipynb", "rome.ipynb"]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert "colab.research.google.com/assets/colab-badge.svg" in nb.cells[0].source
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has outputs committed"


def run_notebook(name: str, monkeypatch, tmp_path) -> tuple[list[str], int]:
    """Execute a notebook's code cells in one namespace: (what each cell printed, figures it left open)."""
    import matplotlib.pyplot as plt

    for key, value in SMALLEST.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    matplotlib.use("Agg")
    plt.close("all")
    namespace: dict = {"__name__": "__main__"}
    printed = []
    for cell in nbformat.read(NOTEBOOKS[[p.stem for p in NOTEBOOKS].index(name)], as_version=4).cells:
        if cell.cell_type != "code":
            continue
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(cell.source, f"{name}.ipynb", "exec"), namespace)
        printed.append(out.getvalue())
    figures = len(plt.get_fignums())
    plt.close("all")
    return printed, figures


@pytest.mark.slow
def test_causal_trace_notebook(monkeypatch, tmp_path):
    printed, figures = run_notebook("causal_trace", monkeypatch, tmp_path)
    text = "".join(printed)
    assert "answer ' Paris'" in text and "MLP severed" in text
    answered = int(re.search(r"(\d+) of 4 facts answered correctly", text).group(1))
    assert figures == 4 + (answered > 0)  # three heatmaps, the severed-path plot, and Fig. 2 when a fact is answered


@pytest.mark.slow
def test_rome_notebook(monkeypatch, tmp_path):
    printed, _ = run_notebook("rome", monkeypatch, tmp_path)
    text = "".join(printed)
    first_check = text.split("The Eiffel Tower is located in the city of\n", 1)[1].splitlines()
    assert "Paris" in first_check[0] and "Rome" in first_check[1]  # before: Paris; after: Rome
    assert "undo restores the original parameters bit for bit: True" in text
    assert "reloaded edit still says: [' Rome" in text
    assert re.search(r"penzai model traced by jrome: the MLP at layer \d+ matters most", text)
    assert "penzai model says: ' Paris'" in text and "edited penzai model says: ' Rome'" in text
    layer = re.search(r"block_(\d+)/mlp/out_linear", text)
    assert layer and f"changed in penzai: ['transformer/block_{layer.group(1)}/mlp/out_linear.weights']" in text


@pytest.mark.slow
def test_evaluate_notebook(monkeypatch, tmp_path):
    printed, _ = run_notebook("evaluate", monkeypatch, tmp_path)
    assert "### rome on CounterFact (smollm2)" in printed[1] and "### ft-l on CounterFact (smollm2)" in printed[1]
    rows = {line.split()[0]: line for line in printed[2].splitlines()}
    assert set(rows) == {"rome", "ft-l"} and "ES 1.00" in rows["rome"]


@pytest.mark.slow
def test_paper_notebook(monkeypatch, tmp_path):
    printed, figures = run_notebook("paper_gpt2xl", monkeypatch, tmp_path)
    assert figures == 3 and "answer ' Paris'" in printed[1]  # the three Fig. 1 heat maps
    assert "key statistics at layer 4: 20" in printed[2] and "wikitext-2" in printed[2]  # no published file: computed
    before, after = (line for line in printed[2].splitlines() if line.startswith(("before", "after")))
    assert "Paris" in before and "Rome" in after
    assert "### ROME on CounterFact (smollm2, 1 cases)" in printed[3] and "| ES |" in printed[3]
