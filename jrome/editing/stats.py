"""Key statistics: C = E[k kᵀ] of the input to an MLP's output projection, over a text corpus, in one pass.

The corpus is read by tokens or by samples (`windows`); the layers up to the deepest one asked for run in batches
inside jit; second moments are summed in float32 per batch and across batches in float64. Results are cached on
disk, keyed by the model's relevant weights, the layer, the corpus and the size.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ..corpus import Corpus, open_corpus
from ..data import cache_dir
from ..files import atomic_write_bytes
from ..models.config import ModelConfig
from ..models.forward import activations_below
from ..models.lm import LM
from ..sharding import mesh_of, split_samples
from .solver import KeyStats
from .windows import corpus_records, corpus_windows, record_batches

FORMAT = 2  # bumped when the way a corpus is read changes, so older cached statistics are not reused


@partial(jax.jit, static_argnums=(0, 4))
def _moments(cfg: ModelConfig, params: dict, ids: jax.Array, mask: jax.Array, layers: tuple[int, ...]) -> jax.Array:
    """[len(layers), F, F]: Σ k kᵀ over the batch's real tokens (mask 1), at each requested layer (float32).

    Rows are right-padded, so positions count from 0 and padding, which comes last, changes no real token."""
    keys = _keys(cfg, params, ids, mask, layers)
    return jnp.einsum("lnf,lng->lfg", keys, keys, precision="highest")


@partial(jax.jit, static_argnums=(0, 4))
def _keys(cfg: ModelConfig, params: dict, ids: jax.Array, mask: jax.Array, layers: tuple[int, ...]) -> jax.Array:
    """[len(layers), B·T, F]: the MLP keys of a batch at each layer (as _moments reads them), zero at padding."""
    acts = activations_below(cfg, params, ids, mask, ("mlp_key",), max(layers) + 1)
    keys = acts["mlp_key"][jnp.asarray(layers)].astype(jnp.float32) * mask[None, ..., None].astype(jnp.float32)
    return keys.reshape(len(layers), -1, keys.shape[-1])


class _Convergence:
    """The early stop of key_statistics: C⁻¹P for probe keys P at checkpoints, and whether it has settled."""

    def __init__(self, tolerance: float, d_mlp: int) -> None:
        self.tolerance, self.next_check = tolerance, 2 * d_mlp
        self.probe: np.ndarray | None = None
        self.previous: list[np.ndarray] | None = None

    def __call__(self, lm: LM, ids: np.ndarray, mask: np.ndarray, layers: tuple, total: np.ndarray, count: int) -> bool:
        if self.probe is None:  # 16 real tokens of the first batch, spread over it
            keys = np.asarray(_keys(lm.config, lm.params, ids, mask, layers), np.float64)
            real = np.flatnonzero(np.asarray(mask).reshape(-1))
            self.probe = keys[:, real[np.linspace(0, len(real) - 1, 16).astype(int)]]  # [L, 16, F]
        if count < self.next_check:
            return False
        self.next_check = int(count * 1.25)
        try:
            now = [np.linalg.solve(total[i] / count, self.probe[i].T) for i in range(len(layers))]
        except np.linalg.LinAlgError:  # still singular: fewer independent keys than dimensions
            return False
        before, self.previous = self.previous, now
        if before is None:
            return False
        change = max(np.linalg.norm(a - b) / np.linalg.norm(a) for a, b in zip(now, before, strict=True))
        return bool(change < self.tolerance)


def _fingerprint(lm: LM, layer: int) -> str:
    """A short hash of the weights that determine the keys at `layer` (everything below its output projection)."""
    digest = hashlib.sha1(repr(lm.config).encode())

    def add(x: np.ndarray) -> None:
        flat = np.asarray(x, np.float32).ravel()
        digest.update(flat[:: max(1, flat.size // 4096)].tobytes())

    add(lm.params["embed"]["tokens"])
    for path, leaf in jax.tree_util.tree_leaves_with_path(lm.params["blocks"]):
        names = [getattr(k, "key", "") for k in path]
        for i in range(layer + 1):
            if i < layer or names[:2] != ["mlp", "down"]:
                add(leaf[i])
    return digest.hexdigest()[:12]


def _layers(
    lm: LM, layers: int | Sequence[int], n_tokens: int, n_samples: int | None, tolerance: float | None
) -> list[int]:
    """The layers asked for, sorted; each bad argument is one clear error before the corpus is read."""
    layers = sorted({layers} if isinstance(layers, int) else set(layers))
    bad = [layer for layer in layers if not 0 <= layer < lm.config.n_layers]
    if bad or not layers:
        raise ValueError(f"layers {bad or layers} out of range: this model has layers 0..{lm.config.n_layers - 1}")
    if n_tokens < 1 or (n_samples is not None and n_samples < 1):
        raise ValueError(f"n_tokens ({n_tokens}) and n_samples ({n_samples}) must be positive counts")
    if tolerance is not None and not tolerance > 0:
        raise ValueError(f"tolerance must be a positive relative change (e.g. 0.01) or None, got {tolerance}")
    if lm.tokenizer is None:
        raise ValueError("key statistics need a tokenizer to read the corpus")
    return layers


def _read_cached(paths: dict[int, Path]) -> dict[int, KeyStats]:
    """The statistics already on disk among `paths` (layer → file)."""
    out = {}
    for layer, path in paths.items():
        if path.is_file():
            with np.load(path) as z:
                out[layer] = KeyStats(layer, z["mom2"], int(z["count"]), str(z["corpus"]))
    return out


def _write_cached(stats: KeyStats, path: Path) -> None:
    """One layer's statistics to its cache file, written whole or not at all."""
    buf = io.BytesIO()
    np.savez(buf, mom2=stats.mom2, count=stats.count, corpus=stats.corpus)
    atomic_write_bytes(path, buf.getvalue())


