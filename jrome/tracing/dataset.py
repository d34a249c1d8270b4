"""Average effects over many facts (paper Figs. 2 and 3): trace each fact the model knows, pool tokens, average.

The pooling is the original's (notebooks/average_causal_effects.ipynb): per kind and token category, the
score rows of every correctly answered fact are pooled (middle subject tokens and further tokens row by row,
so a fact with more of them weighs more), averaged, and the mean corrupted score over those facts is
subtracted. Per-fact results are appended to `facts.jsonl` as they finish, so an interrupted run resumes
where it stopped (only with the same settings, kept in `settings.json`); the summary (`summary.json`,
`summary.npz` and the plots) is rewritten atomically at the end.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..files import append_jsonl, atomic_write_bytes, atomic_write_text, check_settings, read_jsonl
from ..models.lm import LM
from ..plots import CATEGORIES, plot_average_effects, plot_severed_effects
from .causal import SEVER, corrupt_and_clean, noise_scale, restore
from .schedule import KINDS

NO_CORRECT = "no fact was answered correctly, so there is nothing to average"


@dataclasses.dataclass
class DatasetTrace:
    """Averages over the facts the model answers correctly: AIE [6 categories, L] per trace, and the ATE.

    aie / std: mean and standard deviation (ddof 0) of the pooled score rows, the mean is minus the mean
    corrupted score; counts: rows pooled per category. Traces are the kinds, then "severed_mlp" /
    "severed_attn" (hidden states with that module severed). NaN where nothing was pooled.
    """

    kinds: tuple[str, ...]
    n_facts: int
    n_correct: int
    aie: dict[str, np.ndarray]
    std: dict[str, np.ndarray]
    counts: dict[str, list[int]]
    ate: float
    low: float
    high: float
    noise_std: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields; NaN (nothing to average) becomes null."""
        d = {
            "kinds": list(self.kinds),
            "categories": list(CATEGORIES),
            "n_facts": self.n_facts,
            "n_correct": self.n_correct,
            "aie": {k: _json_floats(v) for k, v in self.aie.items()},
            "std": {k: _json_floats(v) for k, v in self.std.items()},
            "counts": self.counts,
            "ate": _json_floats(self.ate),
            "mean_low_score": _json_floats(self.low),
            "mean_high_score": _json_floats(self.high),
            "noise_std": self.noise_std,
        }
        return d | ({"note": NO_CORRECT} if self.n_correct == 0 else {})


def _json_floats(x: Any) -> Any:
    """Floats and nested lists of them, with NaN as None (JSON has no NaN)."""
    if np.ndim(x) == 0:
        return None if np.isnan(x) else float(x)
    return [_json_floats(v) for v in x]


def trace_names(kinds: Sequence[str], sever: Sequence[str] = ()) -> tuple[str, ...]:
    """The traces a run records per fact: its kinds, then "severed_<module>" for each severed module."""
    return tuple(kinds) + tuple(f"severed_{m}" for m in sever)


def token_categories(n_tokens: int, span: tuple[int, int]) -> list[list[int]]:
    """Token rows each Fig. 2 category pools for one fact, as the original notebook reads them.

    First subject token, middle subject tokens (all between first and last), last subject token, first
    subsequent token (the token after the subject, counted even when it is the last token), further tokens
    (between it and the last token), last token. A one-token subject is both first and last subject token;
    a subject that ends the prompt has no first subsequent token (the original fails there).
    """
    start, end = span
    last = n_tokens - 1
    return [
        [start],
        list(range(start + 1, end - 1)),
        [end - 1],
        [end] if end < n_tokens else [],
        list(range(end + 1, last)),
        [last],
    ]


def summarise(records: Iterable[dict], names: Sequence[str], n_layers: int, noise: float) -> DatasetTrace:
    """Average the per-fact records (correct facts only) into a DatasetTrace, pooling rows as the original does."""
    records = list(records)
    correct = [r for r in records if r["correct"]]
    low = float(np.mean([r["low"] for r in correct])) if correct else float("nan")
    high = float(np.mean([r["high"] for r in correct])) if correct else float("nan")
    aie, std, counts = {}, {}, {}
    for name in names:
        pooled: list[list[np.ndarray]] = [[] for _ in CATEGORIES]
        for r in correct:
            scores = np.asarray(r["scores"][name], np.float64)
            for c, rows in enumerate(token_categories(len(scores), tuple(r["subject_range"]))):
                pooled[c].extend(scores[rows])
        nan_row = np.full(n_layers, np.nan)
        aie[name] = np.stack([np.mean(p, axis=0) - low if p else nan_row for p in pooled])
        std[name] = np.stack([np.std(p, axis=0) if p else nan_row for p in pooled])
        counts[name] = [len(p) for p in pooled]
    return DatasetTrace(
        kinds=tuple(names),
        n_facts=len(records),
        n_correct=len(correct),
        aie=aie,
        std=std,
        counts=counts,
        ate=high - low,
        low=low,
        high=high,
        noise_std=noise,
    )


