"""The v* search that ROME (`compute_v`) and MEMIT (`compute_z`) share: Adam on a vector δ added at the fact token,
so that the model says the new object after every context template while the subject keeps its meaning.

    loss = mean over templates of the target's mean NLL
         + kl_factor · KL(now ‖ unedited) of the next token after the subject in "{subject} is a" (batch mean)
         + v_weight_decay · ‖δ‖ / ‖v_init‖²

with early stop once the loss is below 5e-2, and δ projected back into the ball of radius
clamp_norm_factor · ‖v_init‖ after every step — all as in the original code. The whole search is one jitted
`lax.while_loop`, over the K requests of a batch at once: their prompts are rows of one forward, each row adds
its own request's δ, and each request keeps its own loss, early stop and clamp (Adam is elementwise, so this is
K separate searches computed together). `optimise_v` computes each step only where δ can change anything, or, with
fast=False, the straightforward way (a full forward per step), for checks; both add δ through the same additive
interventions (`at_site`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from tqdm.auto import tqdm

from ..interventions import Interventions, Patch
from ..models.config import ModelConfig
from ..models.forward import (
    Context,
    Rows,
    embed,
    forward_tokens,
    positions_from_mask,
    rope_tables,
    run_layers,
    unembed,
    unstack,
    wide,
)
from ..models.lm import LM
from ..tokens import fact_index, pad_id, padded_width
from .requests import Request

KL_PROMPTS = ("{} is a",)
LOSS_COLUMNS = ("total", "nll", "kl", "weight_decay")
EARLY_STOP = 5e-2


@dataclasses.dataclass(frozen=True)
class Settings:
    """The v* search's hyperparameters (static under jit; the rest of a method's hyperparameters is not)."""

    steps: int
    lr: float
    weight_decay: float
    clamp_norm_factor: float
    kl_factor: float

    @classmethod
    def of(cls, hp: Any) -> Settings:
        """From RomeHparams or MemitHparams (their v_* fields)."""
        return cls(hp.v_num_grad_steps, hp.v_lr, hp.v_weight_decay, hp.clamp_norm_factor, hp.kl_factor)


@struct.dataclass
class VBatch:
    """The prompts of the v* search for K requests, request after request: each one's rewriting prompts
    (context + prompt + target[:-1]), then its KL prompts. A pytree: it crosses jit as one value."""

    ids: np.ndarray  # [B, T] left-padded
    mask: np.ndarray
    fact_cols: np.ndarray  # [B] the column where δ is added (the fact token)
    out_cols: np.ndarray  # [B, N] columns whose logits the loss reads (KL rows: the fact column); N: the longest
    # target rounded up to a power of two, so that targets of similar lengths share one compiled search
    targets: np.ndarray  # [B, N] the target ids read at out_cols (rewriting rows; 0 where unused)
    target_mask: np.ndarray  # [B, N] 1.0 where out_cols holds one of the row's target tokens
    owner: np.ndarray  # [B] the request each row belongs to
    nll_weight: np.ndarray  # [K, B] 1 / (rewriting rows) on request k's rewriting rows: the mean over templates
    kl_weight: np.ndarray  # [K, B] 1 / (KL rows) on request k's KL rows: the batch mean of the KL term
    first_rows: np.ndarray  # [K] each request's first row (where v_init is read)
    rows: np.ndarray | None = None  # [B, R] the fast search's columns (with_rows); None for the full-forward one

    def with_rows(self) -> VBatch:
        """The batch with `rows`: each row's columns from its fact token on, clipped at the end (masked as padding
        there). R, the longest such run, is rounded up to a multiple of 8 so that requests of similar lengths share
        one compiled search: over an evaluation, compiling for every new R cost far more than the few extra
        columns."""
        width = self.ids.shape[1]
        run = padded_width(width - int(self.fact_cols.min()), 8)
        return self.replace(rows=np.minimum(self.fact_cols[:, None] + np.arange(run)[None], width - 1))


def v_batch(
    lm: LM,
    reqs: Sequence[Request],
    templates: Sequence[str],
    target_ids: Sequence[Sequence[int]],
    fact_token: str,
) -> VBatch:
    """Tokenise the v* prompts of each request. The fact token is found by the subject's placeholder, as the
    original does; the prompt and the target are tokenised apart and joined, so the target's ids are exactly
    those it scores."""
    tok = lm.tokenizer
    rows, facts, owner, n_targets, rewriting = [], [], [], [], []
    for k, (req, target) in enumerate(zip(reqs, target_ids, strict=True)):
        prompts = [t.replace("{}", req.prompt) for t in templates] + list(KL_PROMPTS)
        for i, prompt in enumerate(prompts):
            row = tok(prompt.replace("{}", req.subject))["input_ids"]
            is_rewrite = i < len(templates)
            rows.append(row + list(target[:-1]) if is_rewrite else row)
            facts.append(fact_index(tok, prompt, req.subject, fact_token))
            owner.append(k)
            n_targets.append(len(target) if is_rewrite else 0)
            rewriting.append(is_rewrite)
    b, n = len(rows), 1 << (max(len(t) for t in target_ids) - 1).bit_length()  # N a power of two: fewer programs
    width = padded_width(max(len(r) for r in rows), 8)
    ids = np.full((b, width), pad_id(tok), np.int32)
    mask = np.zeros((b, width), np.int32)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :], mask[i, width - len(r) :] = r, 1
    fact_cols = np.array([width - len(r) + f for r, f in zip(rows, facts, strict=True)], np.int32)
    out_cols = np.repeat(fact_cols[:, None], n, 1)
    targets = np.zeros((b, n), np.int32)
    target_mask = np.zeros((b, n), np.float32)
    for i, m in enumerate(n_targets):
        if m:  # the target's tokens sit at the row's last m columns; the rest of its N columns repeat the first
            out_cols[i, :m] = np.arange(width - m, width)
            out_cols[i, m:] = width - m
            targets[i, :m] = target_ids[owner[i]]
            target_mask[i, :m] = 1.0
    owner_arr, rewriting_arr = np.array(owner, np.int32), np.array(rewriting)
    of = np.arange(len(reqs))[:, None] == owner_arr[None]  # [K, B]
    nll_weight = (of & rewriting_arr).astype(np.float32)
    kl_weight = (of & ~rewriting_arr).astype(np.float32)
    return VBatch(
        ids, mask, fact_cols, out_cols.astype(np.int32), targets, target_mask, owner_arr,
        nll_weight / nll_weight.sum(1, keepdims=True), kl_weight / kl_weight.sum(1, keepdims=True),
        np.argmax(of, axis=1).astype(np.int32),
    )  # fmt: skip


def objective(
    nll_log_probs: jax.Array,
    kl_log_probs: jax.Array,
    batch: VBatch,
    kl_init: jax.Array,
    delta: jax.Array,
    v_init: jax.Array,
    hp: Settings,
) -> jax.Array:
    """[K, 4]: each request's loss and its three terms (LOSS_COLUMNS), each as the original prints it.

    nll_log_probs [B, N, V] at out_cols; kl_log_probs [B, V] at the fact column (only the KL rows count). ‖δ‖ has
    gradient 0 at δ = 0 here (optax.safe_norm), as in PyTorch; a plain norm's would be NaN at the first step.
    """
    picked = jnp.take_along_axis(nll_log_probs, batch.targets[..., None], axis=-1)[..., 0]
    tmask = batch.target_mask
    row_nll = -(picked * tmask).sum(-1) / jnp.maximum(tmask.sum(-1), 1.0)
    row_kl = jnp.sum(jnp.exp(kl_log_probs) * (kl_log_probs - kl_init), axis=-1)
    nll = batch.nll_weight @ row_nll
    kl = hp.kl_factor * (batch.kl_weight @ row_kl)
    decay = hp.weight_decay * optax.safe_norm(delta, 0.0, axis=-1) / jnp.sum(v_init * v_init, axis=-1)
    return jnp.stack([nll + kl + decay, nll, kl, decay], axis=-1)


LogProbs = Callable[[jax.Array], tuple[jax.Array, jax.Array]]


def adam_search(log_probs: LogProbs, v_init: jax.Array, batch: VBatch, hp: Settings) -> tuple[jax.Array, jax.Array]:
    """Adam on δ [K, D] from 0 with the original's early stop and norm clamp, per request: (δ, losses [K, steps, 4],
    NaN after a request stopped). The loop ends when every request has stopped.

    log_probs(δ) → (log-probs [B, N, V] at out_cols, [B, V] at the fact column for the KL term). The KL
    reference is the first evaluation's (δ = 0: the unedited model), as the original records it.
    """

    def loss(delta: jax.Array, kl_init: jax.Array, first: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        nll_lp, kl_lp = log_probs(delta)
        kl_init = jnp.where(first, jax.lax.stop_gradient(kl_lp), kl_init)
        terms = objective(nll_lp, kl_lp, batch, kl_init, delta, v_init, hp)
        return terms[:, 0].sum(), (terms, kl_init)

    tx = optax.adam(hp.lr)
    max_norm = hp.clamp_norm_factor * jnp.linalg.norm(v_init, axis=-1, keepdims=True)

    def freeze(stop: jax.Array) -> Callable[[jax.Array, jax.Array], jax.Array]:
        """Keep a stopped request's rows of an [K, ...] state; scalars (Adam's step count) move on."""
        return lambda old, new: new if old.ndim == 0 else jnp.where(stop.reshape(-1, *[1] * (old.ndim - 1)), old, new)

    def body(state):
        i, delta, opt, losses, kl_init, done = state
        (_, (terms, kl_init)), grad = jax.value_and_grad(loss, has_aux=True)(delta, kl_init, i == 0)
        stop = done | (terms[:, 0] < EARLY_STOP) | (i == hp.steps - 1)
        updates, new_opt = tx.update(grad, opt, delta)
        new = optax.apply_updates(delta, updates)
        norm = jnp.linalg.norm(new, axis=-1, keepdims=True)
        new = jnp.where(norm > max_norm, new * (max_norm / norm), new)
        losses = losses.at[:, i].set(jnp.where(done[:, None], jnp.nan, terms))
        return i + 1, freeze(stop)(delta, new), jax.tree.map(freeze(stop), opt, new_opt), losses, kl_init, stop

    delta0 = jnp.zeros_like(v_init)
    _, kl_shape = jax.eval_shape(log_probs, delta0)
    k = v_init.shape[0]
    losses0 = jnp.full((k, hp.steps, len(LOSS_COLUMNS)), jnp.nan, wide(v_init.dtype))
    done0 = jnp.zeros(k, bool)
    init = (0, delta0, tx.init(delta0), losses0, jnp.zeros(kl_shape.shape, kl_shape.dtype), done0)
    _, delta, _, losses, _, _ = jax.lax.while_loop(lambda s: ~jnp.all(s[-1]), body, init)
    return delta, losses


SITES = ("mlp", "resid")
"""Where δ is added: ROME's site, the MLP output (v_init is the MLP output, v* = v_init + δ), or MEMIT's, the residual
after the layer (v_init is the residual, the target z = v_init + δ). On Gemma 2 and 3 the MLP output passes a norm
before it joins the residual, so the two differ."""

STATIC = ("cfg", "layer", "hp", "nll_layer", "fast")


def at_site(site: jax.Array, layer: int, cols: jax.Array, delta: jax.Array) -> Interventions:
    """δ [B, D] added at `layer` in column cols [B] of each row, at SITES[site]. The other site's write is switched
    off (layer -1): the site is data, not a static argument (programs still differ by layer and v* settings)."""
    layers = jnp.where(jnp.arange(len(SITES)) == site, layer, -1).astype(jnp.int32)
    mlp_add, resid_add = (Patch(layers[i : i + 1], cols[None], delta[None]) for i in range(len(SITES)))
    return Interventions(mlp_add=mlp_add, resid_add=resid_add)


def _unedited(
    cfg: ModelConfig, params: dict, batch: VBatch, layer: int, site: jax.Array, capture: tuple[str, ...]
) -> tuple[dict[str, jax.Array], jax.Array]:
    """The unedited run's activations (both sites and `capture`, every layer), and each request's v_init [K, D]:
    SITES[site] at `layer`, read at its first row's fact column."""
    iv = Interventions().capturing(*SITES, *capture)
    fact_cols, first = batch.fact_cols, batch.first_rows
    captured = forward_tokens(cfg, params, batch.ids, batch.mask, iv, fact_cols[:, None]).captured
    v_init = jnp.stack([captured[name][layer, first, fact_cols[first]] for name in SITES])[site]
    return captured, v_init


