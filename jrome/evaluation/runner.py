"""The evaluation runner, as the original's `evaluate.py` and `summarize.py`: edit each case from the unedited
model, score it before and after, append the per-case record, and summarise per-case means over the cases.

Interrupted runs resume where they stopped: finished cases are read back, not redone, and the method's
context (hyperparameters, context templates) is read from the run's context.json.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..editing.undo import RankOne
from ..files import append_jsonl, atomic_write_text, check_settings, json_safe, read_jsonl, setting_diffs
from ..models.lm import LM
from ..views import Summary
from .consistency import References, load_references
from .datasets import EditCase, read_cases, resolve_dataset
from .fluency import MAX_OUT_LEN, generate_texts, generation_entropy
from .methods import CONTEXT_FILE, get_method
from .metrics import case_probabilities, counterfact_case_scores, zsre_case_scores

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


def score_cases(
    lm: LM,
    cases: Sequence[EditCase],
    max_out_len: int,
    seed: int,
    references: References | None,
    edits: Sequence[RankOne | None] | None = None,
) -> list[dict[str, Any]]:
    """Every metric each case's dataset defines, with the raw numbers they come from (NLLs or token hits,
    generated texts); case i on lm edited by edits[i] (None: lm itself). The probability metrics of all cases
    run in shared forwards (the edits as per-row interventions); each case's generations on its edited model."""
    edits = [None] * len(cases) if edits is None else list(edits)
    out: list[dict[str, Any]] = []
    for case, raw, e in zip(cases, case_probabilities(lm, cases, edits), edits, strict=True):
        if case.dataset == "zsre":
            out.append({"correct": raw, **zsre_case_scores(raw)})
            continue
        scores: dict[str, Any] = {"nll": raw, **counterfact_case_scores(raw)}
        if max_out_len and case.generation_prompts:
            case_seed = int(np.random.SeedSequence([seed, case.case_id]).generate_state(1)[0])
            edited = lm if e is None else e.apply(lm)
            texts = generate_texts(edited, case.generation_prompts, max_out_len, seed=case_seed)
            scores["texts"] = texts
            scores["generation_entropy"] = generation_entropy(texts)
            if references is not None:
                scores["reference_score"] = references.score(texts, case.relation_id, case.target_new_id)
        out.append(scores)
    return out


def harmonic_mean(values: list[float]) -> float:
    """scipy's hmean for non-negative values: 0 if any is 0."""
    return 0.0 if min(values) == 0 else len(values) / sum(1 / v for v in values)


def summarise(records: list[dict], dataset: str) -> dict[str, Any]:
    """summarize.py: each column's mean over cases of the per-case values, with a 95% interval (normal
    approximation), before and after; S is the harmonic mean of the three success rates' means."""
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
    order = ["S", *COLUMNS[dataset]]
    out: dict[str, Any] = {"n": len(records), "metrics": {c: metrics[c] for c in order if c in metrics}}
    for key in ("edit", "score"):
        out[f"seconds_{key}"] = float(np.mean([r["seconds"][key] for r in records])) if records else float("nan")
    return out


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
    return "\n".join(lines) + "\n"


def _generation_setup(
    cases: list[EditCase], max_out_len: int, download: bool = False
) -> tuple[References | None, list[str]]:
    """The reference texts for RS if this run computes it, and notes on what generation metrics are skipped."""
    if not cases or cases[0].dataset != "counterfact":
        return None, []
    if not max_out_len:
        return None, ["GE and RS not computed: max_out_len=0"]
    if not any(c.generation_prompts for c in cases):
        return None, [
            "GE and RS not computed: these records have no generation_prompts (the original CounterFact format has them)"
        ]
    if not all(c.relation_id and c.target_new_id for c in cases):
        return None, ["RS not computed: these records have no requested_rewrite.relation_id or target_new.id"]
    try:
        return load_references(download=download), []
    except FileNotFoundError as err:
        return None, [f"RS not computed: {err}"]


