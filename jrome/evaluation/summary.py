"""The summary of an evaluation, as the original's `summarize.py`: each column's mean over cases with a 95% interval
before and after the edit, the harmonic-mean score S, and the tables printed from them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

# Summary columns named as in the paper, and the per-case field each averages.
COLUMNS = {
    "counterfact": {
        "ES": "efficacy_score", "PS": "paraphrase_score", "NS": "neighborhood_score", "EM": "efficacy_magnitude",
        "PM": "paraphrase_magnitude", "NM": "neighborhood_magnitude", "GE": "generation_entropy",
        "RS": "reference_score",
    },
    "zsre": {"efficacy": "edit_accuracy", "paraphrase": "paraphrase_accuracy", "specificity": "neighborhood_accuracy"},
}  # fmt: skip


SCORE_PARTS = {"counterfact": ("ES", "PS", "NS"), "zsre": ("efficacy", "paraphrase", "specificity")}


def harmonic_mean(values: list[float]) -> float:
    """scipy's hmean for non-negative values: 0 if any is 0."""
    return 0.0 if min(values) == 0 else len(values) / sum(1 / v for v in values)


def summarise(records: list[dict], dataset: str) -> dict[str, Any]:
    """summarize.py: each column's mean over cases of the per-case values, with a 95% interval (normal
    approximation), before and after; S is the harmonic mean of the three success rates' means."""
    out: dict[str, Any] = {"n": len(records), "metrics": column_stats(records, dataset)}
    for key in ("edit", "score"):
        out[f"seconds_{key}"] = float(np.mean([r["seconds"][key] for r in records])) if records else float("nan")
    return out


def column_stats(records: list[dict], dataset: str) -> dict[str, dict]:
    """Each column's {"pre": ..., "post": ...} mean, 95% half-interval and count over records with pre and post."""
    if dataset not in COLUMNS:
        raise ValueError(f"unknown dataset kind {dataset!r}; known: {', '.join(COLUMNS)}")
    metrics: dict[str, dict] = {}
    for when in ("pre", "post"):
        for column, field in COLUMNS[dataset].items():
            values = np.array([r[when][field] for r in records if field in r[when]], np.float64)
            if not len(values):
                continue
            half = 1.96 * values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else None  # JSON null
            metrics.setdefault(column, {})[when] = {"mean": float(values.mean()), "ci95": half, "n": len(values)}
        parts = [metrics.get(c, {}).get(when) for c in SCORE_PARTS[dataset]]
        if all(parts):
            s = harmonic_mean([p["mean"] for p in parts])
            metrics.setdefault("S", {})[when] = {"mean": s, "ci95": None, "n": len(records)}
    return {c: metrics[c] for c in ["S", *COLUMNS[dataset]] if c in metrics}


def markdown_table(summary: dict[str, Any], title: str) -> str:
    """The summary as a Markdown table: column | before | after, as mean ± 95% interval times 100 (the paper's
    tables scale every column by 100, GE included)."""

    def cell(m: dict | None) -> str:
        if m is None:
            return "–"
        return f"{100 * m['mean']:.1f}" + ("" if m["ci95"] is None else f" ± {100 * m['ci95']:.1f}")

    lines = [
        f"### {title}",
        "",
        f"{summary['n']} cases; values × 100",
        "",
        "| metric | before | after |",
        "|---|---|---|",
    ]
    for metric, values in summary["metrics"].items():
        lines.append(f"| {metric} | {cell(values.get('pre'))} | {cell(values.get('post'))} |")
    lines += [f"\n{note}" for note in summary.get("notes", [])]
    if summary.get("curve"):  # a sequential run: how the model held up after each chunk
        hp = summary["hparams"]
        layers = hp["layers"] if "layers" in hp else [hp["layer"]]
        title = "After each chunk: scores of the edits so far (× 100; – where not scored), perplexity, kernel growth:"
        lines += ["", title, "", curve_table(summary["curve"], layers)]
    return "\n".join(lines) + "\n"


def curve_table(curve: list[dict], layers: Sequence[int]) -> str:
    """The curve as Markdown: per checkpoint the three success rates (× 100) of the edits so far, perplexity, and the
    largest growth of an edited layer's kernel norm over the unedited one."""
    parts = next(p for p in SCORE_PARTS.values() if p[0] in curve[-1]["metrics"] or len(curve) == 1)
    base = np.asarray(curve[0]["kernel_norms"])
    lines = [f"| edits | {' | '.join(parts)} | perplexity | max ‖W‖/‖W₀‖ |", "|---" * (len(parts) + 3) + "|"]
    for point in curve:
        cells = [f"{100 * point['metrics'][p]['post']['mean']:.1f}" if p in point["metrics"] else "–" for p in parts]
        ppl = "–" if point["perplexity"] is None else f"{point['perplexity']:.2f}"
        growth = max(point["kernel_norms"][layer] / base[layer] for layer in layers)
        lines.append(f"| {point['edits']} | {' | '.join(cells)} | {ppl} | {growth:.3f} |")
    return "\n".join(lines) + "\n"
