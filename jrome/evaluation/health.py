"""A model's health as edits pile up: perplexity on held-out text (exp of the mean next-token NLL over fixed windows
of WikiText-2's test text) and the norms of the kernels edits change. Both blow up when sequential edits collapse
a model."""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..corpus import open_corpus
from ..editing.undo import down_kernel
from ..interventions import Interventions
from ..models.config import ModelConfig
from ..models.forward import forward_tokens
from ..models.lm import LM

ROWS = 8  # windows per forward


def heldout_windows(lm: LM, n_tokens: int = 4_096, window: int = 128, *, download: bool | None = None) -> np.ndarray:
    """[n, window] token ids: the last n_tokens of WikiText-2's test text (the corpus's first file: test.txt, or the
    hub's test split), as one stream cut into windows. Its end, because key statistics read the corpus from its
    start (the test text first, ~100,000 tokens)."""
    text = next(open_corpus("wikitext-2", download=download).file_texts())
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    n = min(n_tokens, len(ids)) // window
    if n == 0:
        raise ValueError(f"WikiText-2's test text has fewer than {window} tokens")
    return np.asarray(ids[len(ids) - n * window :], np.int32).reshape(n, window)


@partial(jax.jit, static_argnums=0)
def _nll_sum(cfg: ModelConfig, params: dict, ids: jax.Array, rows: jax.Array) -> jax.Array:
    """Σ of −log p(next token) over the real rows (rows: 1.0 real, 0.0 padding) of a batch of windows (float32)."""
    logits = forward_tokens(cfg, params, ids, jnp.ones_like(ids), Interventions(), None).logits
    log_probs = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(log_probs, ids[:, 1:, None], axis=-1)[..., 0]
    return -(picked.sum(axis=1) * rows).sum()


def perplexity(lm: LM, windows: np.ndarray) -> float:
    """exp(mean NLL of every window's tokens after its first), ROWS windows per forward (the last batch padded)."""
    total, count = 0.0, 0
    for a in range(0, len(windows), ROWS):
        block = windows[a : a + ROWS]
        rows = np.zeros(ROWS, np.float32)
        rows[: len(block)] = 1.0
        ids = np.concatenate([block, np.repeat(block[:1], ROWS - len(block), axis=0)])
        total += float(_nll_sum(lm.config, lm.params, ids, rows))
        count += len(block) * (windows.shape[1] - 1)
    return float(np.exp(total / count))


def kernel_norms(lm: LM) -> list[float]:
    """The Frobenius norm of every layer's MLP output kernel."""
    kernel = np.asarray(down_kernel(lm.params), np.float64)
    return [float(x) for x in np.linalg.norm(kernel, axis=(1, 2))]


def health(lm: LM, windows: np.ndarray | None) -> dict[str, Any]:
    """{"perplexity": on the held-out windows (None without them), "kernel_norms": kernel_norms(lm)}."""
    return {"perplexity": None if windows is None else perplexity(lm, windows), "kernel_norms": kernel_norms(lm)}