def pre_scores(folder: str | os.PathLike, lm: LM, settings: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The pre-edit scores of an earlier run, by case id, after checking that it scored the same model with the
    same settings (its numbers are then exactly the ones this run would compute)."""
    folder = Path(folder)
    if not ((folder / CONTEXT_FILE).is_file() and (folder / "settings.json").is_file()):
        raise ValueError(f"pre_from {folder} is not an evaluation folder (it has no context.json and settings.json)")
    saved = json.loads((folder / "settings.json").read_text())
    saved["model"] = json.loads((folder / CONTEXT_FILE).read_text())["model"]
    diffs = setting_diffs(saved, settings | {"model": lm.name})
    if diffs:
        raise ValueError(
            f"pre_from {folder} scored with other settings ({'; '.join(diffs)}); its pre-edit scores are not this run's"
        )
    return {cid: r["pre"] for cid, r in read_jsonl(folder / "cases.jsonl", "case_id", rewrite=False).items()}


def run_eval(
    lm: LM,
    method: str,
    dataset: str | os.PathLike,
    n: int | None = None,
    out: str | os.PathLike | None = None,
    *,
    hparams: dict | None = None,
    max_out_len: int = MAX_OUT_LEN,
    seed: int = 0,
    pre_from: str | os.PathLike | None = None,
    batch: int = 8,
    download: bool | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate `method` on the first n cases of `dataset`; per-case results go to out/cases.jsonl as they finish.

    max_out_len: tokens of each generation, prompt included (the original's 100); 0 skips GE and RS.
    pre_from: the folder of an earlier run on the same model, dataset, max_out_len and seed (any method; `none`
    is the cheapest) whose pre-edit scores are read instead of computed again, for the cases it has.
    batch: cases edited together (ROME, r-ROME and MEMIT search their v* as one program: faster, the same numbers
    to float32 rounding); each case is still edited from the unedited model. A case's edit seconds are its share
    of the batch's common work plus its own.
    download: whether a published dataset, RS file, key statistics file or corpus that is neither in $JROME_DATA_DIR
    nor cached is fetched (as jrome.data.fetch; None: unless offline). The dataset file read is printed and recorded
    (settings.json, summary.json).
    """
    editor = get_method(method)
    if n is not None and n < 1:
        raise ValueError(f"n={n} is not a number of cases; accepted: n >= 1, or None for all")
    if batch < 1:
        raise ValueError(f"batch={batch} is not a number of cases; accepted: batch >= 1")
    if max_out_len < 0:
        raise ValueError(f"max_out_len must be 0 (no generation metrics) or a number of tokens, got {max_out_len}")
    kind, path = resolve_dataset(dataset, download=download)
    cases = read_cases(kind, path)
    if progress:
        print(f"dataset {dataset}: {len(cases)} cases from {path}")
    notes = []
    if n is not None and n > len(cases):
        notes.append(f"n={n} is larger than the dataset ({len(cases)} cases); running all {len(cases)}")
        print(notes[-1])
    cases = cases[:n]
    folder = Path(out) if out is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    settings = {"dataset": str(dataset), "dataset_file": path.name, "max_out_len": max_out_len, "seed": seed}
    reused = {} if pre_from is None else pre_scores(pre_from, lm, settings)
    if folder is not None:  # what decides a case's numbers besides the method's context (checked by prepare)
        check_settings(folder, settings, "cases.jsonl")
    ctx = editor.prepare(lm, folder, dict(hparams or {}), seed, progress, download)
    references, generation_notes = _generation_setup(cases, max_out_len, download)
    notes += generation_notes
    done = read_jsonl(folder / "cases.jsonl", "case_id") if folder is not None else {}
    from tqdm.auto import tqdm

    records = {cid: r for cid, r in done.items() if cid in {c.case_id for c in cases}}
    todo = [c for c in cases if c.case_id not in done]
    with tqdm(total=len(cases), initial=len(records), desc=f"{method} on {cases[0].dataset if cases else dataset}", disable=not progress) as bar:  # fmt: skip

        def finish(case: EditCase, pre: dict, post: dict, edit_seconds: float, score_seconds: float) -> None:
            record = {
                "case_id": case.case_id, "request": dataclasses.asdict(case.request), "pre": pre, "post": post,
                "seconds": {"edit": edit_seconds, "score": score_seconds},
            }  # fmt: skip
            if folder is not None:
                append_jsonl(folder / "cases.jsonl", record)
            records[case.case_id] = record
            bar.update()

        for first in range(0, len(todo), batch):
            chunk = todo[first : first + batch]
            start = time.perf_counter()
            fresh = [c for c in chunk if c.case_id not in reused]
            new = iter(score_cases(lm, fresh, max_out_len, seed, references) if fresh else [])
            pres = [reused[c.case_id] if c.case_id in reused else next(new) for c in chunk]
            scored = (time.perf_counter() - start) / len(chunk)
            start = time.perf_counter()
            models = editor.edit_each(lm, chunk, ctx)
            shared = (time.perf_counter() - start) / len(chunk)
            factored = []  # rank-one edits: scored together after the loop, as rows of shared forwards
            for case, pre in zip(chunk, pres, strict=True):
                start = time.perf_counter()
                edited = next(models)
                edit_seconds = shared + time.perf_counter() - start
                if isinstance(edited, RankOne):
                    factored.append((case, pre, edited, edit_seconds))
                    continue
                start = time.perf_counter()
                post = pre if edited is lm else score_cases(edited, [case], max_out_len, seed, references)[0]
                finish(case, pre, post, edit_seconds, scored + time.perf_counter() - start)
            if factored:
                start = time.perf_counter()
                edits = [e for _, _, e, _ in factored]
                posts = score_cases(lm, [c for c, *_ in factored], max_out_len, seed, references, edits)
                each = (time.perf_counter() - start) / len(factored)
                for (case, pre, _, edit_seconds), post in zip(factored, posts, strict=True):
                    finish(case, pre, post, edit_seconds, scored + each)
    records = [records[c.case_id] for c in cases]
    if reused:
        notes.append(f"pre-edit scores of {sum(c.case_id in reused for c in cases)} cases read from {pre_from}")
    kind = cases[0].dataset if cases else "counterfact"
    summary = Summary(summarise(records, kind) | {
        "method": method, "dataset": str(dataset), "dataset_file": str(path), "model": lm.name,
        "hparams": None if ctx is None else json.loads(json.dumps(ctx.hparams.to_dict())), "notes": notes,
    })  # fmt: skip
    if folder is not None:
        atomic_write_text(folder / "summary.json", json.dumps(json_safe(summary), indent=2))
        atomic_write_text(folder / "summary.md", markdown_table(summary, f"{method} on {dataset} ({lm.name})"))
    return summary
