"""Next-token prediction for many prompts: each prompt's most likely next tokens and the probabilities of chosen
ones, the one home of what `jrome predict`, `jrome edit`, the demo and trace_dataset's answer check read."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from .interventions import Interventions
from .models.forward import check_token_ids, forward_tokens_jit
from .models.lm import LM
from .tokens import one_start, pad_id, padded_width


@dataclasses.dataclass(frozen=True)
class NextTokens:
    """top [N, k]: each prompt's k most likely next token ids, best first; p_top [N, k] their probabilities;
    p [N, len(tokens)]: the probabilities of the token ids asked for."""

    top: np.ndarray
    p_top: np.ndarray
    p: np.ndarray


def next_tokens(
    lm: LM, prompts: Sequence[str], *, k: int = 1, tokens: Sequence[int] = (), per_call: int = 32, multiple_of: int = 16
) -> NextTokens:
    """The next token after each prompt: up to `per_call` prompts per forward (a power of two rows, so a few
    shapes serve any count), right-padded to a multiple of 16 tokens (coarse shapes cost little next to an edit or a
    trace, and compile few programs). A prompt the model cannot read is one ValueError before any forward."""
    rows = [one_start(lm.tokenizer, lm.tokenizer(p)["input_ids"]) for p in prompts]
    empty = [p for p, r in zip(prompts, rows, strict=True) if not r]
    if empty:
        raise ValueError(f"prompt {empty[0]!r} tokenises to nothing")
    check_token_ids(lm.config, np.asarray([r + [0] * (max(map(len, rows)) - len(r)) for r in rows], np.int64))
    top, p_top = np.zeros((len(rows), k), np.int64), np.zeros((len(rows), k), np.float32)
    p = np.zeros((len(rows), len(tokens)), np.float32)
    widths = [min(padded_width(len(r), multiple_of), lm.config.max_positions) for r in rows]
    for width in sorted(set(widths)):
        members = [i for i, w in enumerate(widths) if w == width]
        for a in range(0, len(members), per_call):
            batch = members[a : a + per_call]
            n_rows = min(per_call, 1 << (len(batch) - 1).bit_length())
            ids = np.full((n_rows, width), pad_id(lm.tokenizer), np.int32)
            mask, last = np.zeros_like(ids), np.zeros((n_rows, 1), np.int32)
            for j, i in enumerate(batch):
                ids[j, : len(rows[i])], mask[j, : len(rows[i])], last[j] = rows[i], 1, len(rows[i]) - 1
            put = jax.device_put
            out = forward_tokens_jit(lm.config, lm.params, put(ids), put(mask), Interventions(), put(last))
            logits = np.asarray(out.logits)[: len(batch), 0]  # on the host: eager jnp work would compile per shape
            probs = _softmax(logits)
            best = np.argsort(-logits, axis=-1, kind="stable")[:, :k]  # ties: the lower id, as argmax
            top[batch], p_top[batch] = best, np.take_along_axis(probs, best, axis=-1)
            p[batch] = probs[:, list(tokens)]
    return NextTokens(top, p_top, p)


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities from logits [..., V], in float32, computed on the host."""
    wide = logits.astype(np.float64)
    e = np.exp(wide - wide.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
