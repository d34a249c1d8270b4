"""The clean and corrupted runs a trace restores from: every state of a batch of prompts, clean and with the
subject's token embeddings corrupted, in one jitted program per length bucket and batch size.

Prompts are padded on the right to a length bucket (`schedule.bucket`), so a real column's position is its
index and no real column ever attends to padding; the restorations then read these arrays by column.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ..interventions import Interventions
from ..models.config import ModelConfig
from ..models.forward import Rows, embed, run_layers, unembed
from ..models.lm import LM
from ..sharding import mesh_of, split_samples
from ..tokens import pad_id, spaced, subject_range
from .noise import draw_noise, noise_array, noise_scale
from .schedule import bucket

CAPTURE = ("resid", "mlp", "attn", "attn_k", "attn_v")


@struct.dataclass
class RunArrays:
    """What restorations read from the runs of F prompts (T columns, S noise samples), layer-major."""

    clean_inputs: jax.Array  # [L+1, F, T, D] the input of each layer, then the final residual
    clean_mlp: jax.Array  # [L, F, T, D]
    clean_attn: jax.Array  # [L, F, T, D]
    corrupt_inputs: jax.Array  # [L+1, F, S, T, D]
    corrupt_k: jax.Array  # [L, F, S, T, KV, hd] rotated keys
    corrupt_v: jax.Array  # [L, F, S, T, KV, hd]
    corrupt_mlp: jax.Array  # [L, F, S, T, D]
    corrupt_attn: jax.Array  # [L, F, S, T, D]
    embed_add: jax.Array  # [F, S, T, D] what the corruption adds to the embeddings
    answer: jax.Array  # [F] the token scored
    high: jax.Array  # [F] p(answer), clean
    low: jax.Array  # [F] p(answer) corrupted, averaged over samples


@dataclasses.dataclass(frozen=True)
class Runs:
    """The clean and corrupted passes of one prompt, shared by every kind of trace of it. `arrays` holds the
    runs of the batch the prompt was run in (padded to a length bucket); this prompt is its fact `slot`."""

    prompt: str
    subject: str
    ids: np.ndarray
    subject_range: tuple[int, int]
    answer_id: int
    high_score: float
    low_score: float
    noise_scale: float
    samples: int
    seed: int
    uniform: bool
    replace: bool
    arrays: RunArrays
    slot: int = 0

    def view(self, name: str) -> jax.Array:
        """This prompt's part of a RunArrays field, without the batch's padding: "clean_inputs" [L+1, T, D],
        "corrupt_mlp" [L, S, T, D], "embed_add" [S, T, D], ..."""
        x = getattr(self.arrays, name)
        x = x[self.slot] if name == "embed_add" else x[:, self.slot]
        return jax.lax.slice_in_dim(x, 0, len(self.ids), axis=2 if name.startswith("corrupt") else 1)

    def __repr__(self) -> str:
        return (f"Runs({self.prompt!r}, subject tokens {self.subject_range}, answer {self.answer_id}: "
                f"p clean {self.high_score:.4f}, corrupted {self.low_score:.4f}, {self.samples} samples)")  # fmt: skip


def _corrupted_embeddings(cfg: ModelConfig, params: dict, ids: jax.Array, noise: jax.Array, replace: jax.Array):
    """(clean embeddings [F, T, D], what the corruption adds [F, S, T, D]): the noise, or with `replace` [F, T]
    the noise minus the token embedding it replaces (learned positions are still added)."""
    h0 = embed(cfg, params, ids, jnp.arange(ids.shape[1])[None])
    tokens = params["embed"]["tokens"][ids].astype(jnp.float32) * cfg.embed_scale
    add = noise - jnp.where(replace[..., None], tokens, 0.0)[:, None]
    return h0, add.astype(h0.dtype)


def _answer_probs(cfg: ModelConfig, params: dict, finals: jax.Array, answer: jax.Array) -> jax.Array:
    """p(answer[f]) from final residuals [F, ..., D]."""
    logits = unembed(cfg, params, finals)
    picked = jnp.take_along_axis(logits, answer.reshape(-1, *[1] * (logits.ndim - 1)), axis=-1)[..., 0]
    return jnp.exp(picked - jax.nn.logsumexp(logits, axis=-1))


@partial(jax.jit, static_argnames=("cfg",))
def run_prompts(cfg: ModelConfig, params: dict, ids, lengths, noise, replace, answer) -> RunArrays:
    """The clean and corrupted runs of prompts ids [F, T] (right-padded; lengths [F]) with noise [F, S, T, D]
    added to (or, where replace [F, T], replacing) their token embeddings. answer [F]: the token to score, -1 for
    the clean run's top token."""
    n_facts, n_cols = ids.shape
    samples = noise.shape[1]
    mask = (jnp.arange(n_cols)[None] < lengths[:, None]).astype(jnp.int32)
    h0, add = _corrupted_embeddings(cfg, params, ids, noise, replace)
    iv = Interventions(capture=CAPTURE)
    h, clean = run_layers(cfg, params["blocks"], h0, rows=Rows.causal(cfg, mask), iv=iv)
    hx0 = (h0[:, None] + add).reshape(n_facts * samples, n_cols, -1)
    hx, corrupt = run_layers(cfg, params["blocks"], hx0, rows=Rows.causal(cfg, jnp.repeat(mask, samples, 0)), iv=iv)
    last, facts = lengths - 1, jnp.arange(n_facts)
    top = jnp.argmax(unembed(cfg, params, h[facts, last]), axis=-1)
    answer = jnp.where(answer >= 0, answer, top)
    hx = hx.reshape(n_facts, samples, n_cols, -1)

    def per_fact(x: jax.Array) -> jax.Array:  # [L, F*S, ...] -> [L, F, S, ...]
        return x.reshape(x.shape[0], n_facts, samples, *x.shape[2:])

    return RunArrays(
        clean_inputs=jnp.concatenate([h0[None], clean["resid"]]),
        clean_mlp=clean["mlp"],
        clean_attn=clean["attn"],
        corrupt_inputs=jnp.concatenate([(h0[:, None] + add)[None], per_fact(corrupt["resid"])]),
        corrupt_k=per_fact(corrupt["attn_k"]),
        corrupt_v=per_fact(corrupt["attn_v"]),
        corrupt_mlp=per_fact(corrupt["mlp"]),
        corrupt_attn=per_fact(corrupt["attn"]),
        embed_add=add,
        answer=answer,
        high=_answer_probs(cfg, params, h[facts, last], answer),
        low=_answer_probs(cfg, params, hx[facts, :, last], answer).mean(axis=1),
    )


