"""Causal tracing (paper §2): corrupt the subject, restore one state at a time, and measure p(answer).

`trace` runs the clean and corrupted passes once, then every restoration of the chosen kind in one
jitted program (`restore.restoration_probs`). The noise is drawn as the original code draws it: a fresh
`numpy.random.RandomState(seed)` per trace (seed 1 by default), so every restoration sees the same noise.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..interventions import Interventions
from ..models.forward import embed, forward_tokens_jit
from ..models.lm import LM
from ..sharding import mesh_of, split_samples
from ..tokens import spaced, subject_range, token_strings
from .restore import restoration_probs, scatter_scores
from .schedule import KINDS, plan_layers, plan_rows

SEVER = ("mlp", "attn")
NOISE_ACCEPTED = "'s<factor>' (factor x the std of subject-token embeddings, e.g. 's3'), a float, or an array"


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
    noise_std: float
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


def noise_std(lm: LM, subjects: Sequence[str] | None = None) -> float:
    """Standard deviation (ddof 1) of the token embeddings of the subjects' tokens (default: known_1000's subjects).

    The original's `collect_embedding_std`; its noise is three times this over all of known_1000's subjects.
    """
    if subjects is None:
        from ..data import load_known

        subjects = [record["subject"] for record in load_known()]
    table = np.asarray(lm.params["embed"]["tokens"], np.float32) * np.float32(lm.config.embed_scale)  # as embedded
    ids = np.concatenate([lm.tokenizer(s)["input_ids"] for s in subjects])
    return float(np.std(table[ids].astype(np.float64), ddof=1))


def noise_scale(lm: LM, noise: str | float, subjects: Sequence[str] | None = None) -> float:
    """The scale a noise setting names: "s<factor>" is factor x `noise_std(lm, subjects)`, a number is itself.

    The one parser of "s<factor>", shared by `trace` and `trace_dataset`.
    """
    if isinstance(noise, str):
        factor = noise[1:] or "1"
        if not noise.startswith("s") or not re.fullmatch(r"\d+(\.\d*)?|\.\d+", factor):
            raise ValueError(f"noise={noise!r}; accepted: {NOISE_ACCEPTED}")
        return float(factor) * noise_std(lm, subjects)
    if np.ndim(noise) != 0 or not np.issubdtype(np.asarray(noise).dtype, np.number) or not float(noise) > 0:
        raise ValueError(f"noise={noise!r}; accepted: {NOISE_ACCEPTED} (a scale is positive)")
    return float(noise)


def draw_noise(shape: tuple[int, ...], scale: float, seed: int = 1, uniform: bool = False) -> np.ndarray:
    """The original's noise: scale x `RandomState(seed)`'s randn(*shape) (or uniform(-1, 1, shape)), as float32."""
    rs = np.random.RandomState(seed)
    unit = rs.uniform(-1, 1, shape) if uniform else rs.randn(*shape)
    return (scale * unit).astype(np.float32)


@dataclasses.dataclass
class Runs:
    """The clean and corrupted passes of one prompt, shared by every kind of trace of it."""

    prompt: str
    subject: str
    ids: np.ndarray
    span: tuple[int, int]
    answer_id: int
    high: float
    low: float
    clean: dict[str, jax.Array]
    corrupt: dict[str, jax.Array]
    embed_add: jax.Array  # [samples, T, D]: what the corruption adds to the token embeddings
    noise_scale: float
    samples: int
    seed: int
    uniform: bool
    replace: bool


def _answer_id(lm: LM, answer: str | int | None, clean_probs: np.ndarray) -> int:
    if answer is None:
        return int(np.argmax(clean_probs))
    if isinstance(answer, int | np.integer):
        if not 0 <= answer < lm.config.vocab_size:
            raise ValueError(f"answer token id {answer} is outside the vocabulary [0, {lm.config.vocab_size})")
        return int(answer)
    if not answer.strip():
        raise ValueError(f"the answer {answer!r} is empty; give the answer's words, e.g. 'Paris'")
    ids = lm.tokenizer(spaced(answer), add_special_tokens=False)["input_ids"]
    return int(ids[0])


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
    """Run the prompt clean and with `samples` corruptions of the subject's token embeddings, capturing every state.

    noise_subjects: the subjects whose embedding std "s<factor>" scales (default: all of known_1000's).
    """
    if lm.tokenizer is None:
        raise ValueError("tracing needs a tokenizer; load one with jrome.load(..., tokenizer=...)")
    if not isinstance(samples, int | np.integer) or samples < 1:
        raise ValueError(f"samples must be a positive integer, got {samples!r}")
    ids = np.asarray(lm.tokenizer(prompt)["input_ids"], np.int32)
    if len(ids) > lm.config.max_positions:
        raise ValueError(
            f"the prompt has {len(ids)} tokens, more than the model's context of {lm.config.max_positions}"
        )
    start, end = subject_range(lm.tokenizer, prompt, subject)
    cfg, d = lm.config, lm.config.d_model

    shape = (samples, end - start, d)
    if np.ndim(noise) == 0:
        scale = noise_scale(lm, noise, noise_subjects)
        values = draw_noise(shape, scale, seed, uniform)
    else:
        values = np.asarray(noise, np.float32)
        if values.shape != shape:
            raise ValueError(
                f"noise array has shape {values.shape}; it must be [samples, subject tokens, d_model] = {shape}"
            )
        scale = float(np.std(values))

    positions = np.arange(len(ids))[None]
    clean_h0 = embed(cfg, lm.params, ids[None], positions)[0]
    add = np.zeros((samples, len(ids), d), np.float32)
    if replace:  # the noise replaces the token embeddings; learned position embeddings are still added to it
        embedded = np.asarray(lm.params["embed"]["tokens"], np.float32)[ids[start:end]] * lm.config.embed_scale
        add[:, start:end] = values - embedded
    else:
        add[:, start:end] = values
    add = jnp.asarray(add, clean_h0.dtype)
    capture = ("resid", "mlp", "attn", "attn_k", "attn_v")
    mask = np.ones((1, len(ids)), np.int32)
    last = np.full((1, 1), len(ids) - 1, np.int32)
    clean = forward_tokens_jit(cfg, lm.params, ids[None], mask, Interventions(capture=capture), last)
    batch_ids = np.repeat(ids[None], samples, 0)
    corrupt = forward_tokens_jit(
        cfg, lm.params, batch_ids, np.repeat(mask, samples, 0), Interventions(embed_add=add, capture=capture),
        np.repeat(last, samples, 0),
    )  # fmt: skip
    clean_probs = np.asarray(jax.nn.softmax(clean.logits[0, -1]))
    answer_id = _answer_id(lm, answer, clean_probs)
    corrupt_probs = np.asarray(jax.nn.softmax(corrupt.logits[:, -1], axis=-1))[:, answer_id]
    c, x = clean.captured, corrupt.captured
    return Runs(
        prompt=prompt,
        subject=subject,
        ids=ids,
        span=(start, end),
        answer_id=answer_id,
        high=float(clean_probs[answer_id]),
        low=float(corrupt_probs.mean()),
        clean={
            "inputs": jnp.concatenate([clean_h0[None], c["resid"][:, 0]]),
            "mlp": c["mlp"][:, 0],
            "attn": c["attn"][:, 0],
        },
        corrupt={
            "inputs": jnp.concatenate([(clean_h0 + add)[None], x["resid"]]),
            "mlp": x["mlp"],
            "attn": x["attn"],
            "k": x["attn_k"],
            "v": x["attn_v"],
        },
        embed_add=add,
        noise_scale=scale,
        samples=int(samples),
        seed=seed,
        uniform=uniform,
        replace=replace,
    )


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


def restore(
    lm: LM,
    runs: Runs,
    kind: str = "hidden",
    *,
    window: int = 10,
    sever: str | None = None,
    token_range: str | Sequence[int] | None = None,
    chunk: int | None = None,
) -> TraceResult:
    """Every restoration of one kind for prepared runs, in one jitted call.

    token_range: restore only these tokens (None: all; "subject_last"; or token indices); other rows are NaN.
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}; accepted: {', '.join(KINDS)}")
    if not isinstance(window, int | np.integer) or window < 1:
        raise ValueError(f"window must be a positive integer, got {window!r}")
    if sever not in (None, *SEVER):
        raise ValueError(f"sever={sever!r}; accepted: None, 'mlp', 'attn'")
    if sever is not None and kind != "hidden":
        raise ValueError("sever applies to hidden-state traces only (kind='hidden')")
    cfg = lm.config
    if chunk is None:
        chunk = 1 if jax.default_backend() == "cpu" else cfg.n_layers
    if not isinstance(chunk, int | np.integer) or chunk < 1:
        raise ValueError(f"chunk must be a positive number of lanes, got {chunk!r}")
    n_tokens = len(runs.ids)
    tokens = restored_tokens(token_range, n_tokens, runs.span)
    scores = np.full((n_tokens, cfg.n_layers), np.nan)
    scores[tokens] = runs.low  # tokens before the subject are never corrupted: restoring them changes nothing
    computed = [t for t in tokens if t >= runs.span[0]]
    if computed:
        scores = _restoration_scores(lm, runs, kind, window, sever, chunk, computed, scores)
    return TraceResult(
        prompt=runs.prompt,
        subject=runs.subject,
        kind=kind,
        scores=scores,
        low_score=runs.low,
        high_score=runs.high,
        answer=lm.tokenizer.decode([runs.answer_id]),
        answer_id=runs.answer_id,
        tokens=token_strings(lm.tokenizer, runs.ids),
        subject_range=runs.span,
        window=int(window),
        noise_std=runs.noise_scale,
        samples=runs.samples,
        seed=runs.seed,
        uniform=runs.uniform,
        replace=runs.replace,
        sever=sever,
        token_range=None if token_range is None else tokens,
    )


