"""The v* search that ROME (`compute_v`) and MEMIT (`compute_z`) share: Adam on a vector δ added at the fact token,
so that the model says the new object after every context template while the subject keeps its meaning.

    loss = mean over templates of the target's mean NLL
         + kl_factor · KL(now ‖ unedited) of the next token after the subject in "{subject} is a" (batch mean)
         + v_weight_decay · ‖δ‖ / ‖v_init‖²

with early stop once the loss is below 5e-2, and δ projected back into the ball of radius
clamp_norm_factor · ‖v_init‖ after every step — all as in the original code. The whole search is one jitted
`lax.while_loop`. `optimise_v` computes each step only where δ can change anything; `optimise_v_reference`
is the straightforward version (a full forward with an additive intervention per step), for checks.
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

from ..interventions import Interventions, Patch
from ..models.config import ModelConfig
from ..models.forward import (
    Context,
    Rows,
    forward_tokens,
    positions_from_mask,
    rope_tables,
    run_layers,
    unembed,
    unstack,
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


@dataclasses.dataclass(frozen=True)
class VBatch:
    """The prompts of the v* search: rewriting prompts (context + prompt + target[:-1]), then the KL prompts."""

    ids: np.ndarray  # [B, T] left-padded
    mask: np.ndarray
    fact_cols: np.ndarray  # [B] the column where δ is added (the fact token)
    out_cols: np.ndarray  # [B, n_target] columns whose logits the loss reads (KL rows: the fact column)
    target_ids: np.ndarray  # [n_target]
    n_rewrite: int

    @property
    def rows(self) -> np.ndarray:
        """[B, R]: each row's columns from its fact token on, clipped at the end (masked as padding there).

        R, the longest such run, is rounded up to a multiple of 8 so that requests of similar lengths share
        one compiled search: over an evaluation, compiling for every new R cost far more than the few extra
        columns."""
        width = self.ids.shape[1]
        run = padded_width(width - int(self.fact_cols.min()), 8)
        return np.minimum(self.fact_cols[:, None] + np.arange(run)[None], width - 1)


def v_batch(lm: LM, req: Request, templates: Sequence[str], target_ids: Sequence[int], fact_token: str) -> VBatch:
    """Tokenise the v* prompts. The fact token is found by the subject's placeholder, as the original does; the
    prompt and the target are tokenised apart and joined, so the target's ids are exactly those it scores."""
    tok = lm.tokenizer
    prompts = [t.replace("{}", req.prompt) for t in templates] + list(KL_PROMPTS)
    rows, facts = [], []
    for i, prompt in enumerate(prompts):
        rows.append(tok(prompt.replace("{}", req.subject))["input_ids"])
        if i < len(templates):
            rows[-1] = rows[-1] + list(target_ids[:-1])
        facts.append(fact_index(tok, prompt, req.subject, fact_token))
    width = padded_width(max(len(r) for r in rows), 8)
    ids = np.full((len(rows), width), pad_id(tok), np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :], mask[i, width - len(r) :] = r, 1
    fact_cols = np.array([width - len(r) + f for r, f in zip(rows, facts, strict=True)], np.int32)
    n = len(target_ids)
    out_cols = np.concatenate(
        [
            np.repeat(np.arange(width - n, width)[None], len(templates), 0),
            np.repeat(fact_cols[len(templates) :, None], n, 1),
        ]
    ).astype(np.int32)
    return VBatch(ids, mask, fact_cols, out_cols, np.asarray(target_ids, np.int32), len(templates))


def objective(
    nll_log_probs: jax.Array,
    kl_log_probs: jax.Array,
    targets: jax.Array,
    kl_init: jax.Array,
    delta: jax.Array,
    v_init: jax.Array,
    hp: Settings,
) -> jax.Array:
    """[4]: the loss and its three terms (LOSS_COLUMNS), each as the original prints it.

    nll_log_probs [rewrite rows, n_target, V] at the target positions; kl_log_probs [KL rows, V]. ‖δ‖ has
    gradient 0 at δ = 0 here (optax.safe_norm), as in PyTorch; a plain norm's would be NaN at the first step.
    """
    picked = jnp.take_along_axis(nll_log_probs, targets[None, :, None], axis=-1)[..., 0]
    nll = -picked.mean(axis=-1).mean()
    kl = hp.kl_factor * jnp.sum(jnp.exp(kl_log_probs) * (kl_log_probs - kl_init), axis=-1).mean()
    decay = hp.weight_decay * optax.safe_norm(delta, 0.0) / jnp.sum(v_init * v_init)
    return jnp.stack([nll + kl + decay, nll, kl, decay])


