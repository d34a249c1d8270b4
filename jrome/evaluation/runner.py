"""The evaluation runner, as the original's `evaluate.py` and `summarize.py`: edit each case from the unedited
model, score it before and after, append the per-case record, and summarise per-case means over the cases.

Interrupted runs resume where they stopped: finished cases are read back, not redone, and the method's
context (hyperparameters, context templates) is read from the run's context.json.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..editing.undo import RankOne
from ..files import append_jsonl, atomic_write_bytes, atomic_write_text, check_settings, read_jsonl, setting_diffs
from ..models.lm import LM
from ..views import Summary
from .consistency import References, load_references
from .datasets import EditCase, load_dataset
from .fluency import MAX_OUT_LEN, generate_texts, generation_entropy
from .health import health, heldout_windows
from .methods import CONTEXT_FILE, METHODS, get_method
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
            half = 1.96 * values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
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
    if summary.get("curve"):  # a sequential run: how the edits so far held up after each checkpoint
        from .lifelong import curve_table

        hp = summary["hparams"]
        layers = hp["layers"] if "layers" in hp else [hp["layer"]]
        lines += ["", "The edits so far after each checkpoint (× 100):", "", curve_table(summary["curve"], layers)]
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


@dataclasses.dataclass
class Run:
    """What every protocol of one evaluation shares: the unedited model, the method and its context, how cases are
    scored, pre-edit scores read from elsewhere, and where finished records go (out/cases.jsonl)."""

    lm: LM
    method: Any
    ctx: Any
    folder: Path | None
    max_out_len: int
    seed: int
    references: References | None
    reused: dict[int, dict]
    progress: bool
    targets: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)  # known residual targets z by case id

    def score(self, lm: LM, cases: Sequence[EditCase], edits: Sequence[RankOne | None] | None = None) -> list[dict]:
        return score_cases(lm, cases, self.max_out_len, self.seed, self.references, edits)

    def pre(self, cases: Sequence[EditCase]) -> list[dict]:
        """The unedited model's scores of the cases: read from pre_from where it has them, else computed together."""
        todo = [c for c in cases if c.case_id not in self.reused]
        fresh = iter(self.score(self.lm, todo) if todo else [])
        return [self.reused[c.case_id] if c.case_id in self.reused else next(fresh) for c in cases]

    def finish(self, case: EditCase, pre: dict, post: dict, edit_seconds: float, score_seconds: float, **extra) -> dict:
        """The case's record, appended to out/cases.jsonl (extra: what the protocol adds, e.g. the case's batch)."""
        record = {
            "case_id": case.case_id, "request": dataclasses.asdict(case.request), "pre": pre, "post": post,
            "seconds": {"edit": edit_seconds, "score": score_seconds}, **extra,
        }  # fmt: skip
        if self.folder is not None:
            append_jsonl(self.folder / "cases.jsonl", record)
        return record


def run_each(run: Run, todo: Sequence[EditCase], batch: int, bar: Any) -> dict[int, dict]:
    """The paper's protocol: each case edited alone from the unedited model, `batch` cases computed together."""
    records = {}
    for first in range(0, len(todo), batch):
        chunk = todo[first : first + batch]
        start = time.perf_counter()
        pres = run.pre(chunk)
        scored = (time.perf_counter() - start) / len(chunk)
        start = time.perf_counter()
        models = run.method.edit_each(run.lm, chunk, run.ctx)
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
            post = pre if edited is run.lm else run.score(edited, [case])[0]
            records[case.case_id] = run.finish(case, pre, post, edit_seconds, scored + time.perf_counter() - start)
            bar.update()
        if factored:
            start = time.perf_counter()
            posts = run.score(run.lm, [c for c, *_ in factored], [e for _, _, e, _ in factored])
            each = (time.perf_counter() - start) / len(factored)
            for (case, pre, _, edit_seconds), post in zip(factored, posts, strict=True):
                records[case.case_id] = run.finish(case, pre, post, edit_seconds, scored + each)
                bar.update()
    return records


