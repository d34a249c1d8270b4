"""Average effects over many facts (paper Fig. 2): trace each fact the model knows, group tokens, average.

Per-fact results are appended to `facts.jsonl` as they finish, so an interrupted run resumes where it stopped;
the summary (`summary.json`, `summary.npz`, and the Fig. 2 plot) is rewritten atomically at the end.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_write_bytes, atomic_write_text
from ..models.lm import LM
from ..plots import CATEGORIES, plot_average_effects
from .causal import corrupt_and_clean, noise_std, restore
from .schedule import KINDS


@dataclasses.dataclass
class DatasetTrace:
    """Averages over the facts the model answers correctly: AIE [6 categories, L] per kind, and the ATE."""

    kinds: tuple[str, ...]
    n_facts: int
    n_correct: int
    aie: dict[str, np.ndarray]
    counts: dict[str, list[int]]  # facts contributing to each category
    ate: float
    low: float
    high: float
    noise_std: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "kinds": list(self.kinds),
            "categories": list(CATEGORIES),
            "n_facts": self.n_facts,
            "n_correct": self.n_correct,
            "aie": {k: v.tolist() for k, v in self.aie.items()},
            "counts": self.counts,
            "ate": self.ate,
            "mean_low_score": self.low,
            "mean_high_score": self.high,
            "noise_std": self.noise_std,
        }


def token_categories(n_tokens: int, span: tuple[int, int]) -> list[list[int]]:
    """Token indices of the six Fig. 2 categories; a category may be empty (e.g. no middle subject tokens)."""
    start, end = span
    return [
        [start],
        list(range(start + 1, end - 1)),
        [end - 1],
        [end] if end < n_tokens - 1 else [],
        list(range(end + 1, n_tokens - 1)),
        [n_tokens - 1],
    ]


def answers_correctly(lm: LM, prompt: str, attribute: str) -> tuple[bool, int]:
    """Whether the model's top next token is the first token of " " + attribute, and that token's id."""
    target = lm.tokenizer(" " + attribute.strip(), add_special_tokens=False)["input_ids"][0]
    from ..models.forward import forward

    ids = np.asarray(lm.tokenizer(prompt)["input_ids"])[None]
    top = int(np.asarray(forward(lm, ids, logits_at="last").logits[0, -1]).argmax())
    return top == target, int(target)


def _read_done(path: Path) -> dict[int, dict]:
    done: dict[int, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by an interruption: redo that fact
                continue
            done[record["index"]] = record
    return done


def _append(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def summarise(records: Iterable[dict], kinds: Sequence[str], n_layers: int, noise: float) -> DatasetTrace:
    """Average the per-fact records (correct facts only) into a DatasetTrace."""
    records = list(records)
    correct = [r for r in records if r["correct"]]
    aie, counts = {}, {}
    for kind in kinds:
        sums = np.zeros((len(CATEGORIES), n_layers))
        count = [0] * len(CATEGORIES)
        for r in correct:
            ie = np.asarray(r["scores"][kind]) - r["low"]
            for c, tokens in enumerate(token_categories(len(ie), tuple(r["subject_range"]))):
                if tokens:
                    sums[c] += ie[tokens].mean(axis=0)
                    count[c] += 1
        aie[kind] = sums / np.maximum(count, 1)[:, None]
        counts[kind] = count
    mean = lambda key: float(np.mean([r[key] for r in correct])) if correct else float("nan")  # noqa: E731
    return DatasetTrace(
        kinds=tuple(kinds),
        n_facts=len(records),
        n_correct=len(correct),
        aie=aie,
        counts=counts,
        ate=mean("high") - mean("low") if correct else float("nan"),
        low=mean("low"),
        high=mean("high"),
        noise_std=noise,
    )


def trace_dataset(
    lm: LM,
    facts: Sequence[dict],
    kinds: Sequence[str] = KINDS,
    *,
    samples: int = 10,
    noise: str | float = "s3",
    window: int = 10,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    progress: bool = True,
) -> DatasetTrace:
    """Trace every fact ({"prompt", "subject", "attribute"}) the model answers correctly and average the effects.

    With `out`, per-fact results go to out/facts.jsonl as they finish (a rerun skips facts already there) and
    the summary to out/summary.json, out/summary.npz and out/average_effects.{png,pdf}.
    """
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"kinds {list(kinds)}: each must be one of {', '.join(KINDS)}")
    for i, fact in enumerate(facts):
        missing = [k for k in ("prompt", "subject", "attribute") if k not in fact]
        if missing:
            raise ValueError(f"fact {i} has no field {missing[0]!r}; facts need prompt, subject and attribute")
    if isinstance(noise, str):
        if not (noise.startswith("s") and noise[1:].replace(".", "", 1).isdigit()):
            raise ValueError(f"noise={noise!r}; accepted: 's3' or a float")
        scale = float(noise[1:]) * noise_std(lm, [f["subject"] for f in facts])
    else:
        scale = float(noise)
    folder = Path(out) if out is not None else None
    done: dict[int, dict] = {}
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        done = _read_done(folder / "facts.jsonl")
    from tqdm.auto import tqdm

    records = []
    for i, fact in enumerate(tqdm(facts, desc="tracing facts", disable=not progress)):
        if i in done and set(kinds) <= set(done[i].get("scores", {})):
            records.append(done[i])
            continue
        correct, target = answers_correctly(lm, fact["prompt"], fact["attribute"])
        record: dict[str, Any] = {"index": i, "prompt": fact["prompt"], "subject": fact["subject"], "correct": correct}
        if correct:
            runs = corrupt_and_clean(
                lm, fact["prompt"], fact["subject"], samples=samples, noise=scale, seed=seed, answer=target
            )
            record |= {"low": runs.low, "high": runs.high, "subject_range": list(runs.span), "scores": {}}
            for kind in kinds:
                record["scores"][kind] = restore(lm, runs, kind, window=window).scores.tolist()
        if folder is not None:
            _append(folder / "facts.jsonl", record)
        records.append(record)
    summary = summarise(records, kinds, lm.config.n_layers, scale)
    if folder is not None:
        atomic_write_text(folder / "summary.json", json.dumps(summary.to_dict(), indent=2))
        buf = _npz({f"aie_{k}": v for k, v in summary.aie.items()})
        atomic_write_bytes(folder / "summary.npz", buf)
        plot_average_effects(summary.aie, folder / "average_effects.png", folder / "average_effects.pdf")
    return summary


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()
