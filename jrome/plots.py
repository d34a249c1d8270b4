"""Figures: causal-trace heatmaps (paper Fig. 1), average effects over a dataset (Fig. 2), severed paths (Fig. 3), and
how sequential edits hold up (the scores of the edits so far and perplexity against the number of edits)."""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np

from .files import atomic_write_bytes

COLORMAPS = {"hidden": "Purples", "mlp": "Greens", "attn": "Reds"}
KIND_LABELS = {"hidden": "single restored layer", "mlp": "center of interval of {w} restored MLP layers",
               "attn": "center of interval of {w} restored attention layers"}  # fmt: skip


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, *paths: str | os.PathLike) -> None:
    """Write the figure to each path (format from the suffix: .png, .pdf, .svg), each file atomically."""
    for path in paths:
        buf = io.BytesIO()
        fig.savefig(buf, format=str(path).rsplit(".", 1)[-1], bbox_inches="tight", dpi=150)
        atomic_write_bytes(path, buf.getvalue())


def plot_trace(result: Any, *paths: str | os.PathLike, model_name: str | None = None, ax: Any = None) -> Any:
    """Heatmap of a TraceResult: tokens down, layers across, subject tokens starred, coloured by p(answer)."""
    plt = _figure()
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(3.5 + 0.12 * result.scores.shape[1], 0.9 + 0.32 * result.scores.shape[0]))
    start, end = result.subject_range
    labels = [f"{tok}*" if start <= i < end else tok for i, tok in enumerate(result.tokens)]
    image = ax.pcolor(result.scores, cmap=COLORMAPS[result.kind], vmin=result.low_score)
    ax.invert_yaxis()
    ax.set_yticks(np.arange(len(labels)) + 0.5)
    ax.set_yticklabels([label.replace("\n", "\\n") for label in labels])
    layers = result.scores.shape[1]
    step = max(1, layers // 10)
    ax.set_xticks(np.arange(0, layers, step) + 0.5)
    ax.set_xticklabels(range(0, layers, step))
    what = {"hidden": "state", "mlp": "MLP", "attn": "Attn"}[result.kind]
    sever = f", {result.sever.upper()} severed" if result.sever else ""
    ax.set_title(f"Impact of restoring {what} after corrupted input{sever}")
    where = f" within {model_name}" if model_name else ""
    ax.set_xlabel(KIND_LABELS[result.kind].format(w=result.window) + where)
    bar = (fig or ax.figure).colorbar(image, ax=ax)
    bar.ax.set_title(f"p({result.answer.strip()})", y=-0.12, fontsize=10)
    if paths:
        save_figure(ax.figure, *paths)
    return ax.figure


CATEGORIES = (
    "First subject token",
    "Middle subject tokens",
    "Last subject token",
    "First subsequent token",
    "Further tokens",
    "Last token",
)


def plot_average_effects(
    aie: dict[str, np.ndarray],
    *paths: str | os.PathLike,
    std: dict[str, np.ndarray] | None = None,
    n: int | None = None,
) -> Any:
    """Fig. 2 as the original's line plot: AIE per layer for each token category, one panel per trace.

    With `std` (of the pooled rows) and `n` (facts), a band of ±1.96 std / sqrt(n) around each line, as there.
    """
    plt = _figure()
    names = list(aie)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for c, (category, row) in enumerate(zip(CATEGORIES, aie[name], strict=True)):
            (line,) = ax.plot(row, label=category)
            if std is not None and n:
                error = 1.96 * std[name][c] / np.sqrt(n)
                ax.fill_between(np.arange(len(row)), row - error, row + error, alpha=0.3, color=line.get_color())
        ax.set_title(f"Average indirect effect: {name}")
        ax.set_xlabel("center of restored window" if name in ("mlp", "attn") else "layer")
        ax.set_ylabel("AIE on p(answer)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    if paths:
        save_figure(fig, *paths)
    return fig


def plot_severed_effects(aie: dict[str, np.ndarray], *paths: str | os.PathLike) -> Any:
    """Fig. 3's bars: AIE of the last subject token's hidden state per layer, as is and with MLP or Attn severed."""
    plt = _figure()
    bars = [(name, label, color) for name, label, color in (
        ("hidden", "Effect of single state on P", "#7261ab"), ("severed_attn", "Effect with Attn severed", "#f3201b"),
        ("severed_mlp", "Effect with MLP severed", "#20b020"),
    ) if name in aie]  # fmt: skip
    last_subject = CATEGORIES.index("Last subject token")
    fig, ax = plt.subplots(figsize=(6, 2.1))
    width = 0.9 / len(bars)
    for i, (name, label, color) in enumerate(bars):
        row = aie[name][last_subject]
        ax.bar(np.arange(len(row)) + (i - (len(bars) - 1) / 2) * width, row, width=width, color=color, label=label)
    ax.set_title("Causal effect of states at the last subject token, MLP or Attn severed")
    ax.set_ylabel("Average indirect effect")
    ax.set_xlabel("Layer at which the single hidden state is restored")
    ax.legend(frameon=False, fontsize=7)
    if paths:
        save_figure(fig, *paths)
    return fig


LIFELONG_PANELS = (("ES", "efficacy"), ("PS", "generalisation (paraphrase)"), ("NS", "specificity (neighbourhood)"))


def plot_lifelong(
    curves: dict[str, list[dict]], *paths: str | os.PathLike, at_once: dict[str, dict] | None = None, title: str = ""
) -> Any:
    """The three CounterFact scores of the edits so far, and perplexity, against the number of edits: one line per
    sequential run (its curve.jsonl checkpoints), and a marker per run of edits made at once (at_once: {label:
    {"edits": N, "ES": .., "PS": .., "NS": .., "perplexity": ..}})."""
    plt = _figure()
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for label, curve in curves.items():
        points = [p for p in curve if p["metrics"]]
        edits = [p["edits"] for p in points]
        for ax, (column, _) in zip(axes, LIFELONG_PANELS, strict=False):
            ax.plot(edits, [p["metrics"][column]["post"]["mean"] for p in points], marker="o", ms=3, label=label)
        axes[3].plot([p["edits"] for p in curve], [p["perplexity"] for p in curve], marker="o", ms=3, label=label)
    for label, point in (at_once or {}).items():
        for ax, key in zip(axes, ("ES", "PS", "NS", "perplexity"), strict=True):
            ax.plot([point["edits"]], [point[key]], marker="*", ms=11, ls="none", label=label)
    for ax, (_, name) in zip(axes, LIFELONG_PANELS, strict=False):
        ax.set_title(name)
        ax.set_ylim(-0.02, 1.02)
    axes[3].set_title("perplexity, held-out WikiText-2")
    axes[3].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("edits so far")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if paths:
        save_figure(fig, *paths)
    return fig
