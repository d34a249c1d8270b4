"""Causal tracing (paper §2): corrupt the subject, restore one state at a time, and measure p(answer).

`trace` runs the clean and corrupted passes once (`runs.run_facts`), then every restoration of the chosen kind
in one jitted program (`restore.restoration_probs`): the same compiled program for every kind, window and
severed module of every prompt in a length bucket. The noise is drawn as the original code draws it: a fresh
`numpy.random.RandomState(seed)` per prompt (seed 1 by default), so every restoration sees the same noise.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..models.lm import LM
from ..tokens import token_strings
from .budget import check_budget, lanes_per_call
from .restore import restoration_probs, scatter_scores
from .runs import Runs, corruption, run_facts
from .schedule import KINDS, SEVER, Restoration, bucket, bucket_rows, plan_layers, plan_rows, rows_needed


@dataclasses.dataclass
class TraceResult:
    """Scores [tokens, layers]: mean p(answer) over noise samples when that state (or window) is restored."""

    prompt: str
    subject: str
    kind: str
    scores: np.ndarray
    low_score: float
    high_score: float
    answer: str
    answer_id: int
    tokens: list[str]
    subject_range: tuple[int, int]
    window: int
    noise_scale: float  # the corruption's scale (3 x the embedding std for "s3")
    samples: int
    seed: int
    uniform: bool
    replace: bool
    sever: str | None
    token_range: list[int] | None = None  # the tokens restored; None: all (the other rows are NaN)

    @property
    def indirect_effect(self) -> np.ndarray:
        """IE of each restoration: p(answer) restored minus p(answer) corrupted."""
        return self.scores - self.low_score

    def __treescope_repr__(self, path: str | None, subtree_renderer: Any) -> Any:
        from ..views import trace_repr

        return trace_repr(self, path, subtree_renderer)

    @property
    def total_effect(self) -> float:
        """TE: p(answer) clean minus p(answer) corrupted."""
        return self.high_score - self.low_score

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields; the scores of tokens not restored are null."""
        d = dataclasses.asdict(self)
        d["scores"] = [[None if np.isnan(x) else float(x) for x in row] for row in self.scores]
        d["subject_range"] = list(self.subject_range)
        return d


def restored_tokens(token_range: str | Sequence[int] | None, n_tokens: int, span: tuple[int, int]) -> list[int]:
    """The token indices a token_range names: None all, "subject_last" the subject's last token, or a list."""
    if token_range is None:
        return list(range(n_tokens))
    if isinstance(token_range, str):
        if token_range != "subject_last":
            raise ValueError(f"token_range={token_range!r}; accepted: None, 'subject_last', or a list of token indices")
        return [span[1] - 1]
    tokens = sorted({int(t) for t in token_range})
    if not tokens or tokens[0] < 0 or tokens[-1] >= n_tokens:
        raise ValueError(f"token_range {list(token_range)}: give token indices in [0, {n_tokens}), at least one")
    return tokens


