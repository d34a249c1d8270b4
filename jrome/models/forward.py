"""The forward pass: one pure function for every supported decoder, layers stacked and run under `lax.scan`.

`block` computes one layer for a set of rows and columns and applies the interventions that fall on it;
`run_layers` scans it over the stacked layers. The attention can also read keys and values from a context
(a cache of earlier columns), which is how generation, ROME's v* search and causal tracing skip the work
that an intervention cannot change.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax import lax

from ..interventions import Interventions
from .config import ModelConfig
from .lm import LM

Params = dict[str, Any]


def wide(dtype: Any) -> Any:
    """The dtype norms, attention scores and logits are computed in for activations of `dtype`: float32 for
    bfloat16 and float32, float64 for float64 (a reference-precision run in JAX's 64-bit mode)."""
    return jnp.promote_types(dtype, jnp.float32)


class Context(NamedTuple):
    """Keys and values of earlier columns that the rows may attend to: k, v [B, C, KV, hd] for one layer (with a
    leading [L] axis when given to run_layers for its layers), and mask [B|1, R, C]: which of them each row sees."""

    k: jax.Array
    v: jax.Array
    mask: jax.Array


class Rope(NamedTuple):
    """Rotary tables for the rows being computed: cos, sin [B, R, rotary_dim // 2] in float32 ([B, R, 2, ...]
    with a local theta: see rope_tables)."""

    cos: jax.Array
    sin: jax.Array


class Rows(NamedTuple):
    """The rows a block computes: their token columns cols [R] or [B, R] (interventions land by column), the
    rotary tables at their positions (None with learned positions), and self_mask [B|1, R, R]: which rows each
    row attends to."""

    cols: jax.Array
    rope: Rope | None
    self_mask: jax.Array

    @classmethod
    def causal(cls, cfg: ModelConfig, mask: jax.Array) -> Rows:
        """Every column of padded ids [B, T] with attention mask `mask`: positions skip padding, causal attention."""
        return cls(jnp.arange(mask.shape[-1]), rope_tables(cfg, positions_from_mask(mask)), causal_mask(mask))


@struct.dataclass
class ForwardOutput:
    """Logits [B, P, V] in float32 (P = all tokens, or the positions asked for) and the captured activations."""

    logits: jax.Array
    captured: dict[str, jax.Array]


def _activation(name: str, x: jax.Array) -> jax.Array:
    if name == "gelu_tanh":
        return jax.nn.gelu(x, approximate=True)
    if name == "gelu":
        return jax.nn.gelu(x, approximate=False)
    if name == "silu":
        return jax.nn.silu(x)
    return jax.nn.relu(x)


def norm(cfg: ModelConfig, p: Params, x: jax.Array) -> jax.Array:
    """LayerNorm or RMSNorm, computed in float32 (or wider) and returned in x's dtype."""
    x32 = x.astype(wide(x.dtype))
    if cfg.norm == "rmsnorm":
        y = x32 * lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + cfg.norm_eps)
        if cfg.norm_offset:  # Gemma: (1 + scale) in float32, then cast
            return (y * (p["scale"].astype(x32.dtype) + cfg.norm_offset)).astype(x.dtype)
        return p["scale"] * y.astype(x.dtype)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * lax.rsqrt(var + cfg.norm_eps)
    return (y * p["scale"].astype(x32.dtype) + p["bias"].astype(x32.dtype)).astype(x.dtype)


def dense(p: Params, x: jax.Array) -> jax.Array:
    y = x @ p["kernel"]
    return y + p["bias"] if "bias" in p else y