def answer_id(lm: LM, answer: str | int | None) -> int:
    """The token an answer names: an id, or a string's first token (with a leading space, as ROME's targets);
    -1 for None (the clean run's top token)."""
    if answer is None:
        return -1
    if isinstance(answer, int | np.integer):
        if not 0 <= answer < lm.config.vocab_size:
            raise ValueError(f"answer token id {answer} is outside the vocabulary [0, {lm.config.vocab_size})")
        return int(answer)
    if not isinstance(answer, str):
        raise ValueError(f"answer={answer!r}; accepted: a token id, the answer's words (e.g. 'Paris'), or None")
    if not answer.strip():
        raise ValueError(f"the answer {answer!r} is empty; give the answer's words, e.g. 'Paris'")
    return int(lm.tokenizer(spaced(answer), add_special_tokens=False)["input_ids"][0])


@dataclasses.dataclass(frozen=True)
class Corruption:
    """How the subject is corrupted: noise scale (or one explicit array), samples, seed, uniform or Gaussian,
    added to or replacing the subject's token embeddings."""

    scale: float
    samples: int = 10
    seed: int = 1
    uniform: bool = False
    replace: bool = False
    array: np.ndarray | None = None  # [samples, subject tokens, D]: used as is instead of a draw

    def noise(self, n_subject: int, d_model: int) -> np.ndarray:
        """[samples, subject tokens, D]: the array given (checked), else the original's draw."""
        shape = (self.samples, n_subject, d_model)
        return (
            draw_noise(shape, self.scale, self.seed, self.uniform)
            if self.array is None
            else noise_array(self.array, shape)
        )


