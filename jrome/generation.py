"""Greedy and sampled decoding with a key/value cache, jitted end to end; and the original code's `generate_fast`
(top-k sampling to a total length), which its context templates and fluency metric are made with.

The prompt runs once through the ordinary forward (capturing each layer's keys and values); every new
token then runs as a single row that attends to that cache, through the same `run_layers`, with the layer
weights sliced once before the token loop (slicing them out of the stack at every token dominates on CPU).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from .interventions import Interventions
from .models.config import ModelConfig
from .models.forward import (
    Context,
    Rows,
    embed,
    forward_tokens,
    positions_from_mask,
    rope_tables,
    run_layers,
    unembed,
    unstack,
)
from .models.lm import LM
from .tokens import encode, padded_width

ROUNDS_UP_TO = 32  # kth_largest's argmax rounds cost k passes over the logits; a sort is cheaper beyond this


def kth_largest(x: jax.Array, k: int) -> jax.Array:
    """[..., 1]: the k-th largest value along the last axis, repeats counted (= lax.top_k(x, k)[0][..., -1:]).

    For small k, found by k rounds of argmax, each setting one element to -inf: inside a decoding loop XLA's CPU
    backend turns lax.top_k into a full sort of the vocabulary (120 ms per step for 10 × 49,152 logits, against
    2 ms for k = 5)."""
    if k > ROUNDS_UP_TO:
        return jax.lax.top_k(x, k)[0][..., -1:]
    flat = x.reshape(-1, x.shape[-1])
    rows = jnp.arange(flat.shape[0])

    def remove_max(_, carry):
        rest, _ = carry
        j = jnp.argmax(rest, axis=-1)
        return rest.at[rows, j].set(-jnp.inf), rest[rows, j]

    _, kth = jax.lax.fori_loop(0, k, remove_max, (flat, flat[:, 0]))
    return kth.reshape(*x.shape[:-1], 1)


def _choose(logits: jax.Array, key: jax.Array, temperature: float, top_k: int | None) -> jax.Array:
    """Next token per row: argmax when temperature is 0, else a sample from the (top-k) softmax."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_k is not None:
        logits = jnp.where(logits < kth_largest(logits, top_k), -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@partial(jax.jit, static_argnums=(0, 4, 5, 6, 7))
def generate_ids(
    cfg: ModelConfig,
    params: dict,
    ids: jax.Array,
    mask: jax.Array,
    new_tokens: int,
    temperature: float,
    top_k: int | None,
    eos: int | None,
    key: jax.Array,
) -> jax.Array:
    """[B, new_tokens] continuations of left-padded ids [B, T]; rows that reach `eos` repeat it afterwards."""
    b, t = ids.shape
    prefill = forward_tokens(
        cfg, params, ids, mask, Interventions(capture=("attn_k", "attn_v")), jnp.full((b, 1), t - 1)
    )
    pad = [(0, 0), (0, 0), (0, new_tokens), (0, 0), (0, 0)]
    cache_k = jnp.pad(prefill.captured["attn_k"], pad)
    cache_v = jnp.pad(prefill.captured["attn_v"], pad)
    valid = jnp.pad(mask.astype(bool), [(0, 0), (0, new_tokens)])
    position = positions_from_mask(mask)[:, -1]
    keys = jax.random.split(key, new_tokens)
    first = _choose(prefill.logits[:, -1], keys[0], temperature, top_k)
    done = jnp.zeros(b, bool) if eos is None else first == eos
    blocks = unstack(params["blocks"], 0, cfg.n_layers)

    def step(carry, i):
        token, cache_k, cache_v, valid, done = carry
        col = t + i - 1
        pos = (position + i)[:, None]
        h = embed(cfg, params, token[:, None], pos)
        iv = Interventions(capture=("attn_k", "attn_v"))
        ctx = Context(cache_k, cache_v, valid[:, None, :])
        rows = Rows(col[None], rope_tables(cfg, pos), jnp.ones((b, 1, 1), bool))
        h, acts = run_layers(cfg, blocks, h, rows=rows, iv=iv, ctx=ctx)
        cache_k = jax.lax.dynamic_update_slice_in_dim(cache_k, acts["attn_k"], col, axis=2)
        cache_v = jax.lax.dynamic_update_slice_in_dim(cache_v, acts["attn_v"], col, axis=2)
        valid = valid.at[:, col].set(True)
        nxt = _choose(unembed(cfg, params, h[:, -1]), keys[i], temperature, top_k)
        if eos is not None:
            nxt = jnp.where(done, eos, nxt)
            done = done | (nxt == eos)
        return (nxt, cache_k, cache_v, valid, done), nxt

    _, rest = jax.lax.scan(step, (first, cache_k, cache_v, valid, done), jnp.arange(1, new_tokens))
    return jnp.concatenate([first[:, None], rest.T], axis=1)


def generate(
    lm: LM,
    prompts: str | Sequence[str],
    max_new_tokens: int = 20,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int = 0,
    stop_at_eos: bool = True,
) -> list[str]:
    """Continue each prompt by up to max_new_tokens tokens; greedy when temperature is 0, else sampled.

    Returns the continuations only (not the prompts), decoded and cut at the end-of-sequence token.
    """
    if lm.tokenizer is None:
        raise ValueError("this model has no tokenizer; load one with jrome.load(..., tokenizer=...)")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and not 1 <= top_k <= lm.config.vocab_size:
        raise ValueError(f"top_k must be in [1, {lm.config.vocab_size}], got {top_k}")
    ids, mask = encode(lm.tokenizer, prompts, multiple_of=8)
    if ids.shape[1] + max_new_tokens > lm.config.max_positions:
        ids, mask = encode(lm.tokenizer, prompts)
    if ids.shape[1] + max_new_tokens > lm.config.max_positions:
        raise ValueError(
            f"{ids.shape[1]} prompt tokens + {max_new_tokens} new tokens exceed the context of {lm.config.max_positions}"
        )
    eos = lm.tokenizer.eos_token_id if stop_at_eos else None
    out = np.asarray(
        generate_ids(
            lm.config, lm.params, ids, mask, max_new_tokens, float(temperature), top_k, eos, jax.random.key(seed)
        )
    )
    texts = []
    for row in out:
        row = list(row)
        if eos is not None and eos in row:
            row = row[: row.index(eos)]
        texts.append(lm.tokenizer.decode(row, skip_special_tokens=False))
    return texts


def sample_to_length(lm: LM, prompts: Sequence[str], length: int, *, top_k: int = 5, seed: int = 0) -> list[list[int]]:
    """The original's generate_fast, as token ids: each prompt continued by top-k sampling (temperature 1) until
    prompt and continuation are `length` tokens together (its max_out_len), with no stop at the end-of-text token;
    a prompt already that long is kept as it is. The random key is `seed` folded with `length`."""
    if length < 1:
        raise ValueError(f"the length must be at least 1 token (prompt and continuation), got {length}")
    ids, mask = encode(lm.tokenizer, prompts, multiple_of=8)
    lengths = mask.sum(axis=1)
    # Sample for the shortest prompt's need, rounded up so calls share compiled code; each row keeps its own need.
    new = padded_width(int(length - lengths.min()), 8)
    out = np.zeros((len(lengths), 0), np.int32)
    if new > 0:
        if ids.shape[1] + new > lm.config.max_positions:
            raise ValueError(f"{length} tokens exceed the model's context of {lm.config.max_positions}")
        key = jax.random.fold_in(jax.random.key(seed), length)
        out = np.asarray(generate_ids(lm.config, lm.params, ids, mask, new, 1.0, top_k, None, key))
    return [
        [int(i) for i in (*ids[row, ids.shape[1] - n :], *out[row, : max(0, length - int(n))])]
        for row, n in enumerate(lengths)
    ]


def tidy(text: str) -> str:
    """generate_fast's clean-up of a decoded text: NFKD, blank lines joined, "<|endoftext|>" removed."""
    return unicodedata.normalize("NFKD", text).replace("\n\n", " ").replace("<|endoftext|>", "")


def generate_fast(lm: LM, prompts: Sequence[str], length: int, *, top_k: int = 5, seed: int = 0) -> list[str]:
    """The original's generate_fast: each prompt sampled to `length` tokens in all, decoded whole and tidied."""
    rows = sample_to_length(lm, prompts, length, top_k=top_k, seed=seed)
    return [tidy(lm.tokenizer.decode(row, skip_special_tokens=False)) for row in rows]
