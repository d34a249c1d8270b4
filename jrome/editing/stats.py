"""Key statistics: C = E[k kᵀ] of the input to an MLP's output projection, over a text corpus.

Two ways to read the corpus. By tokens (the default): the corpus text is tokenised into one stream and cut into
fixed-length windows, no padding. By samples (the original's `layer_stats`): `n_samples` records of the
corpus (a record is a paragraph, one line of a text file), chosen at random with seed 1 when there are more,
each truncated to the model's context, padded in batches whose padding is masked out. Either way the layers
up to the deepest one asked for run in batches inside jit; second moments are summed in float32 per batch
and across batches in float64. Results are cached on disk, keyed by the model's relevant weights, the layer,
the corpus and the size. `read_layer_stats` reads the original's own statistics files (published for GPT-2 XL
and GPT-J), so those users get the paper's exact C.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import itertools
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..corpus import Corpus, open_corpus
from ..data import cache_dir
from ..files import atomic_write_bytes
from ..interventions import Interventions
from ..models.config import ModelConfig
from ..models.forward import Rows, embed, rope_tables, run_layers
from ..models.lm import LM
from ..sharding import mesh_of, split_samples
from ..tokens import padded_width

FORMAT = 2  # bumped when the way a corpus is read changes, so older cached statistics are not reused


@dataclasses.dataclass(frozen=True)
class KeyStats:
    """Uncentred second moment of the MLP keys at one layer: mom2 = Σ k kᵀ over `count` tokens."""

    layer: int
    mom2: np.ndarray  # [d_mlp, d_mlp] float64
    count: int
    corpus: str
    _factors: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def covariance(self) -> np.ndarray:
        """C = E[k kᵀ] (float64)."""
        return self.mom2 / self.count

    def factor(self, regularize: float = 0.0) -> np.ndarray:
        """Lower Cholesky factor of C (+ regularize · mean(diag C) · I), computed once per value of `regularize`."""
        if regularize not in self._factors:
            self._factors[regularize] = cholesky(self.covariance, regularize)
        return self._factors[regularize]


class KeySolver:
    """Solves C u = k with a float64 Cholesky factor of the key statistics (cached on a KeyStats).

    C = I when stats is None (no second-moment adjustment). A non-finite, mis-shaped or singular C is an
    error that says what to do; `regularize` adds that multiple of mean(diag C) to the diagonal first.
    """

    def __init__(self, stats: KeyStats | np.ndarray | None, size: int, regularize: float = 0.0) -> None:
        self.factor = None
        if stats is None:
            return
        shape = stats.mom2.shape if isinstance(stats, KeyStats) else np.shape(stats)
        if shape != (size, size):
            raise ValueError(f"key statistics have shape {shape}; this layer's keys need {(size, size)}")
        self.factor = stats.factor(regularize) if isinstance(stats, KeyStats) else cholesky(stats, regularize)

    def __call__(self, k: np.ndarray) -> np.ndarray:
        if self.factor is None:
            return np.asarray(k, np.float64)
        return np.linalg.solve(self.factor.T, np.linalg.solve(self.factor, k))


def cholesky(c: np.ndarray, regularize: float = 0.0) -> np.ndarray:
    """Lower Cholesky factor of a second-moment matrix, in float64; a non-finite or singular C is an error."""
    c = np.asarray(c, np.float64)
    if not np.all(np.isfinite(c)):
        raise ValueError(
            "the key statistics contain NaN or inf; recompute them (e.g. key_statistics(..., cache=False))"
        )
    if regularize:
        c = c + regularize * np.mean(np.diag(c)) * np.eye(c.shape[0])
    try:
        return np.linalg.cholesky(c)
    except np.linalg.LinAlgError as err:
        raise ValueError(
            "the key statistics are singular (not positive definite); use more tokens (mom2_n_tokens) or "
            "regularise (mom2_regularize=1e-4)"
        ) from err


def corpus_windows(tokenizer, pieces: Iterable[str], n_tokens: int, window: int) -> np.ndarray:
    """[n, window] token ids: the corpus text (`Corpus.pieces()`, newlines included) tokenised as one stream and cut
    into full windows; pieces are read only until enough tokens are there."""
    stream: list[int] = []
    need = -(-n_tokens // window) * window
    for piece in pieces:
        stream.extend(tokenizer(piece, add_special_tokens=False)["input_ids"])
        if len(stream) >= need:
            break
    n = min(len(stream), need) // window
    if n == 0:
        raise ValueError(f"the corpus has fewer than {window} tokens")
    return np.asarray(stream[: n * window], np.int32).reshape(n, window)


def corpus_records(corpus: Corpus, n_samples: int, seed: int = 1) -> list[str]:
    """n_samples records of the corpus: of a local one, all of them or a random n_samples (seed 1, as the original's
    sampler; PyTorch draws another subset); of one streamed from the hub, the first n_samples (the original samples
    all of Wikipedia, which would mean fetching all of it)."""
    if corpus.streamed:
        return list(itertools.islice(corpus.records(), n_samples))
    records = list(corpus.records())
    if n_samples < len(records):
        chosen = np.random.RandomState(seed).permutation(len(records))[:n_samples]
        records = [records[i] for i in sorted(chosen)]
    return records


def record_batches(
    tokenizer, records: Sequence[str], max_len: int, batch_tokens: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, mask) [B, W]: records tokenised and truncated to max_len, sorted by length and right-padded to W, a
    multiple of 64 (so few shapes compile), with B·W at most batch_tokens (or one record)."""
    rows = [ids[:max_len] for ids in tokenizer(list(records), add_special_tokens=True)["input_ids"] if ids]
    rows.sort(key=len, reverse=True)
    i = 0
    while i < len(rows):
        width = min(padded_width(len(rows[i]), 64), padded_width(max_len, 64))
        count = max(1, batch_tokens // width)
        chunk = rows[i : i + count]
        ids = np.zeros((len(chunk), width), np.int32)
        mask = np.zeros((len(chunk), width), np.int32)
        for j, r in enumerate(chunk):
            ids[j, : len(r)], mask[j, : len(r)] = r, 1
        yield ids, mask
        i += len(chunk)


@partial(jax.jit, static_argnums=(0, 4))
def _moments(cfg: ModelConfig, params: dict, ids: jax.Array, mask: jax.Array, layers: tuple[int, ...]) -> jax.Array:
    """[len(layers), F, F]: Σ k kᵀ over the batch's real tokens (mask 1), at each requested layer (float32).

    Rows are right-padded, so positions count from 0 and padding, which comes last, changes no real token."""
    keys = _keys(cfg, params, ids, mask, layers)
    return jnp.einsum("lnf,lng->lfg", keys, keys, precision="highest")


@partial(jax.jit, static_argnums=(0, 4))
def _keys(cfg: ModelConfig, params: dict, ids: jax.Array, mask: jax.Array, layers: tuple[int, ...]) -> jax.Array:
    """[len(layers), B·T, F]: the MLP keys of a batch at each layer (as _moments reads them), zero at padding."""
    positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
    causal = jnp.tril(jnp.ones((ids.shape[1],) * 2, bool))[None]
    rows = Rows(jnp.arange(ids.shape[1]), rope_tables(cfg, positions), causal)
    h = embed(cfg, params, ids, positions)
    _, acts = run_layers(
        cfg, params["blocks"], h, rows=rows, iv=Interventions(capture=("mlp_key",)), stop=max(layers) + 1
    )
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
    source = open_corpus(corpus, download=download)
    window = min(window, lm.config.max_positions)
    size = f"s{n_samples}-{lm.config.max_positions}" if n_samples is not None else f"{n_tokens}-{window}"
    tag = f"{source.key}-{size}{'' if tolerance is None else f'-tol{tolerance:g}'}-v{FORMAT}"
    paths = {layer: cache_dir() / "stats" / f"{_fingerprint(lm, layer)}-L{layer}-{tag}.npz" for layer in layers}
    out: dict[int, KeyStats] = {}
    if cache:
        for layer, path in paths.items():
            if path.is_file():
                with np.load(path) as z:
                    out[layer] = KeyStats(layer, z["mom2"], int(z["count"]), str(z["corpus"]))
    todo = tuple(layer for layer in layers if layer not in out)
    if not todo:
        return out
    if n_samples is None:
        windows = corpus_windows(lm.tokenizer, source.pieces(), n_tokens, window)
        batches = [(windows[i : i + batch_size], np.ones_like(windows[i : i + batch_size])) for i in range(0, len(windows), batch_size)]  # fmt: skip
    else:
        records = corpus_records(source, n_samples)
        batches = list(record_batches(lm.tokenizer, records, lm.config.max_positions, batch_size * window))
    from tqdm.auto import tqdm

    total = np.zeros((len(todo), lm.config.d_mlp, lm.config.d_mlp))
    count = 0
    where = f"key statistics, layer{'s' if len(todo) > 1 else ''} {', '.join(map(str, todo))}"
    cached = " (cached for next time)" if cache else ""
    converged = _Convergence(tolerance, lm.config.d_mlp) if tolerance is not None else None
    mesh = mesh_of(lm)
    for ids, mask in tqdm(batches, desc=where + cached, disable=not progress):
        if mesh is not None:  # rows over the data axis; XLA sums the per-device moments (one all-reduce)
            ids, mask = split_samples(mesh, jnp.asarray(ids), 0), split_samples(mesh, jnp.asarray(mask), 0)
        total += np.asarray(_moments(lm.config, lm.params, ids, mask, todo), np.float64)
        count += int(mask.sum())
        if converged is not None and converged(lm, ids, mask, todo, total, count):
            break
    for i, layer in enumerate(todo):
        stats = KeyStats(layer, total[i], count, source.name)
        out[layer] = stats
        if cache:
            buf = io.BytesIO()
            np.savez(buf, mom2=stats.mom2, count=stats.count, corpus=stats.corpus)
            atomic_write_bytes(paths[layer], buf.getvalue())
    return out


MODULE_NAMES = {
    "gpt2": "transformer.h.{}.mlp.c_proj",
    "gptj": "transformer.h.{}.mlp.fc_out",
    "gpt_neox": "gpt_neox.layers.{}.mlp.dense_4h_to_h",
    "llama": "model.layers.{}.mlp.down_proj",
}


def layer_stats_name(family: str, layer: int, n_samples: int = 100_000, precision: str = "float32") -> str:
    """The original's file name for a layer's statistics, e.g. transformer.h.17.mlp.c_proj_float32_mom2_100000.npz
    (published under stats/<model>/wikipedia_stats/)."""
    if family not in MODULE_NAMES:
        raise ValueError(f"no module name for family {family!r}; known: {', '.join(MODULE_NAMES)}")
    return f"{MODULE_NAMES[family].format(layer)}_{precision}_mom2_{n_samples}.npz"


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
        module = MODULE_NAMES[lm.config.family].format(layer)
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
