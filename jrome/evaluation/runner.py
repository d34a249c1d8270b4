"""The evaluation runner: edit each case from the unedited model, score it before and after, append the
result, and summarise. Interrupted runs resume where they stopped (finished cases are read back, not redone).

Methods share one signature, `method(lm, case, context) -> edited LM`, so a new method is one function in
METHODS. Edits are pure, so "restoring" the model between cases is keeping the original value.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..editing import KeyStats, MemitHparams, RomeHparams, edit, hparams_for, key_statistics, memit
from ..editing.baselines import FTHparams, finetune
from ..editing.rome import context_templates
from ..generation import generate
from ..io import atomic_write_text
from ..models.lm import LM
from .datasets import EditCase, load_dataset
from .metrics import counterfact_scores, ngram_entropy, tfidf_similarity, zsre_scores


@dataclasses.dataclass
class MethodContext:
    """What methods need besides the model and the case, prepared once per run."""

    rome: RomeHparams
    stats: KeyStats | None
    ft: FTHparams
    ftl: FTHparams
    memit: MemitHparams | None = None
    memit_stats: dict[int, KeyStats] | None = None


Method = Callable[[LM, EditCase, MethodContext], LM]


def _rome(lm: LM, case: EditCase, ctx: MethodContext) -> LM:
    return edit(lm, case.request, ctx.rome, stats=ctx.stats)[0]


METHODS: dict[str, Method] = {
    "none": lambda lm, case, ctx: lm,
    "rome": _rome,
    "ft": lambda lm, case, ctx: finetune(lm, case.request, ctx.ft)[0],
    "ft-l": lambda lm, case, ctx: finetune(lm, case.request, ctx.ftl)[0],
    "memit": lambda lm, case, ctx: memit.edit(lm, case.request, ctx.memit, ctx.memit_stats)[0],
}


def prepare(lm: LM, method: str, out: Path | None, hparams: dict | None, seed: int) -> MethodContext:
    """Hyperparameters, context templates (generated once, saved with the run so a resumed run reuses them), stats."""
    hp = hparams_for(lm.name, lm.config.family).override(**(hparams or {}))
    if hp.layer is None:
        raise ValueError(f"no editing layer for {lm.name!r}: pass hparams={{'layer': N}}")
    saved = out / "context.json" if out is not None else None
    if saved is not None and saved.is_file():
        hp = RomeHparams.from_dict(json.loads(saved.read_text())["rome"])
    elif method in ("rome", "memit"):
        hp = hp.override(context_templates=list(context_templates(lm, hp, seed)))
    if saved is not None and not saved.is_file():
        atomic_write_text(saved, json.dumps({"method": method, "model": lm.name, "rome": hp.to_dict()}, indent=2))
    stats = None
    if method == "rome" and hp.mom2_adjustment:
        stats = key_statistics(lm, hp.layer, hp.mom2_corpus, hp.mom2_n_tokens)[hp.layer]
    ctx = MethodContext(hp, stats, FTHparams(hp.layer), FTHparams(hp.layer, linf_bound=5e-4))
    if method == "memit":
        mhp = hparams_for(lm.name, lm.config.family, "memit").override(
            context_templates=list(hp.context_templates or context_templates(lm, hp, seed))
        )
        ctx.memit, ctx.memit_stats = mhp, key_statistics(lm, mhp.layers, mhp.mom2_corpus, mhp.mom2_n_tokens)
    return ctx


def score_case(lm: LM, case: EditCase, generation_tokens: int, seed: int) -> dict[str, float]:
    """Every metric the case's dataset defines, for this model."""
    if case.dataset == "zsre":
        return zsre_scores(lm, case)
    scores = counterfact_scores(lm, case)
    if generation_tokens and case.generation_prompts:
        texts = generate(lm, list(case.generation_prompts), generation_tokens, temperature=1.0, top_k=5, seed=seed)
        scores["generation_entropy"] = float(np.mean([ngram_entropy(t) for t in texts]))
        if case.reference_texts:
            scores["reference_score"] = tfidf_similarity(texts, case.reference_texts)
    return scores


def _read_done(path: Path) -> dict[int, dict]:
    done = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # cut short by an interruption: that case is redone
                continue
            done[record["case_id"]] = record
    return done


def summarise(records: list[dict]) -> dict[str, Any]:
    """Mean and 95% interval (normal approximation) of every metric, before and after the edit."""
    out: dict[str, Any] = {"n": len(records), "metrics": {}}
    for when in ("pre", "post"):
        for metric in sorted({m for r in records for m in r[when]}):
            values = np.array([r[when][metric] for r in records if metric in r[when]], np.float64)
            half = 1.96 * values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
            out["metrics"].setdefault(metric, {})[when] = {"mean": float(values.mean()), "ci95": half, "n": len(values)}
    for key in ("edit", "score"):
        out[f"seconds_{key}"] = float(np.mean([r["seconds"][key] for r in records])) if records else float("nan")
    return out


def markdown_table(summary: dict[str, Any], title: str) -> str:
    """The summary as a Markdown table: metric | before | after (mean ± 95% interval)."""

    def cell(m: dict | None) -> str:
        return "–" if m is None else f"{m['mean']:.3f} ± {m['ci95']:.3f}"

    lines = [f"### {title}", "", f"{summary['n']} cases", "", "| metric | before | after |", "|---|---|---|"]
    for metric, values in summary["metrics"].items():
        lines.append(f"| {metric} | {cell(values.get('pre'))} | {cell(values.get('post'))} |")
    return "\n".join(lines) + "\n"


def run_eval(
    lm: LM,
    method: str,
    dataset: str | os.PathLike,
    n: int | None = None,
    out: str | os.PathLike | None = None,
    *,
    hparams: dict | None = None,
    generation_tokens: int = 50,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate `method` on the first n cases of `dataset`; per-case results go to out/cases.jsonl as they finish."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known methods: {', '.join(METHODS)}")
    cases = load_dataset(dataset)
    note = None
    if n is not None and n > len(cases):
        note = f"n={n} is larger than the dataset ({len(cases)} cases); running all {len(cases)}"
        print(note)
    cases = cases[:n]
    folder = Path(out) if out is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    ctx = prepare(lm, method, folder, hparams, seed)
    done = _read_done(folder / "cases.jsonl") if folder is not None else {}
    from tqdm.auto import tqdm

    records = []
    for case in tqdm(cases, desc=f"{method} on {cases[0].dataset if cases else dataset}", disable=not progress):
        if case.case_id in done:
            records.append(done[case.case_id])
            continue
        start = time.perf_counter()
        pre = score_case(lm, case, generation_tokens, seed)
        scored = time.perf_counter() - start
        start = time.perf_counter()
        edited = METHODS[method](lm, case, ctx)
        edit_seconds = time.perf_counter() - start
        start = time.perf_counter()
        post = pre if edited is lm else score_case(edited, case, generation_tokens, seed)  # "none" changes nothing
        record = {
            "case_id": case.case_id, "pre": pre, "post": post,
            "seconds": {"edit": edit_seconds, "score": scored + time.perf_counter() - start},
        }  # fmt: skip
        if folder is not None:
            with open(folder / "cases.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())
        records.append(record)
    summary = summarise(records) | {"method": method, "dataset": str(dataset), "model": lm.name}
    if note:
        summary["note"] = note
    if folder is not None:
        atomic_write_text(folder / "summary.json", json.dumps(summary, indent=2))
        atomic_write_text(folder / "summary.md", markdown_table(summary, f"{method} on {dataset} ({lm.name})"))
    return summary
