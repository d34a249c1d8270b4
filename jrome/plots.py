"""Figures: causal-trace heatmaps (paper Fig. 1) and average indirect effects over a dataset (Fig. 2)."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .io import atomic_write_bytes

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
    aie: dict[str, np.ndarray], *paths: str | os.PathLike, counts: dict[str, Sequence[int]] | None = None
) -> Any:
    """Fig. 2: average indirect effect per layer for each token category, one panel per kind."""
    plt = _figure()
    kinds = list(aie)
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 3.2), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        for category, row in zip(CATEGORIES, aie[kind], strict=True):
            ax.plot(row, label=category)
        ax.set_title(f"Average indirect effect: {kind}")
        ax.set_xlabel("layer" if kind == "hidden" else "center of restored window")
        ax.set_ylabel("AIE on p(answer)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    if paths:
        save_figure(fig, *paths)
    return fig
