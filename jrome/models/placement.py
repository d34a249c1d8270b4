"""Where each parameter lives on a ("data", "model") device mesh, as the layout table splits it, and checkpoint
tensors onto their devices as they are read: a stacked parameter [layers, ...] is sent in blocks of layers of at
most CHUNK_BYTES (or one layer), each written in place into the array allocated where the parameter lives (one
device, or its shards of a mesh), so the host holds one block or tensor at a time, never the model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .config import ModelConfig
from .layout import Path, param

CHUNK_BYTES = 256 << 20  # layers are gathered on the host up to this size (or one tensor) before a transfer


def check_divides(cfg: ModelConfig, model: int) -> None:
    """A clear error when the "model" axis does not split the heads or the MLP hidden units (d_mlp) evenly."""
    dims = {"n_heads": cfg.n_heads, "n_kv_heads": cfg.n_kv_heads, "d_mlp": cfg.d_mlp}
    for name, size in dims.items():
        if size % model:
            raise ValueError(
                f"a model axis of {model} does not divide {name}={size}; choose a model axis that divides "
                + ", ".join(f"{k}={v}" for k, v in dims.items())
            )


def leaf_sharding(cfg: ModelConfig, mesh: Mesh, keys: Path, ndim: int) -> NamedSharding:
    """The NamedSharding of the parameter at `keys` (its path in the tree), with `ndim` dimensions, as the layout
    table splits it; a path the table does not have is an error."""
    row, model = param(keys), mesh.shape["model"]
    if row.split is None or model == 1 or (row.split == "vocab" and cfg.vocab_size % model):
        return NamedSharding(mesh, P())  # replicated: small, or a vocabulary the axis does not divide
    parts: list[str | None] = [None] * ndim
    parts[row.axes.index(row.split) - len(row.axes)] = "model"
    return NamedSharding(mesh, P(*parts))


def param_shardings(cfg: ModelConfig, params: dict, mesh: Mesh) -> dict:
    """The NamedSharding of every parameter leaf (same tree structure as params)."""
    check_divides(cfg, mesh.shape["model"])
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: leaf_sharding(cfg, mesh, tuple(getattr(k, "key", k) for k in path), leaf.ndim), params
    )


@partial(jax.jit, donate_argnums=0)
def _write(stacked: jax.Array, block: jax.Array, start: jax.Array) -> jax.Array:
    """stacked with layers start.. replaced by block, in place (the old buffer is donated)."""
    return jax.lax.dynamic_update_slice_in_dim(stacked, block, start, 0)


class Placer:
    """Turns checkpoint tensors (NumPy, any float dtype) into parameter leaves of `dtype` on the default device,
    or laid out over `mesh` as `leaf_sharding` says."""

    def __init__(self, cfg: ModelConfig, dtype: Any, mesh: Mesh | None = None) -> None:
        if mesh is not None:
            check_divides(cfg, mesh.shape["model"])
        self.cfg, self.dtype, self.mesh = cfg, dtype, mesh

    def _sharding(self, path: Path, ndim: int) -> NamedSharding | None:
        """Where the leaf at `path` (from the tree's root) lives: None for the default device."""
        return None if self.mesh is None else leaf_sharding(self.cfg, self.mesh, path, ndim)

    def _put(self, x: np.ndarray, path: Path) -> jax.Array:
        host = np.asarray(x).astype(self.dtype, copy=False)
        sharding = self._sharding(path, host.ndim)
        return jax.device_put(host, sharding)  # device_put, unlike jnp.asarray, compiles nothing

    def array(self, path: Path, x: np.ndarray) -> jax.Array:
        """One tensor as the leaf at `path`."""
        return self._put(x, path)

    def stack(self, paths: Sequence[Path], read: Callable[[int], Sequence[np.ndarray]], n: int) -> list[jax.Array]:
        """The stacked leaves at `paths`, each [n, ...]: read(i) gives layer i's tensor for every path.

        Layers are read in order and sent in blocks of about CHUNK_BYTES (at least one layer): a parameter that
        fits is sent whole; a larger one is allocated on its devices and filled block by block."""
        itemsize = np.dtype(self.dtype).itemsize
        out: list[jax.Array] | None = None
        pending: list[Sequence[np.ndarray]] = []
        start = 0
        for i in range(n):
            pending.append(read(i))
            if i < n - 1 and sum(x.size for layer in pending for x in layer) * itemsize < CHUNK_BYTES:
                continue
            blocks = [self._put(np.stack([layer[j] for layer in pending]), p) for j, p in enumerate(paths)]
            if start == 0 and i == n - 1:
                return blocks
            if out is None:
                out = [
                    jnp.zeros((n, *b.shape[1:]), self.dtype, device=self._sharding(p, b.ndim))
                    for b, p in zip(blocks, paths, strict=True)
                ]
            out = [_write(o, b, np.int32(start)) for o, b in zip(out, blocks, strict=True)]
            start, pending = i + 1, []
        assert out is not None
        return out
