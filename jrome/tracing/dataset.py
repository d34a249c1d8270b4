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

from ..data import check_facts
from ..files import append_jsonl, atomic_write_bytes, atomic_write_text, check_settings, read_jsonl
from ..models.lm import LM
from ..plots import CATEGORIES, plot_average_effects, plot_severed_effects
from ..prediction import next_tokens
from .budget import check_budget, facts_per_call, lanes_per_call
from .causal import check_restoration, restore_many
from .runs import Corruption, corruption, run_facts
from .schedule import KINDS, SEVER, bucket, bucket_rows

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
    noise_scale: float

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
            "noise_scale": self.noise_scale,
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
        noise_scale=noise,
    )


def _by_bucket(lengths: Sequence[int]) -> dict[int, list[int]]:
    """Indices grouped by the length bucket of their prompt, in order."""
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(bucket(n), []).append(i)
    return dict(sorted(groups.items()))


def _chunks(items: Sequence[int], size: int) -> list[list[int]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


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


def _check_request(facts: Sequence[dict], kinds: Sequence[str], sever: str | Sequence[str] | None) -> tuple[str, ...]:
    """The severed modules asked for; one line naming what is wrong with facts, kinds or sever, before any work."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"kinds {list(kinds)}: each must be one of {', '.join(KINDS)}")
    severed = (sever,) if isinstance(sever, str) else tuple(sever or ())
    if any(m not in SEVER for m in severed):
        raise ValueError(f"sever={sever!r}; accepted: 'mlp', 'attn', or both")
    check_facts(facts)
    return severed


def _trace_batch(lm: LM, batch: list[dict], plan: Batching) -> list[dict]:
    """The records of one batch of correctly answered facts with their traces: the runs and every trace asked
    for, one program call each."""
    runs = run_facts(lm, [r["prompt"] for r in batch], [r["subject"] for r in batch], plan.how,
                     answers=[r.pop("top") for r in batch], slots=plan.per_call, n_cols=plan.n_cols)  # fmt: skip
    for record, r in zip(batch, runs, strict=True):
        record |= {"low": r.low_score, "high": r.high_score, "subject_range": list(r.subject_range), "scores": {}}
    for name in plan.names:
        module = name.removeprefix("severed_") if name.startswith("severed_") else None
        grids = restore_many(lm, runs, "hidden" if module else name, window=plan.window, sever=module,
                             n_rows=plan.n_rows, chunk=plan.chunk)  # fmt: skip
        for record, grid in zip(batch, grids, strict=True):
            record["scores"][name] = grid.tolist()
    return batch


@dataclasses.dataclass(frozen=True)
class Batching:
    """How a dataset's facts of one length bucket are traced: prompts per call and the program's rows."""

    how: Corruption
    names: tuple[str, ...]
    window: int
    n_cols: int
    per_call: int
    n_rows: int
    chunk: int | None


def _batching(
    lm: LM, how: Corruption, names, window: int, n_cols: int, n_facts: int, max_bytes: int | None
) -> Batching:
    """Prompts per call for n_facts facts of n_cols columns: as many as the budget holds, in calls of equal size."""
    most = facts_per_call(lm, n_cols=n_cols, samples=how.samples, budget=max_bytes)
    per_call = -(-n_facts // -(-n_facts // most))
    rows, width = bucket_rows(n_cols)
    chunk = lanes_per_call(lm, n_rows=per_call * rows, width=width, n_cols=n_cols, samples=how.samples,
                           budget=max_bytes)  # fmt: skip
    return Batching(how, tuple(names), window, n_cols, per_call, per_call * rows, chunk)


@dataclasses.dataclass
class _Log:
    """Finished records by fact index; each is appended to folder/facts.jsonl as it comes, when there is a folder."""

    records: dict[int, dict]
    folder: Path | None
    bar: Any

    def add(self, record: dict) -> None:
        self.records[record["index"]] = record
        if self.folder is not None:
            append_jsonl(self.folder / "facts.jsonl", record)
        self.bar.update()


def _answer_records(lm: LM, facts: Sequence[dict], todo: list[int]) -> list[dict]:
    """A record per fact of `todo`: the model's answer (its top token, "top"), and whether it is the attribute."""
    tops = next_tokens(lm, [facts[i]["prompt"] for i in todo]).top[:, 0] if todo else []
    records = []
    for i, top in zip(todo, tops, strict=True):
        answer = lm.tokenizer.decode([int(top)])
        records.append({"index": i, "prompt": facts[i]["prompt"], "subject": facts[i]["subject"],
                        "attribute": facts[i]["attribute"], "answer": answer, "top": int(top),
                        "correct": answer.strip() == facts[i]["attribute"].strip()})  # fmt: skip
    return records


def _trace_correct(lm: LM, correct: list[dict], log: _Log, how: Corruption, names, window, max_bytes) -> None:
    """Trace the correctly answered facts, a length bucket at a time, batches of equal size, logging each batch."""
    lengths = [len(lm.tokenizer(r["prompt"])["input_ids"]) for r in correct]
    for n_cols, members in _by_bucket(lengths).items():
        plan = _batching(lm, how, names, window, n_cols, len(members), max_bytes)
        for batch in _chunks(members, plan.per_call):
            for record in _trace_batch(lm, [correct[m] for m in batch], plan):
                log.add(record)


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
    max_batch_bytes: int | None = None,
    out: str | os.PathLike | None = None,
    progress: bool = True,
) -> DatasetTrace:
    """Trace every fact ({"prompt", "subject", "attribute"}) the model answers correctly and average the effects.

    noise: "s3" is 3 x the std of the token embeddings of `noise_subjects` (default: all of known_1000's
    subjects, as the original), or a float scale. sever: "mlp" and/or "attn" also traces hidden states with
    that module severed (paper Fig. 3), averaged like the kinds under "severed_<module>". Facts of a length
    bucket are traced together, as many per call as `max_batch_bytes` of device memory hold (default: half of
    what the parameters leave free). With `out`, each fact's record goes to out/facts.jsonl when its batch
    finishes (a rerun with the same settings skips facts already there) and the summary to out/summary.json,
    out/summary.npz and the plots.
    """
    severed = _check_request(facts, kinds, sever)
    check_restoration("hidden", window, None)
    check_budget(max_batch_bytes)
    how = corruption(lm, noise, samples=samples, seed=seed, noise_subjects=noise_subjects)
    names = trace_names(kinds, severed)
    folder = Path(out) if out is not None else None
    done: dict[int, dict] = {}
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        settings = {"model": lm.name, "noise_scale": how.scale, "samples": samples, "window": window, "seed": seed,
                    "kinds": list(kinds), "sever": list(severed)}  # fmt: skip
        check_settings(folder, settings, "facts.jsonl")
        done = _read_done(folder / "facts.jsonl", facts)
    from tqdm.auto import tqdm

    with tqdm(total=len(facts), initial=len(done), desc="tracing facts", disable=not progress) as bar:
        log = _Log(dict(done), folder, bar)
        answered = _answer_records(lm, facts, [i for i in range(len(facts)) if i not in done])
        for record in answered:
            if not record["correct"]:
                log.add({k: v for k, v in record.items() if k != "top"})
        correct = [r for r in answered if r["correct"]]
        _trace_correct(lm, correct, log, how, names, window, max_batch_bytes)
    return _summarise_and_write(lm, [log.records[i] for i in sorted(log.records)], names, how.scale, severed, folder)


def _summarise_and_write(lm: LM, records: list[dict], names, scale: float, severed, folder: Path | None):
    """The summary of the records, written to the folder (json, npz and plots) when there is one."""
    summary = summarise(records, names, lm.config.n_layers, scale)
    if folder is None:
        return summary
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