def corruption(
    lm: LM,
    noise: str | float | Any,
    *,
    samples: int = 10,
    seed: int = 1,
    uniform: bool = False,
    replace: bool = False,
    noise_subjects: Sequence[str] | None = None,
) -> Corruption:
    """A checked Corruption: noise is "s<factor>", a float scale, or an array [samples, subject tokens, D]."""
    if not isinstance(samples, int | np.integer) or isinstance(samples, bool) or samples < 1:
        raise ValueError(f"samples must be a positive integer, got {samples!r}")
    if np.ndim(noise) == 0:
        scale = noise_scale(lm, noise, noise_subjects)
        if scale < 0:
            raise ValueError(
                f"noise={noise!r}: a noise scale cannot be negative; accepted: a scale >= 0 or 's<factor>'"
            )
        return Corruption(scale, int(samples), seed, uniform, replace)
    array = np.asarray(noise, np.float32)
    return Corruption(float(np.std(array)), int(samples), seed, uniform, replace, array)


def run_facts(
    lm: LM,
    prompts: Sequence[str],
    subjects: Sequence[str],
    how: Corruption,
    *,
    answers: Sequence[str | int | None] | None = None,
    slots: int | None = None,
    n_cols: int | None = None,
) -> list[Runs]:
    """The runs of several prompts in one program call, padded to `slots` prompts (default: as many as given)
    of `n_cols` columns (default: the bucket of the longest)."""
    if lm.tokenizer is None:
        raise ValueError("tracing needs a tokenizer; load one with jrome.load(..., tokenizer=...)")
    rows = [np.asarray(lm.tokenizer(p)["input_ids"], np.int32) for p in prompts]
    spans = [subject_range(lm.tokenizer, p, s) for p, s in zip(prompts, subjects, strict=True)]
    longest = max(len(r) for r in rows)
    if longest > lm.config.max_positions:
        raise ValueError(f"a prompt has {longest} tokens, more than the model's context of {lm.config.max_positions}")
    n_cols = n_cols or min(bucket(longest), lm.config.max_positions)
    slots = slots or len(rows)
    d = lm.config.d_model
    ids = np.full((slots, n_cols), pad_id(lm.tokenizer), np.int32)
    lengths = np.ones(slots, np.int32)
    noise = np.zeros((slots, how.samples, n_cols, d), np.float32)
    replace = np.zeros((slots, n_cols), bool)
    answer = np.full(slots, -1, np.int32)
    for f, (r, (start, end)) in enumerate(zip(rows, spans, strict=True)):
        ids[f, : len(r)], lengths[f] = r, len(r)
        noise[f, :, start:end] = how.noise(end - start, d)
        replace[f, start:end] = how.replace
        answer[f] = answer_id(lm, None if answers is None else answers[f])
    put = jax.device_put
    noise = split_samples(mesh_of(lm), put(noise), axis=1)  # on a mesh, the samples are split over "data"
    arrays = run_prompts(lm.config, lm.params, put(ids), put(lengths), noise, put(replace), put(answer))
    found, high, low = (np.asarray(x) for x in jax.device_get((arrays.answer, arrays.high, arrays.low)))
    return [
        Runs(
            prompt=p,
            subject=s,
            ids=r,
            subject_range=span,
            answer_id=int(found[f]),
            high_score=float(high[f]),
            low_score=float(low[f]),
            noise_scale=how.scale,
            samples=how.samples,
            seed=how.seed,
            uniform=how.uniform,
            replace=how.replace,
            arrays=arrays,
            slot=f,
        )  # fmt: skip
        for f, (p, s, r, span) in enumerate(zip(prompts, subjects, rows, spans, strict=True))
    ]