def rope_tables(cfg: ModelConfig, positions: jax.Array) -> Rope | None:
    """cos and sin of every rotary frequency at the given absolute positions, or None for learned positions. With
    a second theta for local layers (Gemma 3) both tables come stacked on a second-to-last axis (global, local)."""
    if cfg.positions != "rotary":
        return None
    thetas = (cfg.rope_theta, cfg.rope_local_theta) if cfg.rope_local_theta else (cfg.rope_theta,)
    widest = jax.dtypes.canonicalize_dtype(jnp.float64)  # float32, or float64 in JAX's 64-bit mode
    exponents = jnp.arange(0, cfg.rotary_dim, 2, dtype=widest) / cfg.rotary_dim
    inv_freq = jnp.stack([1.0 / (theta**exponents) for theta in thetas])
    angles = positions[..., None, None].astype(widest) * inv_freq
    if not cfg.rope_local_theta:
        angles = angles[..., 0, :]
    return Rope(jnp.cos(angles), jnp.sin(angles))


def layer_rope(cfg: ModelConfig, rope: Rope | None, layer: jax.Array) -> Rope | None:
    """The rotary tables this layer uses: the local ones on cfg.local_layers when the model has two thetas."""
    if rope is None or not cfg.rope_local_theta:
        return rope
    local = jnp.isin(layer, jnp.asarray(cfg.local_layers, jnp.int32)).astype(jnp.int32)
    return Rope(jnp.take(rope.cos, local, axis=-2), jnp.take(rope.sin, local, axis=-2))