def _layer_input(cfg: ModelConfig, params: dict, batch: VBatch, resid: jax.Array, layer: int) -> jax.Array:
    """[B, 1, D]: the unedited residual entering `layer` at each row's fact column (the embeddings for layer 0)."""
    cols = batch.fact_cols[:, None]
    if layer > 0:
        return jnp.take_along_axis(resid[layer - 1], cols[..., None], axis=1)
    positions = jnp.take_along_axis(positions_from_mask(batch.mask), cols, axis=1)
    return embed(cfg, params, jnp.take_along_axis(batch.ids, cols, axis=1), positions)


def _fast_log_probs(
    cfg: ModelConfig,
    params: dict,
    batch: VBatch,
    captured: dict[str, jax.Array],
    *,
    layer: int,
    site: jax.Array,
    nll_layer: int | None,
) -> LogProbs:
    """log_probs(δ) of the v* search (see adam_search), computed only where δ can change anything.

    `layer` runs at the fact columns alone (δ enters there); the layers above run at the columns from each row's
    fact token on (`rows` [B, R], see VBatch.with_rows), attending to a cache of the unedited run's earlier columns; logits
    only at the columns the loss reads. Layers' weights are sliced once, outside the Adam loop."""
    ids, mask, fact_cols, out_cols, rows = batch.ids, batch.mask, batch.fact_cols, batch.out_cols, batch.rows
    valid = rows >= fact_cols[:, None] + jnp.arange(rows.shape[1])[None]  # clipped positions are padding
    positions = jnp.take_along_axis(positions_from_mask(mask), rows, axis=1)
    run = Rows(rows, rope_tables(cfg, positions), jnp.tril(jnp.ones((rows.shape[1],) * 2, bool))[None] & valid[:, None])
    fact = Rows(rows[:, :1], jax.tree.map(lambda a: a[:, :1], run.rope), run.self_mask[:, :1, :1])
    ctx_mask = (jnp.arange(ids.shape[1])[None, None, :] < fact_cols[:, None, None]) & mask.astype(bool)[:, None, :]
    blocks = unstack(params["blocks"], layer, cfg.n_layers)
    entering = _layer_input(cfg, params, batch, captured["resid"], layer)
    start = jnp.take_along_axis(captured["resid"][layer], rows[..., None], axis=1)
    picks = (out_cols - fact_cols[:, None])[..., None]
    mid = cfg.n_layers if nll_layer is None else nll_layer + 1

    def segment(h: jax.Array, rows: Rows, first: int, stop: int, iv: Interventions) -> jax.Array:
        ctx = Context(captured["attn_k"][first:stop], captured["attn_v"][first:stop], ctx_mask)
        blocks_here = blocks[first - layer : stop - layer]
        return run_layers(cfg, blocks_here, h, rows=rows, iv=iv, first=first, stop=stop, ctx=ctx)[0]

    def read(h: jax.Array) -> jax.Array:
        return jax.nn.log_softmax(unembed(cfg, params, jnp.take_along_axis(h, picks, axis=1)), axis=-1)

    def log_probs(delta: jax.Array) -> tuple[jax.Array, jax.Array]:
        edited = segment(entering, fact, layer, layer + 1, at_site(site, layer, fact_cols, delta[batch.owner]))
        h_mid = segment(start.at[:, :1].set(edited), run, layer + 1, mid, Interventions())
        final = read(segment(h_mid, run, mid, cfg.n_layers, Interventions()))
        return (final if nll_layer is None else read(h_mid)), final[:, 0]

    return log_probs


