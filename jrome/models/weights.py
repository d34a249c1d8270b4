"""Checkpoint tensors ↔ jrome's parameter tree, by the names and storage `layout` gives each leaf: read in one
direction, written in the other.

The tree is a plain nested dict. Kernels are (in, out), so `x @ kernel`; per-layer arrays are stacked on a
leading layer axis under "blocks", which is what `lax.scan` runs over.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from .config import ModelConfig
from .layout import LINEAR, PREFIX, QKV_CONCAT, QKV_PER_HEAD, Param, leaf, param, present, put
from .placement import Placer

Getter = Callable[[str], np.ndarray]


def _tensors(cfg: ModelConfig, stacked: bool) -> dict[str, tuple[str, list[Param]]]:
    """The checkpoint tensors of this architecture: name → (how it is stored, the leaves it holds: q, k and v share
    a fused one)."""
    out: dict[str, tuple[str, list[Param]]] = {}
    for p in present(cfg):
        if p.stacked == stacked:
            name, how = p.hf_name(cfg)
            out.setdefault(name, (how, []))[1].append(p)
    return out


def _unpack(cfg: ModelConfig, x: np.ndarray, how: str, rows: list[Param]) -> list[np.ndarray]:
    """A stored tensor as the leaves of `rows` in jrome's layout (a weight or its bias: a vector's .T is itself)."""
    if how == QKV_CONCAT:  # Conv1D (in, 3 * out) or its bias, [q | k | v]
        parts = dict(zip("qkv", np.split(x, 3, axis=-1), strict=True))
    elif how == QKV_PER_HEAD:  # Linear (3 * out, in) or its bias, rows ordered (head, [q, k, v], head_dim)
        h, hd = cfg.n_heads, cfg.head_dim
        per_head = x.reshape(h, 3, hd, *x.shape[1:])
        parts = {n: np.ascontiguousarray(per_head[:, j].reshape(h * hd, *x.shape[1:]).T) for j, n in enumerate("qkv")}
    else:
        return [np.ascontiguousarray(x.T) if how == LINEAR else x]
    return [parts[p.path[2]] for p in rows]


def _stored_shape(cfg: ModelConfig, how: str, rows: list[Param]) -> tuple[int, ...]:
    """The shape a checkpoint stores the leaves of `rows` in (one layer's, for stacked leaves)."""
    shapes = [p.shape(cfg)[1:] if p.stacked else p.shape(cfg) for p in rows]
    shape = (*shapes[0][:-1], sum(s[-1] for s in shapes))  # q, k and v side by side in a fused tensor
    return shape[::-1] if how in (LINEAR, QKV_PER_HEAD) else shape


def _pack(cfg: ModelConfig, leaves: list[np.ndarray], how: str) -> np.ndarray:
    """The inverse of `_unpack`: the stored tensor from its leaves (q, k, v in that order for a fused one)."""
    if how == QKV_CONCAT:
        return np.concatenate(leaves, axis=-1)
    if how == QKV_PER_HEAD:
        h, hd = cfg.n_heads, cfg.head_dim
        tail = leaves[0].T.shape[1:]  # (in,) for a kernel, () for a bias
        return np.stack([x.T.reshape(h, hd, *tail) for x in leaves], axis=1).reshape(3 * h * hd, *tail)
    (x,) = leaves
    return x.T if how == LINEAR else x


def params_from_checkpoint(cfg: ModelConfig, names: set[str], get: Getter, place: Placer) -> dict:
    """Build the parameter tree from checkpoint tensors, read one at a time and put in place by `place`.

    `names` are the tensor names in the checkpoint, with the base model's prefix ("model.") or without it.
    """
    prefix = PREFIX[cfg.family]
    bare = not any(n.startswith(prefix) for n in names)

    def read(name: str, how: str, rows: list[Param]) -> list[np.ndarray]:
        """The leaves of `rows` from the tensor `name`: missing or of another shape, an error naming it."""
        roles = ", ".join(p.role for p in rows)
        inside = name.removeprefix(prefix) if bare else name
        found = next((c for c in (inside, prefix + name) if c in names), None)  # a head is sometimes inside the base
        if found is None:
            raise ValueError(f"the checkpoint has no tensor {inside!r} ({roles}), which a {cfg.family} model with this config needs")  # fmt: skip
        x, want = get(found), _stored_shape(cfg, how, rows)
        if x.shape != want:
            raise ValueError(f"the checkpoint's {found!r} ({roles}) has shape {x.shape}; this {cfg.family} config needs {want}")  # fmt: skip
        return _unpack(cfg, x, how, rows)

    params: dict = {}
    for name, (how, rows) in _tensors(cfg, stacked=False).items():
        for p, x in zip(rows, read(name, how, rows), strict=True):
            put(params, p.path, place.array(p.path, x))
    for name, (how, rows) in _tensors(cfg, stacked=True).items():

        def layer(i: int, name: str = name, how: str = how, rows: list[Param] = rows) -> list[np.ndarray]:
            return read(name.format(i=i), how, rows)

        for p, x in zip(rows, place.stack([p.path for p in rows], layer, cfg.n_layers), strict=True):
            put(params, p.path, x)
    return params


def checkpoint_from_params(cfg: ModelConfig, params: Mapping) -> dict[str, np.ndarray]:
    """The inverse of params_from_checkpoint: transformers tensor names (with the base model's prefix) → numpy
    arrays. A tied head is written under the head's name too."""
    out: dict[str, np.ndarray] = {}
    for name, (how, rows) in _tensors(cfg, stacked=False).items():
        out[name] = _pack(cfg, [np.asarray(leaf(params, p.path)) for p in rows], how)
    if cfg.tied_head:
        out[param(("head", "kernel")).hf_name(cfg)[0]] = out[param(("embed", "tokens")).hf_name(cfg)[0]]
    for name, (how, rows) in _tensors(cfg, stacked=True).items():
        stacked = [np.asarray(leaf(params, p.path)) for p in rows]
        for i in range(cfg.n_layers):
            out[name.format(i=i)] = _pack(cfg, [x[i] for x in stacked], how)
    return {k: np.ascontiguousarray(v) for k, v in out.items()}
