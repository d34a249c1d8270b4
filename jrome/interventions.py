"""Interventions as data: what to add or replace where in a forward pass, and which activations to return.

An `Interventions` value is a pytree of arrays, so `jax.vmap` over a batch of them is a causal trace and
`jax.grad` through an additive one is ROME's v* search. Nothing is hooked and nothing is global.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

CAPTURES = ("resid", "mlp_key", "mlp", "attn", "attn_k", "attn_v")
"""Per-layer activations a forward can return: the residual after the block, the input to the MLP output
projection (ROME's key), the MLP output, the attention output, and the rotated attention keys and values."""


@struct.dataclass
class Patch:
    """K writes into one activation site: at `layer[k]` and token column `token[k]`, use `value[k]`.

    `token` is [K] (the same column in every row) or [K, B] (a column per row); `value` is [K, D] (shared
    by the rows) or [K, B, D]. A layer of -1 switches a write off, so patches of one shape can be batched.
    """

    layer: jax.Array
    token: jax.Array
    value: jax.Array

    @classmethod
    def at(cls, layer: int | Sequence[int], token: int | Sequence[int], value: jax.Array) -> Patch:
        """Writes at (layer, token) pairs; scalars make a single write, sequences make several."""
        layer = jnp.atleast_1d(jnp.asarray(layer, jnp.int32))
        token = jnp.asarray(token, jnp.int32)
        token = token[None] if token.ndim == 0 else token
        value = jnp.asarray(value)
        value = value[None] if value.ndim == 1 else value
        if not (layer.shape[0] == token.shape[0] == value.shape[0]):
            raise ValueError(
                f"Patch.at needs one layer, token and value per write; got {layer.shape[0]} layers, "
                f"{token.shape[0]} tokens and {value.shape[0]} values"
            )
        return cls(layer=layer, token=token, value=value)

    def _hits(self, layer: jax.Array, cols: jax.Array) -> jax.Array:
        """[K, B|1, R] booleans: which write lands on which (row, column) at this layer."""
        token = self.token.reshape(self.token.shape[0], -1, 1)
        cols = cols.reshape(1, -1, cols.shape[-1])
        return (self.layer[:, None, None] == layer) & (token == cols)

    def _values(self) -> jax.Array:
        """[K, B|1, D]: values with the row axis made explicit."""
        return self.value.reshape(self.value.shape[0], -1, self.value.shape[-1])

    def overwrite(self, layer: jax.Array, cols: jax.Array, x: jax.Array) -> jax.Array:
        """x [B, R, D] with the writes for `layer` replacing what was there (at most one write per site)."""
        hits = self._hits(layer, cols)
        values = self._values().astype(x.dtype)
        first = jnp.argmax(hits, axis=0)
        first = jnp.broadcast_to(first, (max(first.shape[0], values.shape[1]), first.shape[1]))
        rows = jnp.arange(first.shape[0])[:, None] % values.shape[1]
        new = values[first, rows]
        return jnp.where(hits.any(axis=0)[..., None], new, x)

    def add_into(self, layer: jax.Array, cols: jax.Array, x: jax.Array) -> jax.Array:
        """x [B, R, D] plus the sum of the writes for `layer`."""
        hits = self._hits(layer, cols).astype(x.dtype)
        return x + jnp.einsum("kbr,kbd->brd", hits, self._values().astype(x.dtype), precision="highest")


@struct.dataclass
class RowEdits:
    """Rank-one changes of the MLP output projection, one per (slot, row): row b runs with
    W_down[layer[m]] + u[m, b] lam[m, b]ᵀ for every slot m. K edited models (ROME's Ŵ = W + û Λᵀ) then run as
    rows of one forward, with no copy of the weights. layer [M] (-1 switches a slot off), u [M, B, F],
    lam [M, B, D]; a row whose u and lam are zero is the unedited model.
    """

    layer: jax.Array
    u: jax.Array
    lam: jax.Array

    def add_into(self, layer: jax.Array, key: jax.Array, out: jax.Array) -> jax.Array:
        """out [B, R, D], the projection of key [B, R, F], plus each row's (key · u) lam for `layer`'s slots."""
        on = (self.layer == layer).astype(jnp.float32)
        along = jnp.einsum("brf,mbf->mbr", key.astype(jnp.float32), self.u.astype(jnp.float32), precision="highest")
        added = jnp.einsum("m,mbr,mbd->brd", on, along, self.lam.astype(jnp.float32), precision="highest")
        return out + added.astype(out.dtype)


@struct.dataclass
class Interventions:
    """What a forward pass changes and returns. Every field is optional.

    embed_add: [(B,) T, D] added to the token embeddings (causal tracing's noise).
    resid: replaces the residual stream after a layer. attn / mlp: replace a module's output.
    mlp_add: adds to the MLP output (ROME's v* site). resid_add: adds to the residual after a layer (MEMIT's).
    row_edits: rank-one changes of the MLP output projection, per row (several edited models in one forward).
    capture: names from CAPTURES to return, stacked over layers as [L, B, T, ...].
    """

    embed_add: jax.Array | None = None
    resid: Patch | None = None
    attn: Patch | None = None
    mlp: Patch | None = None
    mlp_add: Patch | None = None
    resid_add: Patch | None = None
    row_edits: RowEdits | None = None
    capture: tuple[str, ...] = struct.field(pytree_node=False, default=())

    def __treescope_repr__(self, path: str | None, subtree_renderer: Any) -> Any:
        from .views import interventions_repr

        return interventions_repr(self, path, subtree_renderer)

    def __post_init__(self) -> None:
        unknown = [name for name in self.capture if name not in CAPTURES]
        if unknown:
            raise ValueError(f"cannot capture {unknown}; accepted: {', '.join(CAPTURES)}")

    def capturing(self, *names: str) -> Interventions:
        """The same interventions, also returning `names`."""
        return self.replace(capture=tuple(dict.fromkeys(self.capture + names)))