def answers_correctly(lm: LM, prompt: str, attribute: str) -> tuple[bool, int]:
    """Whether the model's top next token, decoded and stripped, is the attribute (the original's test); its id."""
    from ..models.forward import forward

    ids = np.asarray(lm.tokenizer(prompt)["input_ids"])[None]
    top = int(np.asarray(forward(lm, ids, logits_at="last").logits[0, -1]).argmax())
    return lm.tokenizer.decode([top]).strip() == attribute.strip(), top


def _read_done(path: Path, facts: Sequence[dict]) -> dict[int, dict]:
    """Finished records by fact index, checked against the facts given."""
    done = read_jsonl(path, "index")
    for i, record in done.items():
        if i < len(facts) and (record["prompt"], record["subject"]) != (facts[i]["prompt"], facts[i]["subject"]):
            raise ValueError(
                f"{path} has fact {i} as {record['prompt']!r}, but the facts given have {facts[i]['prompt']!r}; "
                f"to start fresh, use a new folder or delete {path.parent}"
            )
    return done


def trace_dataset(
    lm: LM,
    facts: Sequence[dict],
    kinds: Sequence[str] = KINDS,
    *,
    samples: int = 10,
    noise: str | float = "s3",
    window: int = 10,
    seed: int = 1,
    sever: str | Sequence[str] | None = None,
    noise_subjects: Sequence[str] | None = None,
    out: str | os.PathLike | None = None,
    progress: bool = True,
) -> DatasetTrace:
    """Trace every fact ({"prompt", "subject", "attribute"}) the model answers correctly and average the effects.

    noise: "s3" is 3 x the std of the token embeddings of `noise_subjects` (default: all of known_1000's
    subjects, as the original), or a float scale. sever: "mlp" and/or "attn" also traces hidden states with
    that module severed (paper Fig. 3), averaged like the kinds under "severed_<module>". With `out`,
    per-fact results go to out/facts.jsonl as they finish (a rerun with the same settings skips facts already
    there) and the summary to out/summary.json, out/summary.npz and the plots.
    """
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"kinds {list(kinds)}: each must be one of {', '.join(KINDS)}")
    severed = (sever,) if isinstance(sever, str) else tuple(sever or ())
    if any(m not in SEVER for m in severed):
        raise ValueError(f"sever={sever!r}; accepted: 'mlp', 'attn', or both")
    for i, fact in enumerate(facts):
        missing = [k for k in ("prompt", "subject", "attribute") if k not in fact]
        if missing:
            raise ValueError(f"fact {i} has no field {missing[0]!r}; facts need prompt, subject and attribute")
    scale = noise_scale(lm, noise, noise_subjects)
    names = trace_names(kinds, severed)
    folder = Path(out) if out is not None else None
    done: dict[int, dict] = {}
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        settings = {"model": lm.name, "noise_std": scale, "samples": samples, "window": window, "seed": seed,
                    "kinds": list(kinds), "sever": list(severed)}  # fmt: skip
        check_settings(folder, settings, "facts.jsonl")
        done = _read_done(folder / "facts.jsonl", facts)
    from tqdm.auto import tqdm

    records = []
    for i, fact in enumerate(tqdm(facts, desc="tracing facts", disable=not progress)):
        if i in done:
            records.append(done[i])
            continue
        correct, top = answers_correctly(lm, fact["prompt"], fact["attribute"])
        record: dict[str, Any] = {
            "index": i, "prompt": fact["prompt"], "subject": fact["subject"], "attribute": fact["attribute"],
            "answer": lm.tokenizer.decode([top]), "correct": correct,
        }  # fmt: skip
        if correct:
            runs = corrupt_and_clean(
                lm, fact["prompt"], fact["subject"], samples=samples, noise=scale, seed=seed, answer=top
            )
            record |= {"low": runs.low, "high": runs.high, "subject_range": list(runs.span), "scores": {}}
            for name in names:
                module = name.removeprefix("severed_") if name.startswith("severed_") else None
                kind = "hidden" if module else name
                record["scores"][name] = restore(lm, runs, kind, window=window, sever=module).scores.tolist()
        if folder is not None:
            append_jsonl(folder / "facts.jsonl", record)
        records.append(record)
    summary = summarise(records, names, lm.config.n_layers, scale)
    if folder is not None:
        atomic_write_text(folder / "summary.json", json.dumps(summary.to_dict(), indent=2))
        buf = io.BytesIO()
        arrays = {f"aie_{k}": v for k, v in summary.aie.items()} | {f"std_{k}": v for k, v in summary.std.items()}
        np.savez(buf, **arrays)
        atomic_write_bytes(folder / "summary.npz", buf.getvalue())
        if summary.n_correct:
            plot_average_effects(summary.aie, folder / "average_effects.png", folder / "average_effects.pdf",
                                 std=summary.std, n=summary.n_correct)  # fmt: skip
            if severed:
                plot_severed_effects(summary.aie, folder / "severed_effects.png", folder / "severed_effects.pdf")
    return summary
