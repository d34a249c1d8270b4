"""Edits as pure transforms of the parameter tree: a new down-projection kernel in, a new tree out, and the
record that puts the old weights back bit for bit."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

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
    """The changes of one `edit` call (ROME: an Edit per request; MEMIT: an update per layer); `undo(lm)` puts
    every changed kernel back exactly as it was."""

    edits: tuple[Any, ...]

    def __call__(self, lm: LM) -> LM:
        kernel = down_kernel(lm.params)
        for e in reversed(self.edits):
            kernel = kernel.at[e.layer].set(e.old_kernel)
        return lm.replace(params=with_down_kernel(lm.params, kernel))
