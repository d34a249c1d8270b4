"""How the cases of an evaluation are edited and scored: the paper's protocol (each case alone from the unedited
model) and MEMIT's batch protocol (chunks of N cases at once), over what one run shares (`Run`). The sequential
protocol, which threads one model through the chunks, is in lifelong.py."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..editing.undo import RankOne
from ..files import append_jsonl, atomic_write_bytes
from ..models.lm import LM
from .consistency import References
from .datasets import EditCase
from .fluency import generate_texts, generation_entropy
from .health import health
from .methods import CONTEXT_FILE
from .metrics import case_probabilities, counterfact_case_scores, zsre_case_scores


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
