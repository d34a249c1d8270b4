"""The restoration program: every (token, layer) restoration of one prompt, vmapped inside one jitted call.

Each lane (see `schedule`) scans `block` over its layer steps with per-lane parameters; each row of a lane
holds two column segments and attends to the corrupted run's cached keys and values for the columns before
its segment. Module outputs are restored or frozen with the ordinary `Patch` interventions, matched on
virtual columns (segment * T + column) so the two segments of a row never collide.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from ..interventions import Interventions, Patch
from ..models.config import ModelConfig
from ..models.forward import Context, Rows, block, rope_tables, unembed


class Layout(NamedTuple):
    """Where everything sits in the batch of one restoration program: `rows` rows of packed column segments, each
    repeated for every noise sample (B = rows x samples, R positions per row)."""

    rows: Rows  # virtual columns (segment * T + column, where patches land), rotary tables, self attention [B, R, R]
    cols: jax.Array  # [rows, R] the absolute column of each position
    ctx_mask: jax.Array  # [B, R, T] the corrupted run's columns each position attends to: those before its segment
    is_start: jax.Array  # [B, R] each segment's first position: the restored token
    last: jax.Array  # [B, 2] each segment's final position (T - 1), where p(answer) is read
    token: jax.Array  # [2, B] each segment's restored token as a virtual column (-1: an empty segment)
    restored: jax.Array  # [rows, 2] each segment's restored token (0 for an empty one)


def layout(cfg: ModelConfig, rows: dict[str, jax.Array], samples: int, n_tokens: int) -> Layout:
    """The Layout of a RowPlan's arrays for `samples` noise samples of a T-token prompt."""
    seg_start, cols, seg, valid, last = (rows[k] for k in ("seg_start", "cols", "seg", "valid", "last"))
    n_rows = cols.shape[0]
    own_start = jnp.take_along_axis(jnp.concatenate([seg_start, jnp.zeros((n_rows, 1), jnp.int32)], 1), seg, 1)
    self_mask = (seg[:, :, None] == seg[:, None, :]) & (cols[:, None, :] <= cols[:, :, None]) & valid[:, None, :]
    token = jnp.where(seg_start >= 0, jnp.arange(2)[None] * n_tokens + seg_start, -1).T
    return Layout(
        rows=Rows(
            _tile(seg * n_tokens + cols, samples), rope_tables(cfg, _tile(cols, samples)), _tile(self_mask, samples)
        ),
        cols=cols,
        ctx_mask=_tile(jnp.arange(n_tokens)[None, None, :] < own_start[:, :, None], samples),
        is_start=_tile((cols == own_start) & valid, samples),
        last=_tile(last, samples),
        token=jnp.repeat(token, samples, axis=1),
        restored=jnp.maximum(seg_start, 0),
    )


def _rows(x: jax.Array, cols: jax.Array) -> jax.Array:
    """[S, T, ...] per-sample values → [rows * S, R, ...] laid out as the rows' columns (row-major, then sample)."""
    g = jnp.swapaxes(x[:, cols], 0, 1)
    return g.reshape(-1, *g.shape[2:])


def _tile(x: jax.Array, samples: int) -> jax.Array:
    """[rows, ...] → [rows * samples, ...], the same for every sample of a row."""
    return jnp.repeat(x, samples, axis=0)


def _per_sample(x: jax.Array, n_rows: int) -> jax.Array:
    """[S, ...] → [rows * S, ...]: every row gets each sample's value (the batch is row-major, then sample)."""
    return jnp.tile(x[None], (n_rows,) + (1,) * x.ndim).reshape(n_rows * x.shape[0], *x.shape[1:])


def start_state(lay: Layout, clean: dict, corrupt: dict, first: jax.Array, restore_input: bool) -> jax.Array:
    """[B, R, D]: the corrupted input of layer `first` at every position; with restore_input, the restored token
    set to its clean value (a hidden-state restoration)."""
    h = _rows(corrupt["inputs"][first], lay.cols)
    if restore_input:
        samples = h.shape[0] // lay.cols.shape[0]
        h = jnp.where(lay.is_start[..., None], _tile(clean["inputs"][first][lay.cols], samples), h)
    return h