def run_chunks(
    run: Run, cases: Sequence[EditCase], done: dict, num_edits: int, windows: np.ndarray | None, bar: Any
) -> dict[int, dict]:
    """MEMIT's batch protocol (its `evaluate.py --num_edits N`): the cases in chunks of N, in order, each chunk
    edited at once from the unedited model, and each of its cases scored on the model the whole chunk edited. A
    chunk with unfinished cases is edited again on resume; only those are scored. Each edited model's perplexity
    on the held-out windows and kernel norms go to out/chunks.jsonl."""
    records = {}
    for first in range(0, len(cases), num_edits):
        chunk = cases[first : first + num_edits]
        missing, chunk_ids = [c for c in chunk if c.case_id not in done], [c.case_id for c in chunk]
        if not missing:
            continue
        start = time.perf_counter()
        pres = run.pre(missing)
        scored = (time.perf_counter() - start) / len(missing)
        start = time.perf_counter()
        known = np.stack([run.targets[c.case_id] for c in chunk]) if all(c.case_id in run.targets for c in chunk) else None  # fmt: skip
        state, undo = run.ctx.step(run.ctx.start(run.lm), [c.request for c in chunk], z=known)
        edit_seconds = (time.perf_counter() - start) / len(chunk)
        if run.folder is not None and hasattr(undo.edits[0], "targets"):  # MEMIT, AlphaEdit: for --targets-from
            save_targets(run.folder / "targets" / f"{chunk[0].case_id}.npz", chunk_ids, undo.edits[0].targets)
        start = time.perf_counter()
        posts = run.score(state.lm, missing)
        each = scored + (time.perf_counter() - start) / len(missing)
        if run.folder is not None:
            append_jsonl(run.folder / "chunks.jsonl", {"cases": chunk_ids} | health(state.lm, windows))
        for case, pre, post in zip(missing, pres, posts, strict=True):
            records[case.case_id] = run.finish(case, pre, post, edit_seconds, each, chunk=chunk_ids)
            bar.update()
    return records


Z_SETTINGS = ("fact_token", "v_num_grad_steps", "v_lr", "v_loss_layer", "v_weight_decay", "clamp_norm_factor",
              "kl_factor", "context_templates")  # fmt: skip


def save_targets(path: Path, case_ids: list[int], z: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, case_ids=np.asarray(case_ids), z=z)
    atomic_write_bytes(path, buf.getvalue())