def _full_log_probs(
    cfg: ModelConfig,
    params: dict,
    batch: VBatch,
    captured: dict[str, jax.Array],
    *,
    layer: int,
    site: jax.Array,
    nll_layer: int | None,
) -> LogProbs:
    """log_probs(δ) done the straightforward way, for checks: every step a full forward with δ added by at_site."""
    ids, mask, fact_cols, out_cols = batch.ids, batch.mask, batch.fact_cols, batch.out_cols

    def pick(x: jax.Array) -> jax.Array:
        return jax.nn.log_softmax(jnp.take_along_axis(x, out_cols[..., None], axis=1), axis=-1)

    def log_probs(delta: jax.Array) -> tuple[jax.Array, jax.Array]:
        iv = at_site(site, layer, fact_cols, delta[batch.owner]).capturing("resid")
        out = forward_tokens(cfg, params, ids, mask, iv, None)
        final = pick(out.logits)
        nll = final if nll_layer is None else pick(unembed(cfg, params, out.captured["resid"][nll_layer]))
        return nll, final[:, 0]

    return log_probs


@partial(jax.jit, static_argnames=STATIC)
def optimise_v(
    cfg: ModelConfig,
    params: dict,
    batch: VBatch,
    *,
    layer: int,
    site: jax.Array,
    hp: Settings,
    nll_layer: int | None = None,
    fast: bool = True,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The v* search of K requests with δ added at SITES[site] of `layer` (see at_site): (δ [K, D], v_init [K, D],
    losses [K, steps, 4]). fast: each step computed only where δ can change anything (_fast_log_probs), else
    the straightforward way (_full_log_probs).

    batch: the VBatch (with_rows() when fast). nll_layer (MEMIT's v_loss_layer) reads the NLL from that layer's residual through
    the final norm and head; None reads the model's logits (ROME always does). The KL term always reads the logits."""
    captured, v_init = _unedited(cfg, params, batch, layer, site, ("resid", "attn_k", "attn_v") if fast else ())
    build = _fast_log_probs if fast else _full_log_probs
    log_probs = build(cfg, params, batch, captured, layer=layer, site=site, nll_layer=nll_layer)
    delta, losses = adam_search(log_probs, v_init, batch, hp)
    return delta, v_init, losses


def search(
    lm: LM,
    reqs: Sequence[Request],
    templates: Sequence[str],
    target_ids: Sequence[Sequence[int]],
    layer: int,
    hp: Any,
    *,
    site: str = "mlp",
    nll_layer: int | None = None,
    fast: bool = True,
    per_program: int = 8,
    progress: str | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The v* searches of independent requests: (δ [K, D], v_init [K, D], losses [K, steps, 4]) as NumPy arrays
    (δ, v_init in float64), the same as searching each request alone.

    Up to `per_program` requests run as one program (their prompts as rows of one forward); more are split
    into that many at most. hp: RomeHparams or MemitHparams (fact_token and the v_* fields are read).
    progress: the title of a progress bar over the requests (None: no bar)."""
    if len(reqs) != len(target_ids) or not reqs:
        raise ValueError(f"give one target per request and at least one request; got {len(reqs)}, {len(target_ids)}")
    if site not in SITES:
        raise ValueError(f"site={site!r}; accepted: {', '.join(SITES)}")
    n_programs = -(-len(reqs) // per_program)
    size = -(-len(reqs) // n_programs)  # even chunks: at most two program shapes per call
    run = partial(optimise_v, lm.config, lm.params, layer=layer, site=SITES.index(site), hp=Settings.of(hp),
                  nll_layer=nll_layer, fast=fast)  # fmt: skip
    parts = []
    with tqdm(total=len(reqs), desc=progress, disable=progress is None) as bar:
        for a in range(0, len(reqs), size):
            b = v_batch(lm, reqs[a : a + size], templates, target_ids[a : a + size], hp.fact_token)
            parts.append(run(b.with_rows() if fast else b))
            jax.block_until_ready(parts[-1])
            bar.update(len(b.first_rows))
    delta, v_init, losses = (np.concatenate([np.asarray(p[i]) for p in parts]) for i in range(3))
    return delta.astype(np.float64), v_init.astype(np.float64), losses
