"""Parameters and trace batches over a device mesh: a "model" axis splits the large matrices, a "data" axis
splits the noise samples of a trace.

The split is Megatron's: query/key/value and MLP input kernels by output column (whole heads, whole hidden
units), attention and MLP output kernels by input row, the vocabulary of the embedding and LM head when it
divides: the `split` column of `jrome.models.layout`, turned into shardings by `jrome.models.placement` (which
`jrome.load(..., mesh=)` also places each tensor by as it is read). Arrays carry their `NamedSharding`, so every
jitted jrome function runs on the mesh unchanged and XLA inserts the collectives; results equal one device's up to
float summation order.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .models.layout import MESH_AXES
from .models.lm import LM
from .models.placement import param_shardings


def parse_mesh(spec: str) -> dict[str, int]:
    """ "data=2,model=4" (or "model=8", "data=8") → {"data": 2, "model": 4}; axes left out have size 1."""
    sizes = dict.fromkeys(MESH_AXES, 1)
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, value = part.partition("=")
        if name.strip() not in MESH_AXES or not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"mesh {spec!r}: cannot read {part!r}; accepted: axis=size with axes data and model, e.g. 'data=2,model=4'")  # fmt: skip
        sizes[name.strip()] = int(value)
    return sizes


def make_mesh(data: int = 1, model: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ("data", "model") mesh over the first data * model devices."""
    devices = list(jax.devices() if devices is None else devices)
    if data < 1 or model < 1:
        raise ValueError(f"mesh axes must be at least 1, got data={data}, model={model}")
    if data * model > len(devices):
        raise ValueError(
            f"a data={data} x model={model} mesh needs {data * model} devices, but {len(devices)} are available "
            f"({devices[0].platform}); on CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N simulates N"
        )
    return Mesh(np.asarray(devices[: data * model]).reshape(data, model), MESH_AXES)


def shard(lm: LM, mesh: Mesh) -> LM:
    """The same model with its parameters laid out over `mesh` (new arrays; `lm` is unchanged)."""
    params = jax.device_put(lm.params, param_shardings(lm.config, lm.params, mesh))
    return lm.replace(params=params)


def mesh_of(lm: LM) -> Mesh | None:
    """The mesh the model's parameters are laid out on, or None when they live on one device."""
    sharding = getattr(jax.tree.leaves(lm.params)[0], "sharding", None)
    return sharding.mesh if isinstance(sharding, NamedSharding) and sharding.mesh.size > 1 else None


def split_samples(mesh: Mesh | None, x: jax.Array, axis: int) -> jax.Array:
    """x with its noise-sample axis split over "data" (replicated elsewhere) when that axis divides evenly."""
    if mesh is None:
        return x
    parts = [None] * x.ndim
    if mesh.shape["data"] > 1 and x.shape[axis] % mesh.shape["data"] == 0:
        parts[axis] = "data"
    return jax.device_put(x, NamedSharding(mesh, P(*parts)))
