"""The straightforward trace: one full forward (all positions, every layer) per restoration.

It is what a hook-based implementation does, written with jrome's interventions; the tests check the packed
program against it, and `benchmarks/trace.py` times both.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..interventions import Interventions, Patch
from ..models.forward import forward_tokens
from ..models.lm import LM
from .runs import Runs
from .schedule import window_bounds


def _prob(cfg, params, ids, iv, answer):
    last = jnp.full((ids.shape[0], 1), ids.shape[1] - 1)
    logits = forward_tokens(cfg, params, ids, jnp.ones_like(ids), iv, last).logits[:, -1]
    return jax.nn.softmax(logits, axis=-1)[:, answer].mean()


_prob_jit = jax.jit(_prob, static_argnums=0)


def reference_interventions(
    runs: Runs, kind: str, token: int, layer: int, n_layers: int, window: int, sever: str | None
) -> Interventions:
    """The interventions of one restoration, applied to a full forward of the corrupted batch."""
    a, f = runs.arrays, runs.slot
    iv = {"embed_add": runs.view("embed_add")}
    if kind == "hidden":
        iv["resid"] = Patch.at(layer, token, a.clean_inputs[layer + 1, f, token])
        if sever:
            frozen = np.arange(n_layers)  # every layer: below `layer` the frozen value is what runs anyway
            iv[sever] = Patch(
                layer=jnp.asarray(frozen, jnp.int32),
                token=jnp.full(n_layers, token, jnp.int32),
                value={"mlp": a.corrupt_mlp, "attn": a.corrupt_attn}[sever][:, f, :, token],
            )
    else:
        lo, hi = window_bounds(layer, n_layers, window)
        layers = np.full(window, -1, np.int32)  # padded to the window size so every restoration has one shape
        layers[: hi - lo] = np.arange(lo, hi)
        values = {"mlp": a.clean_mlp, "attn": a.clean_attn}[kind][np.clip(layers, 0, n_layers - 1), f, token]
        iv[kind] = Patch(layer=jnp.asarray(layers), token=jnp.full(window, token, jnp.int32), value=values)
    return Interventions(**iv)


def restoration_prob(
    lm: LM, runs: Runs, kind: str, token: int, layer: int, window: int = 10, sever: str | None = None
) -> float:
    """p(answer) averaged over samples for one restoration, by a full forward of the corrupted batch."""
    cfg = lm.config
    ids = jnp.asarray(np.repeat(runs.ids[None], runs.samples, 0))
    iv = reference_interventions(runs, kind, token, layer, cfg.n_layers, window, sever)
    return float(_prob_jit(cfg, lm.params, ids, iv, runs.answer_id))


def reference_scores(lm: LM, runs: Runs, kind: str, window: int = 10, sever: str | None = None) -> np.ndarray:
    """[T, L] p(answer) averaged over samples, one jitted full forward per (token, layer) restoration."""
    scores = np.zeros((len(runs.ids), lm.config.n_layers))
    for token in range(scores.shape[0]):
        for layer in range(scores.shape[1]):
            scores[token, layer] = restoration_prob(lm, runs, kind, token, layer, window, sever)
    return scores
