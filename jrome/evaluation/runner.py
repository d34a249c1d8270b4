"""The evaluation runner, as the original's `evaluate.py` and `summarize.py`: edit each case from the unedited
model, score it before and after, append the per-case record, and summarise per-case means over the cases.

Interrupted runs resume where they stopped: finished cases are read back, not redone, and the method's
context (hyperparameters, context templates) is read from the run's context.json.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..files import atomic_write_text, check_settings, json_safe, read_jsonl, setting_diffs
from ..models.lm import LM
from ..views import Summary
from .consistency import References, load_references
from .datasets import EditCase, read_cases, resolve_dataset
from .fluency import MAX_OUT_LEN
from .health import heldout_windows
from .lifelong import curve_summary, run_sequential
from .methods import CONTEXT_FILE, METHODS, get_method
from .protocols import Run, known_targets, run_chunks, run_each
from .summary import markdown_table, summarise


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


def check_counts(n: int | None, batch: int, max_out_len: int, num_edits: int, curve_every: int) -> None:
    """The counts of a run, each checked with one line saying what is accepted."""
    for name, value in {"n": n, "batch": batch, "num_edits": num_edits, "curve_every": curve_every}.items():
        if value is not None and value < 1:
            what = "chunks" if name == "curve_every" else "cases"
            raise ValueError(f"{name}={value} is not a number of {what}; accepted: {name} >= 1" + (", or None for all" if name == "n" else ""))  # fmt: skip
    if max_out_len < 0:
        raise ValueError(f"max_out_len must be 0 (no generation metrics) or a number of tokens, got {max_out_len}")


def check_protocol_args(method: str, num_edits: int, sequential: bool, targets: bool) -> dict[str, Any]:
    """The run's protocol as settings ({} for the paper's one case at a time), checked against the method before any
    work: num_edits > 1 and sequential need a method that edits many cases at once; reused targets, the batch one."""
    protocol = ({"num_edits": num_edits} if num_edits > 1 else {}) | ({"sequential": True} if sequential else {})
    if targets and (num_edits == 1 or sequential):
        raise ValueError("targets_from reads the targets of cases edited from the unedited model: it needs num_edits > 1 and no sequential")  # fmt: skip
    if protocol and not get_method(method).streams:
        raise ValueError(f"method {method!r} edits one case at a time; num_edits > 1 and sequential take "
                         f"{', '.join(m for m, e in METHODS.items() if e.streams)}")  # fmt: skip
    return protocol


def check_protocol(folder: Path, protocol: dict[str, Any]) -> None:
    """A run folder is resumed only with the protocol it was started with (num_edits, sequential; absent: 1, no)."""
    saved = json.loads((folder / "settings.json").read_text())
    then = {"num_edits": saved.get("num_edits", 1), "sequential": saved.get("sequential", False)}
    now = {"num_edits": protocol.get("num_edits", 1), "sequential": protocol.get("sequential", False)}
    if then != now:
        raise ValueError(f"{folder} holds a run with {then}, not {now}; resume it with its own, or use a new folder")


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
    targets_from: str | os.PathLike | None = None,
    batch: int = 8,
    num_edits: int = 1,
    sequential: bool = False,
    curve_every: int = 1,
    ppl_tokens: int = 4_096,
    download: bool | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate `method` on the first n cases of `dataset`; per-case results go to out/cases.jsonl as they finish.

    max_out_len: tokens of each generation, prompt included (the original's 100); 0 skips GE and RS.
    pre_from: an earlier run's folder (same model, dataset, max_out_len, seed; any method) whose pre-edit scores are
    read instead of computed again. targets_from: likewise for MEMIT/AlphaEdit residual targets (num_edits > 1).
    batch: cases edited together, each still from the unedited model (ROME, r-ROME, MEMIT, AlphaEdit search their v*
    as one program); a case's edit seconds are its share of the batch's common work plus its own.
    num_edits > 1: MEMIT's batch protocol, chunks of N cases each edited at once; with `sequential`, the chunks one
    after another on one model, perplexity (over ppl_tokens held-out tokens; 0: none) and kernel norms after every
    chunk, and the scores of the cases so far every `curve_every` chunks. See docs/evaluation.md.
    download: whether a published dataset, RS file, key statistics file or corpus that is neither in $JROME_DATA_DIR
    nor cached is fetched (as jrome.data.fetch; None: unless offline). The dataset file read is printed and recorded
    (settings.json, summary.json).
    """
    editor = get_method(method)
    check_counts(n, batch, max_out_len, num_edits, curve_every)
    protocol = check_protocol_args(method, num_edits, sequential, targets_from is not None)
    cases, path, notes = _cases(dataset, n, download, progress)
    settings = {"dataset": str(dataset), "dataset_file": path.name, "max_out_len": max_out_len, "seed": seed}
    reused = {} if pre_from is None else pre_scores(pre_from, lm, settings)
    streaming = ({"ppl_tokens": ppl_tokens} if protocol else {}) | ({"curve_every": curve_every} if sequential else {})
    folder = _run_folder(out, settings | protocol | streaming, protocol)
    ctx = editor.prepare(lm, folder, dict(hparams or {}), seed=seed, progress=progress, download=download)
    references, generation_notes = _generation_setup(cases, max_out_len, download)
    notes += generation_notes
    run = Run(lm, editor, ctx, folder, max_out_len, seed, references, reused, progress)
    if targets_from is not None:
        run.targets = known_targets(targets_from, lm, ctx.hparams)
        notes.append(f"residual targets of {sum(c.case_id in run.targets for c in cases)} cases read from {targets_from}")  # fmt: skip
    windows = heldout_windows(lm, ppl_tokens) if ppl_tokens and protocol else None
    title = f"{method} on {cases[0].dataset if cases else dataset}"
    records = _run_protocol(run, cases, title, batch, num_edits, sequential, curve_every, windows)
    if reused:
        notes.append(f"pre-edit scores of {sum(c.case_id in reused for c in cases)} cases read from {pre_from}")
    about = {"method": method, "dataset": str(dataset), "dataset_file": str(path), "model": lm.name,
             "protocol": protocol, "notes": notes}  # fmt: skip
    return _summary(records, cases, ctx, folder, about, sequential)