def known_targets(folder: str | os.PathLike, lm: LM, hp: Any) -> dict[int, np.ndarray]:
    """The residual targets z an earlier MEMIT or AlphaEdit run with num_edits > 1 searched on this unedited model
    (its out/targets), by case id, after checking that it searched them with this run's v* settings, templates and
    last layer (the original's --use_cache reads such z without that check)."""
    folder = Path(folder)
    if not (folder / CONTEXT_FILE).is_file() or not (folder / "targets").is_dir():
        raise ValueError(f"targets_from {folder} is not a MEMIT or AlphaEdit run with num_edits > 1 (no targets/)")
    saved = json.loads((folder / CONTEXT_FILE).read_text())
    theirs, ours = saved["hparams"] or {}, json.loads(json.dumps(hp.to_dict()))
    diffs = [k for k in Z_SETTINGS if theirs.get(k) != ours.get(k)]
    diffs += ["model"] if saved["model"] != lm.name else []
    diffs += ["the last layer"] if (theirs.get("layers") or [None])[-1] != hp.layers[-1] else []
    if diffs:
        raise ValueError(f"targets_from {folder} searched its targets with another {', '.join(diffs)}; give a run of these settings")  # fmt: skip
    out = {}
    for path in sorted((folder / "targets").glob("*.npz")):
        with np.load(path) as z:
            out |= dict(zip(z["case_ids"].tolist(), z["z"], strict=True))
    return out


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
    download: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate `method` on the first n cases of `dataset`; per-case results go to out/cases.jsonl as they finish.

    max_out_len: tokens of each generation, prompt included (the original's 100); 0 skips GE and RS.
    pre_from: an earlier run's folder (same model, dataset, max_out_len, seed; any method) whose pre-edit scores are
    read instead of computed again. targets_from: likewise for MEMIT/AlphaEdit residual targets (num_edits > 1).
    batch: cases edited together, each still from the unedited model (ROME, r-ROME, MEMIT, AlphaEdit search their v*
    as one program); a case's edit seconds are its share of the batch's common work plus its own.
    num_edits > 1: MEMIT's batch protocol, chunks of N cases each edited at once; with `sequential`, the chunks one
    after another on one model, checkpoints every `curve_every` chunks (perplexity over ppl_tokens held-out tokens;
    0: none). See docs/evaluation.md.
    download: fetch a published dataset, RS file or key statistics file not in $JROME_DATA_DIR nor cached.
    """
    editor = get_method(method)
    check_counts(n, batch, max_out_len, num_edits, curve_every)
    protocol = check_protocol_args(method, num_edits, sequential, targets_from is not None)
    cases, notes = _cases(dataset, n, download)
    settings = {"dataset": str(dataset), "max_out_len": max_out_len, "seed": seed}
    reused = {} if pre_from is None else pre_scores(pre_from, lm, settings)
    streaming = ({"ppl_tokens": ppl_tokens} if protocol else {}) | ({"curve_every": curve_every} if sequential else {})
    folder = _run_folder(out, settings | protocol | streaming, protocol)
    ctx = editor.prepare(lm, folder, dict(hparams or {}), seed, progress, download)
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
    about = {"method": method, "dataset": str(dataset), "model": lm.name, "protocol": protocol, "notes": notes}
    return _summary(records, cases, ctx, folder, about, sequential)


def _summary(records: list[dict], cases: list[EditCase], ctx: Any, folder: Path | None, about: dict, sequential: bool):
    """The run's Summary (with the curve of a sequential run), written to folder/summary.{json,md}."""
    from .lifelong import curve_summary

    hparams = None if ctx is None else json.loads(json.dumps(ctx.hparams.to_dict()))
    summary = Summary(summarise(records, cases[0].dataset if cases else "counterfact") | about | {"hparams": hparams})
    if sequential and folder is not None:
        summary |= curve_summary(folder)
    if folder is not None:
        atomic_write_text(folder / "summary.json", json.dumps(summary, indent=2))
        title = f"{about['method']} on {about['dataset']} ({about['model']})"
        atomic_write_text(folder / "summary.md", markdown_table(summary, title))
    return summary


def _run_protocol(
    run: Run, cases: list[EditCase], title: str, batch: int, num_edits: int, sequential: bool, curve_every: int, windows
) -> list[dict]:
    """Every case's record, in order: those of an earlier start read back, the rest run by the protocol."""
    from tqdm.auto import tqdm

    from .lifelong import run_sequential

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


def _cases(dataset: str | os.PathLike, n: int | None, download: bool) -> tuple[list[EditCase], list[str]]:
    """The first n cases of the dataset, and a note (also printed) when it has fewer."""
    cases, notes = load_dataset(dataset, download=download), []
    if n is not None and n > len(cases):
        notes.append(f"n={n} is larger than the dataset ({len(cases)} cases); running all {len(cases)}")
        print(notes[-1])
    return cases[:n], notes


def _run_folder(out: str | os.PathLike | None, settings: dict[str, Any], protocol: dict[str, Any]) -> Path | None:
    """The run's folder, made if new; an existing run there must have these settings and this protocol."""
    if out is None:
        return None
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    check_settings(folder, settings, "cases.jsonl")  # what decides a case's numbers besides the method's context
    check_protocol(folder, protocol)
    return folder
