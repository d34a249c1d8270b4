"""Which key statistics an edit uses: the original's published files (GPT-2 XL, GPT-J: the paper's exact C) where
the hyperparameters name them, read from the original's layout; else computed over a corpus (`stats`)."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..models.layout import EDITED, param
from ..models.lm import LM
from .solver import KeyStats
from .stats import key_statistics


def module_name(family: str, layer: int) -> str:
    """The transformers module of a layer's edited projection (e.g. transformer.h.17.mlp.c_proj), as the layout
    table names its weight; the original names its statistics files by it."""
    names = param(EDITED).hf
    if family not in names:
        raise ValueError(f"no module name for family {family!r}; known: {', '.join(names)}")
    return names[family][0].format(i=layer).removesuffix(".weight")


def layer_stats_name(family: str, layer: int, n_samples: int = 100_000, precision: str = "float32") -> str:
    """The original's file name for a layer's statistics, e.g. transformer.h.17.mlp.c_proj_float32_mom2_100000.npz
    (published under stats/<model>/wikipedia_stats/)."""
    return f"{module_name(family, layer)}_{precision}_mom2_{n_samples}.npz"


def read_layer_stats(path: str | os.PathLike, layer: int | None = None) -> KeyStats:
    """Key statistics from a file in the original's layout (`layer_stats`'s cache: an .npz whose "mom2.mom2" is the
    sum of k kᵀ and "mom2.count" the number of tokens). The layer is read from the file name unless given."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no statistics file {path}")
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in ("mom2.mom2", "mom2.count") if k not in z.files]
        if missing:
            raise ValueError(f"{path} is not a layer_stats file: it has {sorted(z.files)}, not {missing}")
        mom2, count = np.asarray(z["mom2.mom2"], np.float64), int(z["mom2.count"])
    if mom2.ndim != 2 or mom2.shape[0] != mom2.shape[1] or count < 1:
        raise ValueError(
            f"{path}: mom2 has shape {mom2.shape} and count {count}; expected a square matrix and count > 0"
        )
    if layer is None:
        found = re.search(r"\.(\d+)\.mlp\.", path.name)
        if found is None:
            raise ValueError(f"cannot tell the layer from the file name {path.name}; pass layer=")
        layer = int(found.group(1))
    return KeyStats(layer, mom2, count, str(path))


def statistics_for(
    lm: LM, hp: Any, layers: int | Sequence[int], *, download: bool | None = None, progress: bool = True
) -> dict[int, KeyStats]:
    """Each layer's key statistics as ROME or MEMIT hyperparameters ask for them: the original's published file for
    the model hp.mom2_published names (e.g. gpt2-xl), here or fetched on first use; else computed over
    hp.mom2_corpus (cached; a hub corpus fetched on first use). download: as jrome.data.fetch (None: unless offline).
    With `progress`, says on stderr which it is and why."""
    from ..data import fetch, published_stats_name

    layers = sorted({layers} if isinstance(layers, int) else set(layers))
    out: dict[int, KeyStats] = {}
    for layer in layers if hp.mom2_published else ():
        module = module_name(lm.config.family, layer)
        name = published_stats_name(hp.mom2_published, module, hp.mom2_n_samples or 100_000)
        try:
            path = fetch(name, download=download, progress=progress)
        except OSError as err:  # not here, not published, or offline: computed instead
            _say(f"key statistics, layer {layer}: no published file ({err}); computing them", progress)
            continue
        stats = read_layer_stats(path, layer)
        if stats.mom2.shape != (lm.config.d_mlp,) * 2:
            raise ValueError(
                f"{path} holds {stats.mom2.shape} statistics; this model's MLP keys have {lm.config.d_mlp}"
            )
        out[layer] = stats
        _say(f"key statistics, layer {layer}: the original's published {path}", progress)
    todo = [layer for layer in layers if layer not in out]
    if todo:
        out |= key_statistics(
            lm, todo, hp.mom2_corpus, hp.mom2_n_tokens, n_samples=hp.mom2_n_samples, tolerance=hp.mom2_tolerance,
            progress=progress, download=download,
        )  # fmt: skip
    return out


def _say(text: str, progress: bool) -> None:
    if progress:
        print(text, file=sys.stderr)