def _summary(records: list[dict], cases: list[EditCase], ctx: Any, folder: Path | None, about: dict, sequential: bool):
    """The run's Summary (with the curve of a sequential run), written to folder/summary.{json,md}."""
    hparams = None if ctx is None else json.loads(json.dumps(ctx.hparams.to_dict()))
    summary = Summary(summarise(records, cases[0].dataset if cases else "counterfact") | about | {"hparams": hparams})
    if sequential and folder is not None:
        summary |= curve_summary(folder)
    if folder is not None:
        atomic_write_text(folder / "summary.json", json.dumps(json_safe(summary), indent=2))
        title = f"{about['method']} on {about['dataset']} ({about['model']})"
        atomic_write_text(folder / "summary.md", markdown_table(summary, title))
    return summary


def _run_protocol(
    run: Run, cases: list[EditCase], title: str, batch: int, num_edits: int, sequential: bool, curve_every: int, windows
) -> list[dict]:
    """Every case's record, in order: those of an earlier start read back, the rest run by the protocol."""
    from tqdm.auto import tqdm

    done = read_jsonl(run.folder / "cases.jsonl", "case_id") if run.folder is not None else {}
    records = {cid: r for cid, r in done.items() if cid in {c.case_id for c in cases}}
    with tqdm(total=len(cases), initial=len(records), desc=title, disable=not run.progress or sequential) as bar:
        if sequential:
            records |= run_sequential(run, cases, done, num_edits, curve_every, windows)
        elif num_edits > 1:
            records |= run_chunks(run, cases, done, num_edits, windows, bar)
        else:
            records |= run_each(run, [c for c in cases if c.case_id not in done], batch, bar)
    return [records[c.case_id] for c in cases]


def _cases(
    dataset: str | os.PathLike, n: int | None, download: bool | None, progress: bool
) -> tuple[list[EditCase], Path, list[str]]:
    """The first n cases of the dataset, the file they were read from, and a note (also printed) when it has fewer."""
    kind, path = resolve_dataset(dataset, download=download)
    cases, notes = read_cases(kind, path), []
    if progress:
        print(f"dataset {dataset}: {len(cases)} cases from {path}")
    if n is not None and n > len(cases):
        notes.append(f"n={n} is larger than the dataset ({len(cases)} cases); running all {len(cases)}")
        print(notes[-1])
    return cases[:n], path, notes


def _run_folder(out: str | os.PathLike | None, settings: dict[str, Any], protocol: dict[str, Any]) -> Path | None:
    """The run's folder, made if new; an existing run there must have these settings and this protocol."""
    if out is None:
        return None
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    check_settings(folder, settings, "cases.jsonl")  # what decides a case's numbers besides the method's context
    check_protocol(folder, protocol)
    return folder