def patch_values(lay: Layout, clean: dict, corrupt: dict, layer: jax.Array, source: str) -> jax.Array:
    """[2, B, D]: the module output written at each segment's restored token in `layer`: the clean run's (a
    window restoration) or the corrupted run's own (a severed path)."""
    if source == "clean":
        samples = lay.last.shape[0] // lay.cols.shape[0]
        return jnp.repeat(jnp.swapaxes(clean["site"][layer][lay.restored], 0, 1), samples, axis=1)
    v = corrupt["site"][layer][:, lay.restored]  # [S, rows, 2, D]
    return jnp.transpose(v, (2, 1, 0, 3)).reshape(2, lay.last.shape[0], -1)


def _finals(lay: Layout, h: jax.Array) -> jax.Array:
    """[B, 2, D]: each segment's final residual."""
    return h[jnp.arange(h.shape[0])[:, None], lay.last]


def _switch(lay: Layout, clean, corrupt, lane: tuple, restore_input: bool, s: jax.Array, h: jax.Array, fin: jax.Array):
    """Between layer steps: when slot 0's layers are done, keep its finals and start slot 1; keep slot 1's at its end."""
    start, count = lane[0], lane[1]
    end_a = s == count[0]
    fin = fin.at[0].set(jnp.where(end_a, _finals(lay, h), fin[0]))
    h = jnp.where(end_a, start_state(lay, clean, corrupt, start[1], restore_input), h)
    fin = fin.at[1].set(jnp.where(s == count[0] + count[1], _finals(lay, h), fin[1]))
    return h, fin


def run_lane(
    cfg: ModelConfig,
    params: dict,
    lay: Layout,
    clean: dict,
    corrupt: dict,
    lane: tuple[jax.Array, jax.Array, jax.Array, jax.Array],
    *,
    steps: int,
    site: str | None,
    source: str,
    restore_input: bool,
) -> jax.Array:
    """[2, B, 2, D]: one lane's two restorations (slot 0's layers, then slot 1's), scanned over `steps` layer steps.

    lane = (start, count, lo, hi), each [2]: a slot's first layer, its number of layers, and the layers [lo, hi)
    whose `site` output is patched."""
    start, count, lo, hi = lane
    n_rows = lay.cols.shape[0]

    def step(carry: tuple[jax.Array, jax.Array], s: jax.Array) -> tuple[tuple[jax.Array, jax.Array], None]:
        h, fin = _switch(lay, clean, corrupt, lane, restore_input, s, *carry)
        in_a = s < count[0]
        layer = jnp.clip(jnp.where(in_a, start[0] + s, start[1] + s - count[0]), 0, cfg.n_layers - 1)
        ctx = Context(_per_sample(corrupt["k"][layer], n_rows), _per_sample(corrupt["v"][layer], n_rows), lay.ctx_mask)
        iv = Interventions()
        if site is not None:
            slot = jnp.where(in_a, 0, 1)
            active = (layer >= lo[slot]) & (layer < hi[slot])
            patch = Patch(jnp.where(active, layer, -1) * jnp.ones(2, jnp.int32), lay.token, patch_values(lay, clean, corrupt, layer, source))  # fmt: skip
            iv = Interventions(**{site: patch})
        h, _ = block(cfg, jax.tree.map(lambda a: a[layer], params["blocks"]), h, layer, lay.rows, ctx, iv)
        return (h, fin), None

    h0 = start_state(lay, clean, corrupt, start[0], restore_input)
    fin0 = jnp.zeros((2, h0.shape[0], 2, h0.shape[-1]), h0.dtype)
    (h, fin), _ = lax.scan(step, (h0, fin0), jnp.arange(steps))
    return _switch(lay, clean, corrupt, lane, restore_input, jnp.int32(steps), h, fin)[1]


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
    lay = layout(cfg, rows, samples, n_tokens)
    lane = partial(run_lane, cfg, params, lay, clean, corrupt, steps=steps, site=site, source=source, restore_input=restore_input)  # fmt: skip
    lanes = (plan["start"], plan["count"], plan["lo"], plan["hi"])
    if chunk == 1:  # one lane at a time: plain matmuls with the lane's own weights, no batched gather
        finals = lax.map(lane, lanes)
    elif chunk >= plan["start"].shape[0]:
        finals = jax.vmap(lambda *x: lane(x))(*lanes)
    else:
        finals = lax.map(lane, lanes, batch_size=chunk)

    def answer_prob(fin: jax.Array) -> jax.Array:
        logits = unembed(cfg, params, fin)
        return jnp.exp(logits[..., answer] - jax.nn.logsumexp(logits, axis=-1))

    probs = lax.map(answer_prob, finals)  # [lanes, 2, B, 2]
    probs = probs.reshape(probs.shape[0], 2, rows["cols"].shape[0], samples, 2)
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
