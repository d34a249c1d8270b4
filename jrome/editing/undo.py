"""Edits as pure transforms of the parameter tree: a new down-projection kernel in, a new tree out, and the
record that puts the old weights back bit for bit."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..interventions import RowEdits
from ..models.lm import LM


def down_kernel(params: dict) -> jax.Array:
    """[L, F, D]: the stacked MLP output projections, the weights ROME and MEMIT edit."""
    return params["blocks"]["mlp"]["down"]["kernel"]


def with_down_kernel(params: dict, kernel: jax.Array) -> dict:
    """A new parameter tree with `kernel` as the MLP output projections; every other leaf is shared, not copied."""
    mlp = params["blocks"]["mlp"]
    return params | {"blocks": params["blocks"] | {"mlp": mlp | {"down": mlp["down"] | {"kernel": kernel}}}}


@jax.jit
def add_to_layer(kernel: jax.Array, layer: jax.Array, delta: jax.Array) -> jax.Array:
    """The stacked kernel with delta [F, D] added at `layer` (only this leaf is rebuilt)."""
    return kernel.at[layer].add(delta.astype(kernel.dtype))


@dataclasses.dataclass(frozen=True)
class Undo:
    """The changes of one `edit` call (ROME: an Edit per request; MEMIT: an update per layer), each with the kernel
    it replaced and its `delta`; `undo(lm)` puts every changed kernel back exactly as it was."""

    edits: tuple[Any, ...]

    def __call__(self, lm: LM) -> LM:
        """The model before the edit. It refuses (one ValueError) a model whose edited kernels are not bit for bit
        the ones the edit produced — another model, one edited again since, or another dtype — rather than
        undo only this edit's share: putting the old kernel back would silently drop the later edits."""
        kernel = down_kernel(lm.params)
        for layer, produced in self.produced().items():
            if kernel.dtype != produced.dtype:
                raise ValueError(f"this undo holds {produced.dtype} weights; the model's are {kernel.dtype}")
            if not bool(jnp.array_equal(kernel[layer], produced)):
                raise ValueError(
                    f"the model's layer {layer} is not what this edit produced (another model, or edited again "
                    "since): undo the later edits first, newest first"
                )
        for e in reversed(self.edits):
            kernel = kernel.at[e.layer].set(e.old_kernel)
        return lm.replace(params=with_down_kernel(lm.params, kernel))

    def produced(self) -> dict[int, jax.Array]:
        """{layer: the kernel the edit left there}, recomputed as the edit computed it (old kernel + delta)."""
        out = {}
        for e in self.edits:
            out[e.layer] = add_to_layer(e.old_kernel[None], 0, e.delta)[0]
        return out


@dataclasses.dataclass(frozen=True)
class RankOne:
    """An edit as its factors: W_down[layers[m]] += outer(u[m], lam[m]) for each m. ROME's closed form is one
    (û, Λ); models edited this way can run as the rows of one forward instead of as weight copies (`row_edits`)."""

    layers: tuple[int, ...]
    u: np.ndarray  # [M, F]
    lam: np.ndarray  # [M, D]

    def deltas(self) -> list[jax.Array]:
        """[F, D] per edited layer: u λᵀ in float32, what `apply` adds."""
        return [
            jnp.outer(jnp.asarray(u, jnp.float32), jnp.asarray(lam, jnp.float32))
            for u, lam in zip(self.u, self.lam, strict=True)
        ]

    def apply(self, lm: LM) -> LM:
        """lm with the update added to its stacked kernel (only that leaf is rebuilt)."""
        kernel = down_kernel(lm.params)
        for layer, update in zip(self.layers, self.deltas(), strict=True):
            kernel = add_to_layer(kernel, layer, update)
        return lm.replace(params=with_down_kernel(lm.params, kernel))


def row_edits(edits: Sequence[RankOne | None], like: RankOne | None = None) -> RowEdits:
    """The interventions under which row b of a batch is the model `edits[b]` edits (None: the unedited model);
    `like` gives the layers and sizes when every row is unedited."""
    like = next((e for e in edits if e is not None), like)
    if like is None:
        raise ValueError("row_edits needs an edit, or `like`, to know the edited layers")
    layers = like.layers
    others = {e.layers for e in edits if e is not None and e.layers != layers}
    if others:
        raise ValueError(f"row_edits takes edits of the same layers; got {layers} and {sorted(others)}")
    u = np.zeros((len(layers), len(edits), like.u.shape[-1]), np.float32)
    lam = np.zeros((len(layers), len(edits), like.lam.shape[-1]), np.float32)
    for row, e in enumerate(edits):
        if e is not None:
            u[:, row], lam[:, row] = e.u, e.lam
    return RowEdits(layer=jnp.asarray(layers, jnp.int32), u=jnp.asarray(u), lam=jnp.asarray(lam))