def _batches(lm: LM, source: Corpus, n_tokens: int, n_samples: int | None, window: int, batch_size: int) -> list:
    """(ids, mask) batches of the corpus: windows of n_tokens, or n_samples records (see `windows`)."""
    if n_samples is None:
        windows = corpus_windows(lm.tokenizer, source.pieces(), n_tokens, window)
        return [(windows[i : i + batch_size], np.ones_like(windows[i : i + batch_size])) for i in range(0, len(windows), batch_size)]  # fmt: skip
    records = corpus_records(source, n_samples)
    return list(record_batches(lm.tokenizer, records, lm.config.max_positions, batch_size * window))


def _moment_pass(
    lm: LM, batches: list, layers: tuple[int, ...], converged: _Convergence | None, desc: str, progress: bool
) -> tuple[np.ndarray, int]:
    """(Σ k kᵀ [len(layers), F, F] in float64, tokens counted) over the batches, stopping early once converged."""
    from tqdm.auto import tqdm

    total = np.zeros((len(layers), lm.config.d_mlp, lm.config.d_mlp))
    count = 0
    mesh = mesh_of(lm)
    for ids, mask in tqdm(batches, desc=desc, disable=not progress):
        if mesh is not None:  # rows over the data axis; XLA sums the per-device moments (one all-reduce)
            ids, mask = split_samples(mesh, jnp.asarray(ids), 0), split_samples(mesh, jnp.asarray(mask), 0)
        total += np.asarray(_moments(lm.config, lm.params, ids, mask, layers), np.float64)
        count += int(mask.sum())
        if converged is not None and converged(lm, ids, mask, layers, total, count):
            break
    return total, count


def key_statistics(
    lm: LM,
    layers: int | Sequence[int],
    corpus: str | os.PathLike | Sequence[str | os.PathLike] = "wikitext-2",
    n_tokens: int = 100_000,
    *,
    n_samples: int | None = None,
    window: int = 128,
    batch_size: int = 16,
    tolerance: float | None = None,
    cache: bool = True,
    progress: bool = True,
    download: bool | None = None,
) -> dict[int, KeyStats]:
    """Second moments of the MLP keys at each layer over n_tokens of the corpus (fewer if it is shorter), or,
    with n_samples, over that many records of it (the original's mode; all records if there are fewer).

    All layers come from one pass over the corpus; on a mesh each batch's rows are split over its data axis. With
    `tolerance`, the pass stops early once C⁻¹P of a probe
    set P of keys (16 tokens of the first batch) changes by less than that (relative, Frobenius, every layer)
    between checkpoints (from 2·d_mlp tokens on, then every 25% more). With `cache`, results are read from and
    written to cache_dir()/stats, keyed by the relevant weights, layer, corpus, size and tolerance.
    """
    layers = _layers(lm, layers, n_tokens, n_samples, tolerance)
    source = open_corpus(corpus, download=download)
    window = min(window, lm.config.max_positions)
    size = f"s{n_samples}-{lm.config.max_positions}" if n_samples is not None else f"{n_tokens}-{window}"
    tag = f"{source.key}-{size}{'' if tolerance is None else f'-tol{tolerance:g}'}-v{FORMAT}"
    paths = {layer: cache_dir() / "stats" / f"{_fingerprint(lm, layer)}-L{layer}-{tag}.npz" for layer in layers}
    out = _read_cached(paths) if cache else {}
    todo = tuple(layer for layer in layers if layer not in out)
    if not todo:
        return out
    batches = _batches(lm, source, n_tokens, n_samples, window, batch_size)
    desc = f"key statistics, layer{'s' if len(todo) > 1 else ''} {', '.join(map(str, todo))}"
    converged = _Convergence(tolerance, lm.config.d_mlp) if tolerance is not None else None
    total, count = _moment_pass(lm, batches, todo, converged, desc + (" (cached for next time)" if cache else ""), progress)  # fmt: skip
    for i, layer in enumerate(todo):
        out[layer] = KeyStats(layer, total[i], count, source.name)
        if cache:
            _write_cached(out[layer], paths[layer])
    return out