def _restoration_scores(
    lm: LM,
    runs: Runs,
    kind: str,
    window: int,
    sever: str | None,
    chunk: int,
    tokens: list[int],
    base: np.ndarray,
) -> np.ndarray:
    """`base` [T, L] with the rows of `tokens` (all at or after the subject's start) set by the packed program."""
    cfg = lm.config
    n_tokens = len(runs.ids)
    plan = plan_layers(cfg.n_layers, kind, window, sever)
    rows = plan_rows(n_tokens, runs.span[0], tokens)
    if kind == "hidden":
        site, source, clean_site, corrupt_site = sever, "corrupted", None, runs.corrupt.get(sever or "", None)
    else:
        site, source, clean_site, corrupt_site = kind, "clean", runs.clean[kind], None
    clean = {"inputs": runs.clean["inputs"]} | ({"site": clean_site} if clean_site is not None else {})
    corrupt = {k: runs.corrupt[k] for k in ("inputs", "k", "v")} | (
        {"site": corrupt_site} if corrupt_site is not None else {}
    )
    mesh = mesh_of(lm)  # on a mesh, the noise samples are split over its "data" axis
    corrupt = {k: split_samples(mesh, v, axis=1) for k, v in corrupt.items()}
    probs = restoration_probs(
        cfg,
        lm.params,
        {k: jnp.asarray(getattr(plan, k)) for k in ("start", "count", "lo", "hi")},
        {k: jnp.asarray(getattr(rows, k)) for k in ("seg_start", "cols", "seg", "valid", "last")},
        clean,
        corrupt,
        jnp.int32(runs.answer_id),
        steps=plan.steps,
        site=site,
        source=source,
        restore_input=kind == "hidden",
        chunk=chunk,
    )
    return scatter_scores(np.asarray(probs, np.float64), plan, rows.seg_start, base)


