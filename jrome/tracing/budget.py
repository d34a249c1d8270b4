"""How much of the device a trace may fill, and the work that fits: lanes run together and prompts per call.

The estimates count the arrays a restoration's layer step keeps live (residuals, attention scores, MLP
activations, the gathered context) and what the runs of a batch of prompts keep for it; XLA's own temporaries
are covered by using half of the free memory by default.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from ..models.config import ModelConfig
from ..models.lm import LM


def check_budget(max_batch_bytes: int | None) -> None:
    """One line when a memory budget is not a positive number of bytes."""
    if max_batch_bytes is not None and (
        not isinstance(max_batch_bytes, int | np.integer) or isinstance(max_batch_bytes, bool) or max_batch_bytes < 1
    ):
        raise ValueError(f"max_batch_bytes={max_batch_bytes!r}; accepted: a positive number of bytes, or None")


def device_memory(device: Any = None) -> int:
    """Bytes of memory of a device: what its allocator may use on GPU/TPU, the machine's RAM on CPU."""
    device = device or jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def param_bytes(params: Any) -> int:
    """Bytes of a parameter tree."""
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))


def default_budget(lm: LM) -> int:
    """Half of the memory the parameters leave free on their device: the default `max_batch_bytes`."""
    leaf = jax.tree.leaves(lm.params)[0]
    device = next(iter(leaf.devices())) if hasattr(leaf, "devices") else None
    return max(0, device_memory(device) - param_bytes(lm.params)) // 2


def _itemsize(lm: LM) -> int:
    return int(np.dtype(jax.tree.leaves(lm.params)[0].dtype).itemsize)


def lane_bytes(cfg: ModelConfig, *, n_rows: int, width: int, n_cols: int, samples: int, itemsize: int = 4) -> int:
    """Bytes one lane of the restoration program keeps live during a layer step."""
    b, r = n_rows * samples, width
    keys = n_cols + r
    kv = cfg.n_kv_heads * cfg.head_dim
    acts = 6 * b * r * cfg.d_model + b * r * (cfg.q_dim + 2 * kv) + 2 * b * n_cols * kv + 2 * b * keys * kv
    acts += 3 * b * r * cfg.d_mlp + 4 * b * 2 * cfg.d_model
    scores = 2 * b * cfg.n_heads * r * keys * 4  # scores and weights in float32
    layer = (cfg.d_model * (cfg.q_dim + 2 * kv) + cfg.q_dim * cfg.d_model + 3 * cfg.d_model * cfg.d_mlp) * itemsize
    return acts * itemsize + scores + layer


def run_bytes(cfg: ModelConfig, *, n_facts: int, n_cols: int, samples: int, itemsize: int = 4) -> int:
    """Bytes of the runs a restoration reads (`RunArrays`) for n_facts prompts of n_cols columns."""
    layers, d, kv = cfg.n_layers, cfg.d_model, cfg.n_kv_heads * cfg.head_dim
    clean = (3 * layers + 1) * n_facts * n_cols * d
    corrupt = ((3 * layers + 2) * d + 2 * layers * kv) * n_facts * samples * n_cols
    return (clean + corrupt) * itemsize


def lanes_per_call(lm: LM, *, n_rows: int, width: int, n_cols: int, samples: int, budget: int | None = None) -> int:
    """Lanes the restoration program runs together: one at a time on CPU (plain matmuls beat batched gathers
    there), else as many as `budget` bytes (default `default_budget`) hold next to the runs."""
    if jax.default_backend() == "cpu":
        return 1
    lanes = -(-lm.config.n_layers // 2)
    budget = default_budget(lm) if budget is None else budget
    one = lane_bytes(lm.config, n_rows=n_rows, width=width, n_cols=n_cols, samples=samples, itemsize=_itemsize(lm))
    return int(max(1, min(lanes, budget // one)))


def facts_per_call(lm: LM, *, n_cols: int, samples: int, budget: int | None = None, most: int = 32) -> int:
    """Prompts of n_cols columns a dataset traces per call: as many as fit `budget` with one lane running (at
    most `most`, so that finished facts are written often)."""
    budget = default_budget(lm) if budget is None else budget
    size = _itemsize(lm)
    rows, width = -(-n_cols // 2), n_cols + 1
    for n in range(most, 0, -1):
        need = run_bytes(lm.config, n_facts=n, n_cols=n_cols, samples=samples, itemsize=size)
        need += lane_bytes(lm.config, n_rows=n * rows, width=width, n_cols=n_cols, samples=samples, itemsize=size)
        if need <= budget:
            return n
    return 1
