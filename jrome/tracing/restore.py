"""The restoration program: every (token, layer) restoration of a batch of prompts, in one jitted call.

Each lane (see `schedule`) runs `block` over its layer steps with that layer's parameters; each row holds two
column segments of one prompt and attends to that prompt's corrupted keys and values for the columns before its
segment. Module outputs are restored or frozen with the ordinary `Patch` interventions, matched on virtual
columns (segment * T + column) so the two segments of a row never collide.

It keeps its own loop over layers rather than calling `run_layers`: a lane's layer at a step is data (its two
slots start at different layers), and the slot switch between steps sits outside any one layer's block.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..interventions import Interventions, Patch
from ..models.config import ModelConfig
from ..models.forward import Context, Rows, block, rope_tables, unembed
from .runs import RunArrays
from .schedule import LayerPlan, Restoration, RowPlan


class Layout(NamedTuple):
    """Where everything sits in the batch of one restoration program: the plan's rows, each repeated for every
    noise sample (B = rows x samples, R positions per row)."""

    rows: Rows  # virtual columns (segment * T + column, where patches land), rotary tables, self attention [B, R, R]
    plan: RowPlan
    ctx_mask: jax.Array  # [B, R, T] the corrupted run's columns each position attends to: those before its segment
    is_start: jax.Array  # [B, R] each segment's first position: the restored token
    last: jax.Array  # [B, 2] each segment's final position, where p(answer) is read
    token: jax.Array  # [2, B] each segment's restored token as a virtual column (-1: an empty segment)
    restored: jax.Array  # [rows, 2] each segment's restored token (0 for an empty one)
    samples: int


def layout(cfg: ModelConfig, plan: RowPlan, samples: int, n_cols: int) -> Layout:
    """The Layout of a RowPlan for `samples` noise samples of prompts padded to n_cols columns."""
    seg_start, cols, seg, valid = plan.seg_start, plan.cols, plan.seg, plan.valid
    n_rows = cols.shape[0]
    own_start = jnp.take_along_axis(jnp.concatenate([seg_start, jnp.zeros((n_rows, 1), jnp.int32)], 1), seg, 1)
    self_mask = (seg[:, :, None] == seg[:, None, :]) & (cols[:, None, :] <= cols[:, :, None]) & valid[:, None, :]
    token = jnp.where(seg_start >= 0, jnp.arange(2)[None] * n_cols + seg_start, -1).T
    tile = partial(jnp.repeat, repeats=samples, axis=0)
    return Layout(
        rows=Rows(tile(seg * n_cols + cols), rope_tables(cfg, tile(cols)), tile(self_mask)),
        plan=plan,
        ctx_mask=tile(jnp.arange(n_cols)[None, None, :] < own_start[:, :, None]),
        is_start=tile((cols == own_start) & valid),
        last=tile(plan.last),
        token=jnp.repeat(token, samples, axis=1),
        restored=jnp.maximum(seg_start, 0),
        samples=samples,
    )


def _per_row(lay: Layout, x: jax.Array, cols: jax.Array) -> jax.Array:
    """x [F, S, T, ...] (one layer) at each row's fact and columns cols [rows, C]: [B, C, ...]."""
    fact, samples = lay.plan.fact, jnp.arange(lay.samples)
    g = x[fact[:, None, None], samples[None, :, None], cols[:, None, :]]  # [rows, S, C, ...]
    return g.reshape(-1, *g.shape[2:])


def _clean_per_row(lay: Layout, x: jax.Array, cols: jax.Array) -> jax.Array:
    """x [F, T, ...] (one layer, clean) at each row's fact and columns cols [rows, C], for every sample: [B, C, ...]."""
    return jnp.repeat(x[lay.plan.fact[:, None], cols], lay.samples, axis=0)


def start_state(lay: Layout, runs: RunArrays, what: Restoration, first: jax.Array) -> jax.Array:
    """[B, R, D]: the corrupted input of layer `first` at every position; for a hidden-state restoration, the
    restored token set to its clean value."""
    h = _per_row(lay, runs.corrupt_inputs[first], lay.plan.cols)
    clean = _clean_per_row(lay, runs.clean_inputs[first], lay.plan.cols)
    return jnp.where(what.restore_input & lay.is_start[..., None], clean, h)


def patch_values(lay: Layout, runs: RunArrays, what: Restoration) -> jax.Array:
    """[L, 2, B, D]: per layer, the module output written at each segment's restored token: the clean run's (a
    window) or the corrupted run's own (a severed path), of the MLP or the attention. Gathered once per call."""
    fact, restored, samples = lay.plan.fact[:, None, None], lay.restored[:, None, :], jnp.arange(lay.samples)
    clean = [x[:, fact, restored] for x in (runs.clean_mlp, runs.clean_attn)]  # [L, rows, 1, 2, D]
    corrupt = [x[:, fact, samples[None, :, None], restored] for x in (runs.corrupt_mlp, runs.corrupt_attn)]
    mlp, attn = (jnp.where(what.from_clean, c, x) for c, x in zip(clean, corrupt, strict=True))
    values = jnp.where(what.site_is_mlp, mlp, attn)  # [L, rows, S, 2, D]
    return jnp.swapaxes(values.reshape(values.shape[0], -1, 2, values.shape[-1]), 1, 2)


def _finals(lay: Layout, h: jax.Array) -> jax.Array:
    """[B, 2, D]: each segment's final residual."""
    return h[jnp.arange(h.shape[0])[:, None], lay.last]


class Lane(NamedTuple):
    """One lane of a LayerPlan: per slot [2], the first layer run, the layers run, and the patched layers [lo, hi)."""

    start: jax.Array
    count: jax.Array
    lo: jax.Array
    hi: jax.Array


