"""Sequential ("lifelong") evaluation: chunks of cases applied one after another to the same model, as the
AlphaEdit authors' `evaluate.py` applies them, with a curve of how the model holds up as edits pile up.

The edits are the method's `Editor` folded over the chunks (`editing.sequential`). The run folder holds:

    state.npz      the editor state after the last finished chunk: an interrupted run resumes there
    chunks.jsonl   per chunk applied: the edits so far and its seconds
    curve.jsonl    per point (the unedited model, then after every chunk): perplexity on held-out WikiText-2, every
                   layer's MLP output kernel norm and the edit seconds so far; every `curve_every` chunks and after
                   the last, also the scores of the cases edited so far on the current model beside their unedited
                   scores (scoring them all is what grows with the edits: the health costs one short forward)
    cases.jsonl    per case, after the last chunk: its unedited and final scores
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..editing.sequential import EditorState, load_state, save_state
from ..files import append_jsonl, read_jsonl
from ..models.lm import LM
from .datasets import EditCase
from .health import health
from .protocols import Run
from .summary import SCORE_PARTS, column_stats


def checkpoint(run: Run, state: EditorState, cases: Sequence[EditCase], pres: list[dict], windows, seconds: float):
    """(the curve's point after state.edits edits, the posts of the cases edited so far on state.lm)."""
    start = time.perf_counter()
    done = cases[: state.edits]
    posts = run.score(state.lm, done)
    records = [{"pre": pre, "post": post} for pre, post in zip(pres[: state.edits], posts, strict=True)]
    point = {"edits": state.edits, "metrics": column_stats(records, done[0].dataset)} | health(state.lm, windows)
    return point | {"seconds_edit": seconds, "seconds_score": time.perf_counter() - start}, posts


def _health_point(lm: LM, edits: int, windows: np.ndarray | None, seconds: float) -> dict:
    """An unscored curve point: the model's perplexity and kernel norms after `edits` edits."""
    return {"edits": edits, "metrics": {}} | health(lm, windows) | {"seconds_edit": seconds}


def run_sequential(
    run: Run, cases: Sequence[EditCase], done: dict, num_edits: int, curve_every: int, windows: np.ndarray | None
) -> dict[int, dict]:
    """Apply the cases in chunks of num_edits, each on the model the chunks before produced; a curve point after every
    chunk, scored every curve_every chunks and after the last; score every case on the final model. Returns the new
    case records."""
    folder, editor = run.folder, run.ctx
    state = start = editor.start(run.lm)
    if folder is not None and (folder / "state.npz").is_file():
        state = load_state(folder / "state.npz", start)
    if state.edits > len(cases) or (state.edits % num_edits and state.edits != len(cases)):
        raise ValueError(f"{folder}/state.npz has {state.edits} edits: not a whole number of chunks of these cases")
    log = _Log(folder, start)
    pres = run.pre(cases)
    if 0 not in log.curve:
        log.add_point(_health_point(run.lm, 0, windows, 0.0))

    def add_point(state: EditorState) -> list[dict] | None:
        """Log the curve's point after this chunk: scored when due (returning the posts), else the health alone."""
        if state.edits == len(cases) or (state.edits // num_edits) % curve_every == 0:
            point, posts = checkpoint(run, state, cases, pres, windows, log.seconds())
        else:
            point, posts = _health_point(state.lm, state.edits, windows, log.seconds()), None
        log.add_point(point)
        return posts

    posts = add_point(state) if state.edits and state.edits not in log.curve else None  # interrupted before it
    chunks = range(state.edits, len(cases), num_edits)
    for first in tqdm(chunks, "sequential chunks", disable=not run.progress):
        start = time.perf_counter()
        state, _ = editor.step(state, [c.request for c in cases[first : first + num_edits]])
        log.add_chunk(state, time.perf_counter() - start)
        posts = add_point(state)  # the last chunk's point is always scored
    last = log.curve.get(len(cases), {}).get("seconds_score", 0.0) if posts is not None else 0.0
    return _finish(run, state, cases, done, pres, posts, log.seconds(), last / len(cases), num_edits)


def _finish(run, state, cases, done, pres, posts, seconds: float, scored: float, num_edits: int) -> dict[int, dict]:
    """The case records after the last chunk (posts: the final checkpoint's, when this call made it, in `scored`
    seconds per case; else they are scored here)."""
    missing = [i for i, c in enumerate(cases) if c.case_id not in done]
    if not missing:
        return {}
    start = time.perf_counter()
    if posts is None or len(posts) != len(cases):
        posts = dict(zip(missing, run.score(state.lm, [cases[i] for i in missing]), strict=True))
    score = (time.perf_counter() - start) / len(missing) + scored
    records = {}
    for i in missing:
        case = cases[i]
        records[case.case_id] = run.finish(case, pres[i], posts[i], seconds / len(cases), score, chunk=i // num_edits)
    return records


class _Log:
    """The run folder's chunk and curve logs (in memory only when there is no folder)."""

    def __init__(self, folder: Path | None, start: EditorState) -> None:
        self.folder, self.start = folder, start
        self.curve = read_jsonl(folder / "curve.jsonl", "edits") if folder is not None else {}
        self.chunks = read_jsonl(folder / "chunks.jsonl", "edits") if folder is not None else {}

    def seconds(self) -> float:
        return float(sum(c["seconds"] for c in self.chunks.values()))

    def add_chunk(self, state: EditorState, seconds: float) -> None:
        """Record a finished chunk: its state first (so a resumed run never repeats it), then its time."""
        record = {"edits": state.edits, "seconds": seconds}
        if self.folder is not None:
            save_state(self.folder / "state.npz", state, self.start)
            append_jsonl(self.folder / "chunks.jsonl", record)
        self.chunks[state.edits] = record

    def add_point(self, point: dict) -> None:
        if self.folder is not None:
            append_jsonl(self.folder / "curve.jsonl", point)
        self.curve[point["edits"]] = point


def curve_summary(folder: Path) -> dict[str, Any]:
    """{"curve": the checkpoints in order of edits} for a sequential run's summary."""
    curve = read_jsonl(folder / "curve.jsonl", "edits", rewrite=False)
    return {"curve": [curve[k] for k in sorted(curve)]}


def at_once_point(folder: str | Path) -> dict[str, Any]:
    """A batch-protocol run (num_edits > 1, not sequential) as one point: its chunk size, the mean over cases of the
    three success rates after the edit, and the mean perplexity of its chunks' edited models (chunks.jsonl)."""
    folder = Path(folder)
    summary = json.loads((folder / "summary.json").read_text())
    chunks = [json.loads(line) for line in (folder / "chunks.jsonl").read_text().splitlines() if line.strip()]
    point = {c: summary["metrics"][c]["post"]["mean"] for c in SCORE_PARTS["counterfact"]}
    ppl = [c["perplexity"] for c in chunks if c.get("perplexity") is not None]
    return point | {"edits": summary["protocol"]["num_edits"], "perplexity": float(np.mean(ppl)) if ppl else None}


def plot_runs(sequential: dict[str, str | Path], at_once: dict[str, str | Path], *paths: str | Path, title: str = ""):
    """docs/lifelong.png: the curves of sequential runs ({label: folder}) and the points of batch-protocol runs."""
    from ..plots import plot_lifelong

    curves = {label: curve_summary(Path(folder))["curve"] for label, folder in sequential.items()}
    points = {label: at_once_point(folder) for label, folder in at_once.items()}
    return plot_lifelong(curves, *paths, at_once=points, title=title)
