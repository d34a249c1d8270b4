"""The restoration program: every (token, layer) restoration of one prompt, vmapped inside one jitted call.

Each lane (see `schedule`) scans `block` over its layer steps with per-lane parameters; each row of a lane
holds two column segments and attends to the corrupted run's cached keys and values for the columns before
its segment. Module outputs are restored or frozen with the ordinary `Patch` interventions, matched on
virtual columns (segment * T + column) so the two segments of a row never collide.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from ..interventions import Interventions, Patch
from ..models.config import ModelConfig
from ..models.forward import block, rope_tables, unembed


def _rows(x: jax.Array, cols: jax.Array) -> jax.Array:
    """[S, T, ...] per-sample values → [rows * S, R, ...] laid out as the rows' columns (row-major, then sample)."""
    g = jnp.swapaxes(x[:, cols], 0, 1)
    return g.reshape(-1, *g.shape[2:])


def _tile(x: jax.Array, samples: int) -> jax.Array:
    """[rows, ...] → [rows * samples, ...], the same for every sample of a row."""
    return jnp.repeat(x, samples, axis=0)


@partial(jax.jit, static_argnames=("cfg", "steps", "site", "source", "restore_input", "chunk"))
def restoration_probs(
    cfg: ModelConfig,
    params: dict,
    plan: dict[str, jax.Array],
    rows: dict[str, jax.Array],
    clean: dict[str, jax.Array],
    corrupt: dict[str, jax.Array],
    answer: jax.Array,
    *,
    steps: int,
    site: str | None,
    source: str,
    restore_input: bool,
    chunk: int,
) -> jax.Array:
    """p(answer) at the last token, averaged over noise samples, for every slot: [lanes, 2 slots, rows, 2 segments].

    clean: "inputs" [L+1, T, D] (input of each layer, then the final residual), "site" [L, T, D] if restoring
    module outputs. corrupt: "inputs" [L+1, S, T, D], "k"/"v" [L, S, T, KV, hd], "site" [L, S, T, D] if freezing.
    restore_input: a slot starts from the corrupted input of its first layer with its token set to the clean
    value (hidden states). site/source: which module output to overwrite at the slot's token for layers in
    [lo, hi), with clean values (windows) or corrupted ones (severed paths).
    """
    samples, n_tokens = corrupt["inputs"].shape[1:3]
    seg_start, cols, seg, valid, last = (rows[k] for k in ("seg_start", "cols", "seg", "valid", "last"))
    n_rows = cols.shape[0]
    batch = n_rows * samples
    own_start = jnp.take_along_axis(jnp.concatenate([seg_start, jnp.zeros((n_rows, 1), jnp.int32)], 1), seg, 1)
    is_start = _tile((cols == own_start) & valid, samples)
    same_seg = seg[:, :, None] == seg[:, None, :]
    self_mask = _tile(same_seg & (cols[:, None, :] <= cols[:, :, None]) & valid[:, None, :], samples)
    ctx_mask = _tile(jnp.arange(n_tokens)[None, None, :] < own_start[:, :, None], samples)
    vcols = _tile(seg * n_tokens + cols, samples)
    rope = rope_tables(cfg, _tile(cols, samples))
    last = _tile(last, samples)
    token = jnp.where(seg_start >= 0, jnp.arange(2)[None] * n_tokens + seg_start, -1).T  # [2, rows]
    token = jnp.repeat(token, samples, axis=1)
    restored = jnp.maximum(seg_start, 0)

    def per_sample(x: jax.Array) -> jax.Array:
        return jnp.tile(x[None], (n_rows,) + (1,) * x.ndim).reshape(batch, *x.shape[1:])

    def patch_value(layer: jax.Array) -> jax.Array:
        if source == "clean":
            return jnp.repeat(jnp.swapaxes(clean["site"][layer][restored], 0, 1), samples, axis=1)
        v = corrupt["site"][layer][:, restored]  # [S, rows, 2, D]
        return jnp.transpose(v, (2, 1, 0, 3)).reshape(2, batch, -1)

    def lane(start: jax.Array, count: jax.Array, lo: jax.Array, hi: jax.Array) -> jax.Array:
        def init(slot: int) -> jax.Array:
            h = _rows(corrupt["inputs"][start[slot]], cols)
            if restore_input:
                h = jnp.where(is_start[..., None], _tile(clean["inputs"][start[slot]][cols], samples), h)
            return h

        def finals(h: jax.Array) -> jax.Array:
            return h[jnp.arange(batch)[:, None], last]  # [B, 2, D]

        def transition(s: jax.Array, h: jax.Array, fin: jax.Array) -> tuple[jax.Array, jax.Array]:
            end_a = s == count[0]
            fin = fin.at[0].set(jnp.where(end_a, finals(h), fin[0]))
            h = jnp.where(end_a, init(1), h)
            fin = fin.at[1].set(jnp.where(s == count[0] + count[1], finals(h), fin[1]))
            return h, fin

        def step(carry: tuple[jax.Array, jax.Array], s: jax.Array) -> tuple[tuple[jax.Array, jax.Array], None]:
            h, fin = transition(s, *carry)
            in_a = s < count[0]
            slot = jnp.where(in_a, 0, 1)
            layer = jnp.clip(jnp.where(in_a, start[0] + s, start[1] + s - count[0]), 0, cfg.n_layers - 1)
            p = jax.tree.map(lambda a: a[layer], params["blocks"])
            ctx = (per_sample(corrupt["k"][layer]), per_sample(corrupt["v"][layer]), ctx_mask)
            iv = Interventions()
            if site is not None:
                active = (layer >= lo[slot]) & (layer < hi[slot])
                patch = Patch(
                    layer=jnp.where(active, layer, -1) * jnp.ones(2, jnp.int32), token=token, value=patch_value(layer)
                )
                iv = Interventions(**{site: patch})
            h, _ = block(cfg, p, h, layer, vcols, rope, self_mask, ctx, iv)
            return (h, fin), None

        h0 = init(0)
        fin0 = jnp.zeros((2, batch, 2, h0.shape[-1]), h0.dtype)
        (h, fin), _ = lax.scan(step, (h0, fin0), jnp.arange(steps))
        return transition(jnp.int32(steps), h, fin)[1]

    lanes = (plan["start"], plan["count"], plan["lo"], plan["hi"])
    if chunk == 1:  # one lane at a time: plain matmuls with the lane's own weights, no batched gather
        finals = lax.map(lambda x: lane(*x), lanes)
    elif chunk >= plan["start"].shape[0]:
        finals = jax.vmap(lane)(*lanes)
    else:
        finals = lax.map(lambda x: lane(*x), lanes, batch_size=chunk)

    def answer_prob(fin: jax.Array) -> jax.Array:
        logits = unembed(cfg, params, fin)
        return jnp.exp(logits[..., answer] - jax.nn.logsumexp(logits, axis=-1))

    probs = lax.map(answer_prob, finals)  # [lanes, 2, B, 2]
    probs = probs.reshape(probs.shape[0], 2, n_rows, samples, 2)
    return probs.mean(axis=3)


def scatter_scores(probs: Any, plan: Any, seg_start: Any, base: Any) -> Any:
    """Place slot probabilities [lanes, 2, rows, 2] into a [T, L] score grid prefilled with `base`."""
    scores = base.copy()
    for lane in range(plan.layer.shape[0]):
        for slot in range(2):
            layer = plan.layer[lane, slot]
            if layer < 0:
                continue
            for r in range(seg_start.shape[0]):
                for s in range(2):
                    if seg_start[r, s] >= 0:
                        scores[seg_start[r, s], layer] = probs[lane, slot, r, s]
    return scores