LogProbs = Callable[[jax.Array], tuple[jax.Array, jax.Array]]


def adam_search(
    log_probs: LogProbs, v_init: jax.Array, targets: jax.Array, hp: Settings
) -> tuple[jax.Array, jax.Array]:
    """Adam on δ from 0 with the original's early stop and norm clamp: (δ, losses [steps, 4], NaN after a stop).

    log_probs(δ) → (log-probs at the target positions of the rewriting rows, at the fact token of the KL rows).
    The KL reference is the first evaluation's (δ = 0: the unedited model), as the original records it.
    """

    def loss(delta: jax.Array, kl_init: jax.Array, first: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        nll_lp, kl_lp = log_probs(delta)
        kl_init = jnp.where(first, jax.lax.stop_gradient(kl_lp), kl_init)
        terms = objective(nll_lp, kl_lp, targets, kl_init, delta, v_init, hp)
        return terms[0], (terms, kl_init)

    tx = optax.adam(hp.lr)
    max_norm = hp.clamp_norm_factor * jnp.linalg.norm(v_init)

    def body(state):
        i, delta, opt, losses, kl_init, _ = state
        (total, (terms, kl_init)), grad = jax.value_and_grad(loss, has_aux=True)(delta, kl_init, i == 0)
        stop = (total < EARLY_STOP) | (i == hp.steps - 1)
        updates, new_opt = tx.update(grad, opt, delta)
        new = optax.apply_updates(delta, updates)
        norm = jnp.linalg.norm(new)
        new = jnp.where(norm > max_norm, new * (max_norm / norm), new)
        delta = jnp.where(stop, delta, new)
        opt = jax.tree.map(lambda a, b: jnp.where(stop, a, b), opt, new_opt)
        return i + 1, delta, opt, losses.at[i].set(terms), kl_init, stop

    delta0 = jnp.zeros_like(v_init)
    _, kl_shape = jax.eval_shape(log_probs, delta0)
    losses0 = jnp.full((hp.steps, len(LOSS_COLUMNS)), jnp.nan, jnp.float32)
    init = (0, delta0, tx.init(delta0), losses0, jnp.zeros(kl_shape.shape, jnp.float32), False)
    _, delta, _, losses, _, _ = jax.lax.while_loop(lambda s: ~s[-1], body, init)
    return delta, losses


def _split(log_probs: jax.Array, n_rewrite: int) -> tuple[jax.Array, jax.Array]:
    return log_probs[:n_rewrite], log_probs[n_rewrite:, 0]


STATIC = ("cfg", "layer", "hp", "n_rewrite", "site", "nll_layer")


@partial(jax.jit, static_argnames=STATIC)
def optimise_v(
    cfg: ModelConfig,
    params: dict,
    batch: dict[str, jax.Array],
    *,
    layer: int,
    hp: Settings,
    n_rewrite: int,
    site: str = "mlp",
    nll_layer: int | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The v* search, computing each step only where δ can change anything: (δ, v_init, losses [steps, 4]).

    batch: the arrays of a VBatch (ids, mask, fact_cols, out_cols, target_ids, rows). δ is added to layer's MLP
    output at the fact columns, which is adding it to the residual after the layer; so the same search serves
    ROME (site="mlp": v_init is the MLP output, v* = v_init + δ) and MEMIT (site="resid": v_init is the residual,
    the target z = v_init + δ). nll_layer (MEMIT's v_loss_layer) reads the NLL from that layer's residual
    through the final norm and head; None reads the model's logits (ROME always does). The KL term always reads
    the model's logits.

    Each step runs only the layers above `layer`, only the columns from each row's fact token on (`rows` [B, R],
    see VBatch.rows; earlier columns attend from a cache of the unedited run), and computes logits only at the
    columns the loss reads. The weights of those layers are sliced once, outside the Adam loop.
    """
    ids, mask, fact_cols, out_cols, rows = (batch[k] for k in ("ids", "mask", "fact_cols", "out_cols", "rows"))
    t = ids.shape[1]
    base = forward_tokens(cfg, params, ids, mask, Interventions(capture=("resid", "mlp", "attn_k", "attn_v")), None)
    v_init = base.captured[site][layer, 0, fact_cols[0]]
    valid = rows >= fact_cols[:, None] + jnp.arange(rows.shape[1])[None]  # clipped positions are padding
    positions = jnp.take_along_axis(positions_from_mask(mask), rows, axis=1)
    self_mask = jnp.tril(jnp.ones((rows.shape[1],) * 2, bool))[None] & valid[:, None, :]
    run = Rows(rows, rope_tables(cfg, positions), self_mask)
    ctx_mask = (jnp.arange(t)[None, None, :] < fact_cols[:, None, None]) & mask.astype(bool)[:, None, :]
    start = jnp.take_along_axis(base.captured["resid"][layer], rows[..., None], axis=1)
    above = unstack(params["blocks"], layer + 1, cfg.n_layers)
    picks = (out_cols - fact_cols[:, None])[..., None]
    mid = cfg.n_layers if nll_layer is None else nll_layer + 1

    def segment(h: jax.Array, first: int, stop: int) -> jax.Array:
        ctx = Context(base.captured["attn_k"][first:stop], base.captured["attn_v"][first:stop], ctx_mask)
        blocks = above[first - layer - 1 : stop - layer - 1]
        h, _ = run_layers(cfg, blocks, h, rows=run, iv=Interventions(), first=first, stop=stop, ctx=ctx)
        return h

    def log_probs(delta: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = start.at[:, 0].add(delta.astype(start.dtype))
        h_mid = segment(h, layer + 1, mid)
        h_end = segment(h_mid, mid, cfg.n_layers)
        final = jax.nn.log_softmax(unembed(cfg, params, jnp.take_along_axis(h_end, picks, axis=1)), axis=-1)
        if nll_layer is None:
            return _split(final, n_rewrite)
        at_mid = jax.nn.log_softmax(unembed(cfg, params, jnp.take_along_axis(h_mid, picks, axis=1)), axis=-1)
        return at_mid[:n_rewrite], final[n_rewrite:, 0]

    delta, losses = adam_search(log_probs, v_init, batch["target_ids"], hp)
    return delta, v_init, losses


@partial(jax.jit, static_argnames=STATIC)
def optimise_v_reference(
    cfg: ModelConfig,
    params: dict,
    batch: dict[str, jax.Array],
    *,
    layer: int,
    hp: Settings,
    n_rewrite: int,
    site: str = "mlp",
    nll_layer: int | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The same search done the straightforward way: every step a full forward with δ as an additive intervention."""
    ids, mask, fact_cols, out_cols = (batch[k] for k in ("ids", "mask", "fact_cols", "out_cols"))
    b = ids.shape[0]
    base = forward_tokens(cfg, params, ids, mask, Interventions(capture=(site,)), fact_cols[:, None])
    v_init = base.captured[site][layer, 0, fact_cols[0]]

    def pick(x: jax.Array) -> jax.Array:
        return jax.nn.log_softmax(jnp.take_along_axis(x, out_cols[..., None], axis=1), axis=-1)

    def log_probs(delta: jax.Array) -> tuple[jax.Array, jax.Array]:
        patch = Patch(jnp.array([layer]), fact_cols[None], jnp.broadcast_to(delta, (1, b, delta.shape[0])))
        out = forward_tokens(cfg, params, ids, mask, Interventions(mlp_add=patch, capture=("resid",)), None)
        final = pick(out.logits)
        if nll_layer is None:
            return _split(final, n_rewrite)
        return pick(unembed(cfg, params, out.captured["resid"][nll_layer]))[:n_rewrite], final[n_rewrite:, 0]

    delta, losses = adam_search(log_probs, v_init, batch["target_ids"], hp)
    return delta, v_init, losses


def search(
    lm: LM,
    req: Request,
    templates: Sequence[str],
    target_ids: Sequence[int],
    layer: int,
    hp: Any,
    *,
    site: str = "mlp",
    nll_layer: int | None = None,
    fast: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run the v* search for one request: (δ, v_init, losses [steps, 4]) as NumPy arrays (δ, v_init in float64).

    hp: RomeHparams or MemitHparams (fact_token and the v_* fields are read)."""
    b = v_batch(lm, req, templates, target_ids, hp.fact_token)
    batch = {
        "ids": b.ids, "mask": b.mask, "fact_cols": b.fact_cols, "out_cols": b.out_cols, "target_ids": b.target_ids,
        "rows": b.rows,
    }  # fmt: skip
    fn = optimise_v if fast else optimise_v_reference
    if not fast:
        del batch["rows"]
    settings = Settings.of(hp)
    delta, v_init, losses = fn(
        lm.config, lm.params, batch, layer=layer, hp=settings, n_rewrite=b.n_rewrite, site=site, nll_layer=nll_layer
    )
    return np.asarray(delta, np.float64), np.asarray(v_init, np.float64), np.asarray(losses)
