"""Figures: the heatmap's layout follows paper Fig. 1; files are written whole."""

from __future__ import annotations

import numpy as np
import pytest

from jrome.plots import plot_average_effects, plot_lifelong, plot_trace
from jrome.tracing import TraceResult


def make_result(kind: str, sever: str | None = None) -> TraceResult:
    scores = np.linspace(0.01, 0.7, 5 * 12).reshape(5, 12)
    return TraceResult(
        prompt="The Space Needle is in", subject="Space Needle", kind=kind, scores=scores, low_score=0.01,
        high_score=0.7, answer=" Seattle", answer_id=1, tokens=["The", " Space", " Need", "le", " is"],
        subject_range=(1, 4), window=10, noise_scale=0.1, samples=10, seed=0, uniform=False, replace=False, sever=sever,
    )  # fmt: skip


@pytest.mark.parametrize(("kind", "cmap"), [("hidden", "Purples"), ("mlp", "Greens"), ("attn", "Reds")])
def test_heatmap_layout(tmp_path, kind, cmap):
    fig = plot_trace(make_result(kind), tmp_path / "h.png", tmp_path / "h.pdf", model_name="tiny")
    ax, bar = fig.axes
    mesh = ax.collections[0]
    assert mesh.get_cmap().name == cmap
    assert mesh.get_array().size == 5 * 12  # tokens down, layers across
    assert [t.get_text() for t in ax.get_yticklabels()] == ["The", " Space*", " Need*", "le*", " is"]
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # first token at the top
    assert bar.get_title() == "p(Seattle)"
    assert "within tiny" in ax.get_xlabel()
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "h.pdf").read_bytes()[:4] == b"%PDF"


def test_severed_trace_says_so_in_the_title():
    fig = plot_trace(make_result("hidden", sever="mlp"))
    assert "MLP severed" in fig.axes[0].get_title()


def test_average_effects_plot_has_a_line_per_category(tmp_path):
    fig = plot_average_effects({"hidden": np.random.default_rng(0).random((6, 12))}, tmp_path / "a.png")
    assert len(fig.axes[0].get_lines()) == 6 and (tmp_path / "a.png").stat().st_size > 1000


def test_lifelong_plot_has_a_line_per_run_and_a_marker_per_batch_run(tmp_path):
    def point(edits, score, ppl):
        metrics = {c: {"post": {"mean": score}} for c in ("ES", "PS", "NS")} if edits else {}
        return {"edits": edits, "metrics": metrics, "perplexity": ppl}

    curves = {"MEMIT": [point(0, 0, 60), point(100, 0.9, 70), point(200, 0.5, 900)], "AlphaEdit": [point(0, 0, 60), point(100, 1.0, 61)]}  # fmt: skip
    once = {"MEMIT, 200 at once": {"edits": 200, "ES": 0.8, "PS": 0.7, "NS": 0.6, "perplexity": 65}}
    fig = plot_lifelong(curves, tmp_path / "l.png", at_once=once)
    assert [len(ax.get_lines()) for ax in fig.axes] == [3, 3, 3, 3]
    assert list(fig.axes[0].get_lines()[0].get_xdata()) == [100, 200]  # the unedited point has no scores
    assert list(fig.axes[3].get_lines()[0].get_ydata()) == [60, 70, 900] and fig.axes[3].get_yscale() == "log"
    assert (tmp_path / "l.png").stat().st_size > 1000
