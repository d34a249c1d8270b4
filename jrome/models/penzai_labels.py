"""penzai's parameters by label ↔ jrome's parameter tree, by the penzai column of the layout table.

Reading needs no penzai: a penzai named array (`NamedArray`, `NamedArrayView`) is recognised by what it has, a
`named_shape` (axis name → size) and `unwrap(*names)` (its values with the axes in that order), so `jrome.load`
takes penzai parameters without importing penzai or `jrome.interop.penzai`, which builds penzai models.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from .layout import EDITED, PARAMS, Path, param, put

HEADS, KV_HEADS = "<heads>", "<kv heads>"  # stand for the model's head axes (penzai names them per head layout)
HEAD_AXES = ("head_groups", "heads", "query_heads")  # penzai's head axes, outer to inner as jrome's flat head index
VARIANTS = ("llama", "gpt_neox")  # penzai's Llama-like and GPT-NeoX transformers
# penzai's names for jrome's axes, in jrome's order; a per-layer array has no "layer" axis
AXES = {
    "vocab": ("vocabulary",),
    "d_model": ("embedding",),
    "q": (HEADS, "projection"),
    "kv": (KV_HEADS, "projection"),
    "d_mlp": ("neurons",),
}


def is_named(value: Any) -> bool:
    """Whether `value` is a penzai named array (duck-typed: see the module's docstring)."""
    return hasattr(value, "named_shape") and callable(getattr(value, "unwrap", None))


def label_table(variant: str, n_layers: int) -> dict[str, tuple[Path, int | None, tuple[str, ...]]]:
    """penzai label (without the model's name) → (jrome path, layer or None, penzai axes in jrome's order)."""
    table = {}
    for p in PARAMS:
        if variant in p.penzai:
            axes = tuple(name for axis in p.axes if axis != "layer" for name in AXES[axis])
            label = p.penzai[variant]
            if p.stacked:
                table |= {f"block_{i}/{label}": (p.path, i, axes) for i in range(n_layers)}
            else:
                table[label] = (p.path, None, axes)
    return table


def strip_label(label: str) -> str:
    """A label without the model's name ("transformer/block_0/..." -> "block_0/...")."""
    match = re.search(r"(block_\d+/.*|embedder\.embeddings|final_norm/.*|lm_head\.weights)$", label)
    return match.group(1) if match else label


def _read(value: Any, names: tuple[str, ...]) -> jax.Array:
    """A penzai named array as jrome's per-layer array: its axes in jrome's order, the head axes it has (read from
    the array itself) merged with the projection that follows them into one H·hd dimension."""
    shape = dict(value.named_shape)
    order: list[str] = []
    dims: list[int] = []
    after_heads = False
    for name in names:
        if name in (HEADS, KV_HEADS):
            heads = [axis for axis in HEAD_AXES if axis in shape]  # none for a single key/value head
            order += heads
            dims.append(math.prod(shape[axis] for axis in heads))
        elif name == "projection" and after_heads:
            order.append(name)
            dims[-1] *= shape[name]
        else:
            order.append(name)
            dims.append(shape[name])
        after_heads = name in (HEADS, KV_HEADS)
    return jnp.asarray(value.unwrap(*order)).reshape(dims)


def params_from_named(named: Mapping[str, Any]) -> tuple[str, int, dict]:
    """(penzai variant, layers, jrome's parameter tree) from penzai parameters by label, e.g. {p.label: p.value for
    p in pz.unbind_params(model)[1]} ("transformer/block_0/mlp/out_linear.weights": a NamedArray, ...)."""
    labels = {strip_label(label): value for label, value in named.items()}
    original = {strip_label(label): label for label in named}
    variant = next((v for v in VARIANTS if f"block_0/{param(EDITED).penzai[v]}" in labels), None)
    if variant is None:
        raise ValueError(
            "penzai parameters of a Llama-like or GPT-NeoX transformer with unstacked blocks are expected "
            f"(labels such as transformer/block_0/mlp/out_linear.weights); got {', '.join(sorted(named)[:4])} ..."
        )
    n_layers = len({int(m.group(1)) for label in labels if (m := re.match(r"block_(\d+)/", label))})
    table = label_table(variant, n_layers)
    unknown = sorted(set(labels) - set(table))
    if unknown:
        raise ValueError(f"penzai parameters jrome does not know: {', '.join(original[u] for u in unknown[:5])}")
    flat: dict[Path, Any] = {}
    stacked: dict[Path, list] = {}
    for label, (path, layer, names) in table.items():
        if label in labels:
            value = _read(labels[label], names)
            if layer is None:
                flat[path] = value
            else:
                stacked.setdefault(path, [None] * n_layers)[layer] = value
    flat |= {path: jnp.stack(values) for path, values in stacked.items()}
    tree: dict = {}
    for path, value in flat.items():
        put(tree, path, value)
    return variant, n_layers, tree