def _switch(lay: Layout, runs: RunArrays, what: Restoration, lane: Lane, s: jax.Array, h: jax.Array, fin):
    """Between layer steps: when slot 0's layers are done, keep its finals and start slot 1; keep slot 1's at its end."""

    def start_b(h: jax.Array, fin: jax.Array) -> tuple[jax.Array, jax.Array]:
        return start_state(lay, runs, what, lane.start[1]), fin.at[0].set(_finals(lay, h))

    h, fin = lax.cond(s == lane.count[0], start_b, lambda h, fin: (h, fin), h, fin)
    fin = fin.at[1].set(jnp.where(s == lane.count[0] + lane.count[1], _finals(lay, h), fin[1]))
    return h, fin


def _interventions(lay: Layout, values: jax.Array, what: Restoration, lane: Lane, layer, in_a) -> Interventions:
    """The patches of a lane's layer step: its slot's restored token, at the MLP or attention site, in [lo, hi);
    values [2, B, D] are this layer's."""
    slot = jnp.where(in_a, 0, 1)
    active = (layer >= lane.lo[slot]) & (layer < lane.hi[slot])
    at = jnp.where(active, layer, -1) * jnp.ones(2, jnp.int32)
    mlp = Patch(jnp.where(what.site_is_mlp, at, -1), lay.token, values)
    attn = Patch(jnp.where(what.site_is_mlp, -1, at), lay.token, values)
    return Interventions(mlp=mlp, attn=attn)


def _context(lay: Layout, x: jax.Array) -> jax.Array:
    """x [F, S, T, ...] (one layer's corrupted keys or values) as each row's context: [B, T, ...]."""
    g = x[lay.plan.fact]
    return g.reshape(-1, *g.shape[2:])


def run_lane(
    cfg: ModelConfig, params: dict, lay: Layout, runs: RunArrays, what: Restoration, values, steps, lane: Lane
):
    """[2, B, 2, D]: one lane's two restorations (slot 0's layers, then slot 1's), over `steps` layer steps; values
    [L, 2, B, D] are the patch values of every layer (`patch_values`)."""

    def step(s: jax.Array, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        h, fin = _switch(lay, runs, what, lane, s, *carry)
        in_a = s < lane.count[0]
        layer = jnp.clip(jnp.where(in_a, lane.start[0] + s, lane.start[1] + s - lane.count[0]), 0, cfg.n_layers - 1)
        ctx = Context(_context(lay, runs.corrupt_k[layer]), _context(lay, runs.corrupt_v[layer]), lay.ctx_mask)
        iv = _interventions(lay, values[layer], what, lane, layer, in_a)
        h, _ = block(cfg, jax.tree.map(lambda a: a[layer], params["blocks"]), h, layer, lay.rows, ctx, iv)
        return h, fin

    h0 = start_state(lay, runs, what, lane.start[0])
    fin0 = jnp.zeros((2, h0.shape[0], 2, h0.shape[-1]), h0.dtype)
    h, fin = lax.fori_loop(0, steps, step, (h0, fin0))
    return _switch(lay, runs, what, lane, steps, h, fin)[1]


@partial(jax.jit, static_argnames=("cfg", "chunk"))
def restoration_probs(
    cfg: ModelConfig,
    params: dict,
    runs: RunArrays,
    *,
    layers: LayerPlan,
    rows: RowPlan,
    what: Restoration,
    chunk: int,
) -> jax.Array:
    """p(answer) at each prompt's last token, averaged over noise samples, for every slot of every lane:
    [lanes, 2 slots, rows, 2 segments]. chunk: lanes run together (vmapped); 1 runs them one after another."""
    samples, n_cols = runs.embed_add.shape[1:3]
    lay = layout(cfg, rows, samples, n_cols)
    lane = partial(run_lane, cfg, params, lay, runs, what, patch_values(lay, runs, what), layers.steps)
    per_lane = Lane(layers.start, layers.count, layers.lo, layers.hi)
    if chunk == 1:  # one lane at a time: plain matmuls with the lane's own weights, no batched gather
        finals = lax.map(lane, per_lane)
    else:
        finals = lax.map(lane, per_lane, batch_size=min(chunk, layers.start.shape[0]))
    answer = jnp.repeat(runs.answer[rows.fact], samples)  # [B]

    def answer_prob(fin: jax.Array) -> jax.Array:  # [2, B, 2, D] -> [2, B, 2]
        logits = unembed(cfg, params, fin)
        picked = jnp.take_along_axis(logits, answer[None, :, None, None], axis=-1)[..., 0]
        return jnp.exp(picked - jax.nn.logsumexp(logits, axis=-1))

    probs = lax.map(answer_prob, finals)  # [lanes, 2, B, 2]
    return probs.reshape(probs.shape[0], 2, -1, samples, 2).mean(axis=3)


def scatter_scores(probs: np.ndarray, layers: LayerPlan, rows: RowPlan, grids: list[np.ndarray]) -> None:
    """Write slot probabilities [lanes, 2, rows, 2] into each fact's [T, L] score grid (grids[fact])."""
    lane, slot, row, seg = np.nonzero(
        (np.asarray(layers.layer)[:, :, None, None] >= 0) & (np.asarray(rows.seg_start)[None, None] >= 0)
    )
    facts, tokens = np.asarray(rows.fact)[row], np.asarray(rows.seg_start)[row, seg]
    for f, t, layer, p in zip(
        facts, tokens, np.asarray(layers.layer)[lane, slot], probs[lane, slot, row, seg], strict=True
    ):
        grids[f][t, layer] = p