def trace(
    lm: LM,
    prompt: str,
    subject: str,
    kind: str = "hidden",
    samples: int = 10,
    noise: str | float | Any = "s3",
    window: int = 10,
    seed: int = 1,
    uniform: bool = False,
    replace: bool = False,
    answer: str | int | None = None,
    *,
    sever: str | None = None,
    token_range: str | Sequence[int] | None = None,
    noise_subjects: Sequence[str] | None = None,
    chunk: int | None = None,
    progress: bool = True,
    download: bool | None = None,
) -> TraceResult | dict[str, TraceResult]:
    """Causal trace of `subject` in `prompt`: p(answer) with each (token, layer) state restored after corruption.

    kind: "hidden" restores the residual after layer l at token t; "mlp"/"attn" restore that module's outputs at
    token t in a window of `window` layers centred on l; "all" gives {kind: result} for the three, from the same
    clean and corrupted runs. noise: "s3" (3 x the std of the token embeddings of
    `noise_subjects`, default known_1000's subjects), a float scale, or an explicit array [samples, subject tokens,
    d_model]; a scale multiplies `numpy.random.RandomState(seed).randn(samples, subject tokens, d_model)` as in
    the original. uniform draws U(-1, 1) x scale instead; replace sets the subject's token embeddings to the noise
    instead of adding it. answer: the token to score (an id, or a string's first token; a string without a
    leading space gets one, as ROME's targets do: "Paris" is " Paris"); default the clean prediction. sever:
    "mlp" or "attn" freezes that module's outputs at the restored token in every layer at their corrupted values
    (paper Fig. 3). token_range: restore only these tokens (None: all, "subject_last", or token indices); the
    others' scores are NaN. chunk: lanes (pairs of layers) vmapped together; default one at a time on CPU, all at
    once on accelerators. progress: say on stderr what is traced before the (seconds-long) program runs.
    download: whether known_1000, whose subjects "s<factor>" needs by default, is fetched if missing (as
    jrome.data.fetch; None: on first use unless offline).
    """
    if kind not in (*KINDS, "all"):
        raise ValueError(f"kind={kind!r}; accepted: {', '.join(KINDS)}, all")
    if not isinstance(window, int | np.integer) or window < 1:
        raise ValueError(f"window must be a positive integer, got {window!r}")
    if noise_subjects is None and isinstance(noise, str):
        from ..data import load_known

        noise_subjects = [record["subject"] for record in load_known(download=download)]
    runs = corrupt_and_clean(
        lm, prompt, subject, samples=samples, noise=noise, seed=seed, uniform=uniform, replace=replace, answer=answer,
        noise_subjects=noise_subjects,
    )  # fmt: skip
    if progress:
        tokens, layers = len(runs.ids), lm.config.n_layers
        print(f"causal trace ({kind}): {tokens} tokens x {layers} layers restored, {runs.samples} noise samples each, "
              "in one compiled program", file=sys.stderr, flush=True)  # fmt: skip
    kinds = KINDS if kind == "all" else (kind,)
    results = {k: restore(lm, runs, k, window=window, sever=sever, token_range=token_range, chunk=chunk) for k in kinds}
    return results if kind == "all" else results[kind]