def check_restoration(kind: str, window: Any, sever: str | None) -> None:
    """One line naming what is wrong with a kind, window or severed module, before any work."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}; accepted: {', '.join(KINDS)}")
    if not isinstance(window, int | np.integer) or isinstance(window, bool) or window < 1:
        raise ValueError(f"window must be a positive integer, got {window!r}")
    if sever not in (None, *SEVER):
        raise ValueError(f"sever={sever!r}; accepted: None, 'mlp', 'attn'")
    if sever is not None and kind != "hidden":
        raise ValueError("sever applies to hidden-state traces only (kind='hidden')")


def restore_many(
    lm: LM,
    runs: Sequence[Runs],
    kind: str = "hidden",
    *,
    window: int = 10,
    sever: str | None = None,
    tokens: Sequence[Sequence[int]] | None = None,
    n_rows: int | None = None,
    chunk: int | None = None,
    max_batch_bytes: int | None = None,
) -> list[np.ndarray]:
    """Score grids [T, L] of one kind for prompts run together (one `run_facts` batch), in one program call.

    tokens: per prompt, the tokens to restore (default all; the rows of others are NaN). n_rows: rows of the
    program (default: enough for one prompt of the length bucket, or for these prompts); a dataset fixes it so
    that its batches share one compiled program. chunk: lanes run together (default: from `max_batch_bytes`,
    see `budget.lanes_per_call`).
    """
    check_restoration(kind, window, sever)
    arrays = runs[0].arrays
    if any(r.arrays is not arrays for r in runs):
        raise ValueError("restore_many takes the runs of one run_facts batch")
    grids, work = {}, [(1, [])] * arrays.answer.shape[0]  # per slot of the batch: (tokens, restored tokens)
    for i, r in enumerate(runs):
        wanted = list(range(len(r.ids))) if tokens is None else list(tokens[i])
        grids[r.slot] = np.full((len(r.ids), lm.config.n_layers), np.nan)
        grids[r.slot][wanted] = r.low_score  # tokens before the subject are not corrupted: restoring them does nothing
        work[r.slot] = (len(r.ids), [t for t in wanted if t >= r.subject_range[0]])
    need = [rows_needed(n, t) for n, t in work if t]
    if need:
        n_cols = arrays.embed_add.shape[2]
        rows_b, width_b = bucket_rows(n_cols)
        widest = max(w for _, w in need)
        width = width_b if widest <= width_b else bucket(widest)
        rows = plan_rows(work, n_rows or max(rows_b, sum(r for r, _ in need)), width)
        layers = plan_layers(lm.config.n_layers, kind, window, sever)
        shape = {"n_rows": rows.cols.shape[0], "width": width, "n_cols": n_cols, "samples": runs[0].samples}
        probs = restoration_probs(lm.config, lm.params, arrays, layers=layers, rows=rows,
                                  what=Restoration.of(kind, sever), chunk=chunk or lanes_per_call(lm, **shape, budget=max_batch_bytes))  # fmt: skip
        scatter_scores(np.asarray(probs, np.float64), layers, rows, grids)
    return [grids[r.slot] for r in runs]


def restore(
    lm: LM,
    runs: Runs,
    kind: str = "hidden",
    *,
    window: int = 10,
    sever: str | None = None,
    token_range: str | Sequence[int] | None = None,
    chunk: int | None = None,
    max_batch_bytes: int | None = None,
) -> TraceResult:
    """Every restoration of one kind for prepared runs, in one jitted call.

    token_range: restore only these tokens (None: all; "subject_last"; or token indices); other rows are NaN.
    chunk / max_batch_bytes: lanes run together, or the device memory they may fill (see `trace`).
    """
    check_restoration(kind, window, sever)
    tokens = restored_tokens(token_range, len(runs.ids), runs.subject_range)
    (scores,) = restore_many(lm, [runs], kind, window=window, sever=sever, tokens=[tokens], chunk=chunk,
                             max_batch_bytes=max_batch_bytes)  # fmt: skip
    return TraceResult(
        prompt=runs.prompt,
        subject=runs.subject,
        kind=kind,
        scores=scores,
        low_score=runs.low_score,
        high_score=runs.high_score,
        answer=lm.tokenizer.decode([runs.answer_id]),
        answer_id=runs.answer_id,
        tokens=token_strings(lm.tokenizer, runs.ids),
        subject_range=runs.subject_range,
        window=int(window),
        noise_scale=runs.noise_scale,
        samples=runs.samples,
        seed=runs.seed,
        uniform=runs.uniform,
        replace=runs.replace,
        sever=sever,
        token_range=None if token_range is None else tokens,
    )


def corrupt_and_clean(
    lm: LM,
    prompt: str,
    subject: str,
    *,
    samples: int = 10,
    noise: str | float | Any = "s3",
    seed: int = 1,
    uniform: bool = False,
    replace: bool = False,
    answer: str | int | None = None,
    noise_subjects: Sequence[str] | None = None,
) -> Runs:
    """Run the prompt clean and with `samples` corruptions of the subject's token embeddings, keeping every state.

    noise_subjects: the subjects whose embedding std "s<factor>" scales (default: all of known_1000's).
    """
    how = corruption(lm, noise, samples=samples, seed=seed, uniform=uniform, replace=replace,
                     noise_subjects=noise_subjects)  # fmt: skip
    return run_facts(lm, [prompt], [subject], how, answers=[answer])[0]


def trace(
    lm: LM,
    prompt: str,
    subject: str,
    *,
    kind: str = "hidden",
    samples: int = 10,
    noise: str | float | Any = "s3",
    window: int = 10,
    seed: int = 1,
    uniform: bool = False,
    replace: bool = False,
    answer: str | int | None = None,
    sever: str | None = None,
    token_range: str | Sequence[int] | None = None,
    noise_subjects: Sequence[str] | None = None,
    chunk: int | None = None,
    max_batch_bytes: int | None = None,
    progress: bool = True,
    download: bool | None = None,
) -> TraceResult | dict[str, TraceResult]:
    """Causal trace of `subject` in `prompt`: p(answer) with each (token, layer) state restored after corruption.

    kind: "hidden" restores the residual after layer l at token t; "mlp"/"attn" restore that module's outputs at
    token t in a window of `window` layers centred on l; "all" gives {kind: result} for the three, from the same
    runs. noise: "s3" (3 x the std of the token embeddings of `noise_subjects`, default known_1000's subjects), a
    float scale, or an explicit array [samples, subject tokens, d_model]; a scale multiplies
    `numpy.random.RandomState(seed).randn(samples, subject tokens, d_model)` as in the original. uniform draws
    U(-1, 1) x scale instead; replace sets the subject's token embeddings to the noise instead of adding it.
    answer: the token to score (an id, or a string's first token; a string without a leading space gets one, as
    ROME's targets do: "Paris" is " Paris"); default the clean prediction. sever: "mlp" or "attn" freezes that
    module's outputs at the restored token in every layer at their corrupted values (paper Fig. 3). token_range:
    restore only these tokens (None: all, "subject_last", or token indices); the others' scores are NaN. chunk:
    lanes (pairs of layers) run together; default one at a time on CPU, and on accelerators as many as fit
    `max_batch_bytes` of device memory (default: half of what the parameters leave free). progress: say on stderr
    what is traced before the (seconds-long) program runs. download: whether known_1000, whose subjects "s<factor>"
    needs by default, is fetched if missing (as jrome.data.fetch; None: on first use unless offline).
    """
    if kind not in (*KINDS, "all"):
        raise ValueError(f"kind={kind!r}; accepted: {', '.join(KINDS)}, all")
    kinds = KINDS if kind == "all" else (kind,)
    for k in kinds:
        check_restoration(k, window, sever)
    check_budget(max_batch_bytes)
    if noise_subjects is None and isinstance(noise, str):
        from ..data import load_known

        noise_subjects = [record["subject"] for record in load_known(download=download)]
    runs = corrupt_and_clean(lm, prompt, subject, samples=samples, noise=noise, seed=seed, uniform=uniform,
                             replace=replace, answer=answer, noise_subjects=noise_subjects)  # fmt: skip
    if progress:
        print(f"causal trace ({kind}): {len(runs.ids)} tokens x {lm.config.n_layers} layers restored, "
              f"{runs.samples} noise samples each, in one compiled program", file=sys.stderr, flush=True)  # fmt: skip
    how = {"window": window, "sever": sever, "token_range": token_range, "chunk": chunk}
    results = {k: restore(lm, runs, k, **how, max_batch_bytes=max_batch_bytes) for k in kinds}
    return results if kind == "all" else results[kind]