def _rotate(cfg: ModelConfig, x: jax.Array, rope: Rope) -> jax.Array:
    """Apply rotary embeddings to the first rotary_dim dimensions of every head of x [B, R, H, hd]."""
    rd = cfg.rotary_dim
    xr, xp = x[..., :rd], x[..., rd:]
    cos = rope.cos[:, :, None, :].astype(x.dtype)
    sin = rope.sin[:, :, None, :].astype(x.dtype)
    if cfg.rotary_style == "half":
        cos, sin = jnp.concatenate([cos, cos], -1), jnp.concatenate([sin, sin], -1)
        turned = jnp.concatenate([-xr[..., rd // 2 :], xr[..., : rd // 2]], -1)
    else:
        cos, sin = jnp.repeat(cos, 2, axis=-1), jnp.repeat(sin, 2, axis=-1)
        turned = jnp.stack([-xr[..., 1::2], xr[..., ::2]], axis=-1).reshape(xr.shape)
    return jnp.concatenate([xr * cos + turned * sin, xp], -1)


def attention(
    cfg: ModelConfig, p: Params, x: jax.Array, rows: Rows, ctx: Context | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Multi-head (grouped-query) attention of rows x [B, R, D] over themselves and an optional context of one
    layer's earlier keys and values. Returns the projected output and this layer's rotated keys and values."""
    b, r, _ = x.shape
    self_mask = rows.self_mask
    q = dense(p["q"], x).reshape(b, r, cfg.n_heads, cfg.head_dim)
    k = dense(p["k"], x).reshape(b, r, cfg.n_kv_heads, cfg.head_dim)
    v = dense(p["v"], x).reshape(b, r, cfg.n_kv_heads, cfg.head_dim)
    if cfg.qk_norm:
        q, k = norm(cfg, p["q_norm"], q), norm(cfg, p["k_norm"], k)
    if rows.rope is not None:
        q, k = _rotate(cfg, q, rows.rope), _rotate(cfg, k, rows.rope)
    keys, values, mask = k, v, self_mask
    if ctx is not None:
        ck, cv, cmask = ctx
        keys = jnp.concatenate([ck.astype(k.dtype), k], axis=1)
        values = jnp.concatenate([cv.astype(v.dtype), v], axis=1)
        batch = jnp.broadcast_shapes(cmask.shape[:-1], self_mask.shape[:-1])
        cmask = jnp.broadcast_to(cmask, (*batch, cmask.shape[-1]))
        mask = jnp.concatenate([cmask, jnp.broadcast_to(self_mask, (*batch, self_mask.shape[-1]))], axis=-1)
    groups, kv = cfg.n_heads // cfg.n_kv_heads, cfg.n_kv_heads
    # [B, KV, G*R, hd] against [B, KV, C, hd]: batch axes first makes XLA's batched matmuls efficient
    qg = q.reshape(b, r, kv, groups, cfg.head_dim).transpose(0, 2, 3, 1, 4).reshape(b, kv, groups * r, cfg.head_dim)
    kt, vt = keys.transpose(0, 2, 1, 3), values.transpose(0, 2, 1, 3)
    acc = wide(q.dtype)
    scores = jnp.einsum("bkrd,bkcd->bkrc", qg.astype(acc), kt.astype(acc)) * (cfg.query_scale or cfg.head_dim**-0.5)
    if cfg.attn_softcap:
        scores = cfg.attn_softcap * jnp.tanh(scores / cfg.attn_softcap)
    scores = scores.reshape(b, kv, groups, r, -1)
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(acc).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(values.dtype).reshape(b, kv, groups * r, -1)
    out = jnp.einsum("bkrc,bkcd->bkrd", weights, vt).reshape(b, kv, groups, r, cfg.head_dim)
    out = out.transpose(0, 3, 1, 2, 4).reshape(b, r, cfg.q_dim)
    return dense(p["o"], out), k, v


def mlp(cfg: ModelConfig, p: Params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The MLP's output and its key: the input to the output projection, which ROME treats as a memory key."""
    if cfg.mlp == "swiglu":
        key = _activation(cfg.activation, dense(p["gate"], x)) * dense(p["up"], x)
    else:
        key = _activation(cfg.activation, dense(p["up"], x))
    return dense(p["down"], key), key


def block(
    cfg: ModelConfig, p: Params, h: jax.Array, layer: jax.Array, rows: Rows, ctx: Context | None, iv: Interventions
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One transformer layer on the residual h [B, R, D] of `rows`, attending also to one layer's `ctx`.

    The interventions whose layer equals `layer` and whose token is one of rows.cols are applied here.
    Returns the new residual and the activations named in iv.capture.
    """
    cols = rows.cols
    a_in = norm(cfg, p["norm_attn"], h)
    attn, k, v = attention(cfg, p["attn"], a_in, rows._replace(rope=layer_rope(cfg, rows.rope, layer)), ctx)
    if iv.attn is not None:
        attn = iv.attn.overwrite(layer, cols, attn)
    joins = norm(cfg, p["norm_attn_post"], attn) if cfg.post_norms else attn  # what the residual receives
    if cfg.parallel_residual:
        m_in = a_in if cfg.shared_norm else norm(cfg, p["norm_mlp"], h)
    else:
        h = h + joins
        m_in = norm(cfg, p["norm_mlp"], h)
    out, key = mlp(cfg, p["mlp"], m_in)
    if iv.row_edits is not None:  # part of the (edited) weights, so before any patch of the MLP output
        out = iv.row_edits.add_into(layer, key, out)
    if iv.mlp is not None:
        out = iv.mlp.overwrite(layer, cols, out)
    if iv.mlp_add is not None:
        out = iv.mlp_add.add_into(layer, cols, out)
    out_joins = norm(cfg, p["norm_mlp_post"], out) if cfg.post_norms else out
    h = h + joins + out_joins if cfg.parallel_residual else h + out_joins
    if iv.resid is not None:
        h = iv.resid.overwrite(layer, cols, h)
    if iv.resid_add is not None:
        h = iv.resid_add.add_into(layer, cols, h)
    acts = {"resid": h, "mlp_key": key, "mlp": out, "attn": attn, "attn_k": k, "attn_v": v}
    return h, {name: acts[name] for name in iv.capture}


def unstack(blocks: Params, first: int, stop: int) -> list[Params]:
    """Per-layer parameter dicts for layers first..stop-1, sliced once (see run_layers)."""
    return [jax.tree.map(lambda a, i=i: a[i], blocks) for i in range(first, stop)]


def run_layers(
    cfg: ModelConfig,
    blocks: Params | list[Params],
    h: jax.Array,
    *,
    rows: Rows,
    iv: Interventions,
    first: int = 0,
    stop: int | None = None,
    ctx: Context | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Run `block` over layers first..stop-1 (default: to the last); captures come back as [stop - first, ...].

    With stacked `blocks` the layers run under `lax.scan`, so compile time does not grow with depth. With a
    list from `unstack` they run as an unrolled loop: inside a loop that calls this many times (ROME's Adam
    steps), the weights are then sliced once rather than copied out of the stack at every call, which on CPU
    costs more than the small matmuls themselves. With `ctx`, layer l's rows also attend to ctx.k[l - first],
    ctx.v[l - first] where ctx.mask allows.
    """
    stop = cfg.n_layers if stop is None else stop
    if isinstance(blocks, list):
        outs = []
        for i, p in enumerate(blocks):
            layer_ctx = None if ctx is None else Context(ctx.k[i], ctx.v[i], ctx.mask)
            h, acts = block(cfg, p, h, jnp.int32(first + i), rows, layer_ctx, iv)
            outs.append(acts)
        return h, {name: jnp.stack([a[name] for a in outs]) for name in iv.capture}
    params = blocks if (first, stop) == (0, cfg.n_layers) else jax.tree.map(lambda a: a[first:stop], blocks)
    xs: dict[str, Any] = {"layer": jnp.arange(first, stop), "p": params}
    if ctx is not None:
        xs["k"], xs["v"] = ctx.k, ctx.v

    def step(h: jax.Array, x: dict[str, Any]) -> tuple[jax.Array, dict[str, jax.Array]]:
        layer_ctx = None if ctx is None else Context(x["k"], x["v"], ctx.mask)
        return block(cfg, x["p"], h, x["layer"], rows, layer_ctx, iv)

    return lax.scan(step, h, xs)


def embed(cfg: ModelConfig, params: Params, ids: jax.Array, positions: jax.Array) -> jax.Array:
    """Token embeddings (times the model's embedding scale), plus learned position embeddings where it has them."""
    h = params["embed"]["tokens"][ids]
    if cfg.embed_scale != 1.0:  # Gemma: the scale cast to the weights' dtype first, as transformers does
        h = h * jnp.asarray(cfg.embed_scale, h.dtype)
    if cfg.positions == "learned":
        h = h + params["embed"]["positions"][positions]
    return h


def unembed(cfg: ModelConfig, params: Params, h: jax.Array) -> jax.Array:
    """Final norm and LM head: logits in float32 (float64 for a float64 model) for residuals h [..., D]."""
    h = norm(cfg, params["norm_final"], h)
    acc = wide(h.dtype)
    if cfg.tied_head:
        logits = jnp.einsum("...d,vd->...v", h, params["embed"]["tokens"], preferred_element_type=acc)
    else:
        logits = jnp.einsum("...d,dv->...v", h, params["head"]["kernel"], preferred_element_type=acc)
    if cfg.head_bias:
        logits = logits + params["head"]["bias"].astype(acc)
    if cfg.final_softcap:
        logits = cfg.final_softcap * jnp.tanh(logits / cfg.final_softcap)
    return logits


def positions_from_mask(mask: jax.Array) -> jax.Array:
    """Absolute positions of each column given an attention mask: padding does not advance the position."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def causal_mask(mask: jax.Array) -> jax.Array:
    """[B, T, T]: a column may see itself and earlier columns that are not padding."""
    t = mask.shape[-1]
    return jnp.tril(jnp.ones((t, t), bool))[None] & mask.astype(bool)[:, None, :]


def forward_tokens(
    cfg: ModelConfig,
    params: Params,
    ids: jax.Array,
    mask: jax.Array,
    iv: Interventions,
    logits_at: jax.Array | None,
) -> ForwardOutput:
    """The whole forward for ids [B, T] with an attention mask; logits only at columns logits_at [B, P] if given."""
    positions = positions_from_mask(mask)
    h = embed(cfg, params, ids, positions)
    if iv.embed_add is not None:
        h = h + iv.embed_add.astype(h.dtype)
    h, captured = run_layers(cfg, params["blocks"], h, rows=Rows.causal(cfg, mask), iv=iv)
    if logits_at is not None:
        h = jnp.take_along_axis(h, logits_at[..., None], axis=1)
    return ForwardOutput(logits=unembed(cfg, params, h), captured=captured)


forward_tokens_jit = jax.jit(forward_tokens, static_argnums=0)


def activations_below(
    cfg: ModelConfig, params: Params, ids: jax.Array, mask: jax.Array, capture: tuple[str, ...], stop: int
) -> dict[str, jax.Array]:
    """The activations `capture` of layers 0..stop-1, each [stop, B, T, ...], for padded ids [B, T] (left or right);
    the layers from `stop` on are not run (reading keys and residuals for an edit)."""
    h = embed(cfg, params, ids, positions_from_mask(mask))
    return run_layers(
        cfg, params["blocks"], h, rows=Rows.causal(cfg, mask), iv=Interventions(capture=capture), stop=stop
    )[1]


def last_columns(mask: Any) -> Any:
    """[B]: the column of each row's last real token (works for left and right padding); NumPy in, NumPy out."""
    xp = np if isinstance(mask, np.ndarray) else jnp
    t = mask.shape[-1]
    return xp.max(xp.where(mask.astype(bool), xp.arange(t), 0), axis=-1)


def _host_or_traced(x: Any, dtype: Any = None) -> Any:
    """x as a NumPy array, or as is when it is already a JAX array (a tracer under jit, or on its devices): checks
    and small index arithmetic then run on the host, not as eager JAX operations compiled for each new shape."""
    if isinstance(x, jax.Array):
        return x if dtype is None else x.astype(dtype)
    return np.asarray(x, dtype)


def check_token_ids(cfg: ModelConfig, ids: np.ndarray | jax.Array) -> None:
    """One clear line for ids [B, T] the model cannot read: more tokens than its context, or (on the host) an id
    outside its vocabulary."""
    if ids.shape[1] > cfg.max_positions:
        raise ValueError(f"{ids.shape[1]} tokens exceed the model's context of {cfg.max_positions} positions")
    if isinstance(ids, np.ndarray) and ids.size and (ids.min() < 0 or ids.max() >= cfg.vocab_size):
        raise ValueError(f"token ids must lie in [0, {cfg.vocab_size}); got [{int(ids.min())}, {int(ids.max())}]")


def forward(
    lm: LM,
    input_ids: Any,
    attention_mask: Any = None,
    interventions: Interventions | None = None,
    *,
    logits_at: str | Any = None,
) -> ForwardOutput:
    """Run the model on token ids [B, T] (or [T]) and return logits and the activations asked for.

    attention_mask [B, T] marks real tokens (1) and padding (0), left or right; positions skip padding.
    interventions: what to add, replace and capture (see `jrome.Interventions`).
    logits_at: None for every column, "last" for each row's last real token, or column indices [P] / [B, P].
    Pure and traceable: it can be called under jit, vmap and grad.
    """
    cfg = lm.config
    ids = _host_or_traced(input_ids)
    ids = ids[None] if ids.ndim == 1 else ids
    if ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(f"input_ids must be integer token ids of shape [batch, tokens]; got {ids.dtype} {ids.shape}")
    check_token_ids(cfg, ids)
    mask = np.ones(ids.shape, np.int32) if attention_mask is None else _host_or_traced(attention_mask)
    mask = mask[None] if mask.ndim == 1 else mask
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask has shape {mask.shape}; it must match input_ids {ids.shape}")
    index = None
    if isinstance(logits_at, str):
        if logits_at != "last":
            raise ValueError(f"logits_at={logits_at!r}; accepted: None, 'last', or column indices")
        index = last_columns(mask)[:, None]
    elif logits_at is not None:
        index = _host_or_traced(logits_at, np.int32)
        index = index[None] if index.ndim == 0 else index
        index = index[None].repeat(ids.shape[0], 0) if index.ndim == 1 else index
    put = _device_put_host
    return forward_tokens_jit(cfg, lm.params, put(ids), put(mask), interventions or Interventions(), put(index))


def _device_put_host(x: Any) -> Any:
    """NumPy arrays onto the default device (without compiling a staging program); anything else as is."""
    return jax.device_put(x) if isinstance(x, np.ndarray) else x
