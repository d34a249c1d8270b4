"""Key statistics: C = E[k kᵀ] of the input to an MLP's output projection, over a text corpus.

The corpus is tokenised into one stream and cut into fixed-length windows (no padding), run through the
layers up to the deepest one asked for, in batches inside jit; second moments are summed in float32 per
batch and accumulated across batches in float64. Results are cached on disk, keyed by the model's relevant
weights, the layer, the corpus and the token count.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ..interventions import Interventions
from ..io import atomic_write_bytes
from ..models.config import ModelConfig
from ..models.forward import embed, rope_tables, run_layers
from ..models.lm import LM


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


def cache_dir() -> Path:
    """Where statistics are cached: $JROME_CACHE_DIR, else ~/.cache/jrome."""
    return Path(os.environ.get("JROME_CACHE_DIR", Path.home() / ".cache" / "jrome"))


def corpus_files(corpus: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Text files of a corpus: "wikitext-2" ($JROME_DATA_DIR/wikitext-2/*.txt), "hf:<dataset repo>", paths or folders."""
    if isinstance(corpus, str) and corpus == "wikitext-2":
        from ..data import data_dir

        folder = data_dir() / "wikitext-2"
        files = sorted(folder.glob("*.txt"))
        if not files:
            raise FileNotFoundError(
                f"no wikitext-2 text in {folder} (set JROME_DATA_DIR to the folder holding wikitext-2/*.txt)"
            )
        return files
    if isinstance(corpus, str) and corpus.startswith("hf:"):
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(corpus[3:], repo_type="dataset", allow_patterns=["*.txt"]))
        except Exception as err:
            raise OSError(f"could not get dataset {corpus[3:]!r} from the Hugging Face hub: {err}") from err
        return sorted(folder.rglob("*.txt"))
    paths = [corpus] if isinstance(corpus, str | os.PathLike) else list(corpus)
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(p.rglob("*.txt"))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"corpus path {p} does not exist")
    if not files:
        raise FileNotFoundError(f"no .txt files in corpus {corpus!r}")
    return files


def corpus_windows(tokenizer, files: Sequence[Path], n_tokens: int, window: int) -> np.ndarray:
    """[n, window] token ids: the files' paragraphs tokenised into one stream, cut into full windows."""
    stream: list[int] = []
    need = -(-n_tokens // window) * window
    for path in files:
        paragraphs = [p.strip() for p in path.read_text(encoding="utf-8").split("\n") if p.strip()]
        for start in range(0, len(paragraphs), 256):
            for ids in tokenizer(paragraphs[start : start + 256], add_special_tokens=False)["input_ids"]:
                stream.extend(ids)
            if len(stream) >= need:
                break
        if len(stream) >= need:
            break
    n = min(len(stream), need) // window
    if n == 0:
        raise ValueError(f"the corpus has fewer than {window} tokens")
    return np.asarray(stream[: n * window], np.int32).reshape(n, window)


@partial(jax.jit, static_argnums=(0, 3))
def _moments(cfg: ModelConfig, params: dict, ids: jax.Array, layers: tuple[int, ...]) -> jax.Array:
    """[len(layers), F, F]: Σ k kᵀ over every token of the batch, at each requested layer (float32)."""
    positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
    h = embed(cfg, params, ids, positions)
    causal = jnp.tril(jnp.ones((ids.shape[1],) * 2, bool))[None]
    _, acts = run_layers(
        cfg, params["blocks"], h, cols=jnp.arange(ids.shape[1]), rope=rope_tables(cfg, positions), self_mask=causal,
        iv=Interventions(capture=("mlp_key",)), stop=max(layers) + 1,
    )  # fmt: skip
    keys = acts["mlp_key"][jnp.asarray(layers)].astype(jnp.float32)
    keys = keys.reshape(len(layers), -1, keys.shape[-1])
    return jnp.einsum("lnf,lng->lfg", keys, keys, precision="highest")


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


def _corpus_id(files: Sequence[Path]) -> str:
    digest = hashlib.sha1()
    for f in files:
        digest.update(f.name.encode() + f.read_bytes())
    return digest.hexdigest()[:12]


def key_statistics(
    lm: LM,
    layers: int | Sequence[int],
    corpus: str | os.PathLike | Sequence[str | os.PathLike] = "wikitext-2",
    n_tokens: int = 100_000,
    *,
    window: int = 128,
    batch_size: int = 16,
    cache: bool = True,
    progress: bool = True,
) -> dict[int, KeyStats]:
    """Second moments of the MLP keys at each layer over n_tokens of the corpus (fewer if it is shorter).

    All layers come from one pass over the corpus. With `cache`, results are read from and written to
    cache_dir()/stats, keyed by the relevant weights, layer, corpus and token count.
    """
    layers = sorted({layers} if isinstance(layers, int) else set(layers))
    bad = [layer for layer in layers if not 0 <= layer < lm.config.n_layers]
    if bad or not layers:
        raise ValueError(f"layers {bad or layers} out of range: this model has layers 0..{lm.config.n_layers - 1}")
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be positive, got {n_tokens}")
    if lm.tokenizer is None:
        raise ValueError("key statistics need a tokenizer to read the corpus")
    files = corpus_files(corpus)
    window = min(window, lm.config.max_positions)
    tag = f"{_corpus_id(files)}-{n_tokens}-{window}"
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
    windows = corpus_windows(lm.tokenizer, files, n_tokens, window)
    from tqdm.auto import tqdm

    total = np.zeros((len(todo), lm.config.d_mlp, lm.config.d_mlp))
    for start in tqdm(range(0, len(windows), batch_size), desc="key statistics", disable=not progress):
        total += np.asarray(_moments(lm.config, lm.params, windows[start : start + batch_size], todo), np.float64)
    corpus_name = corpus if isinstance(corpus, str) else ",".join(str(f) for f in files)
    for i, layer in enumerate(todo):
        stats = KeyStats(layer, total[i], int(windows.size), corpus_name)
        out[layer] = stats
        if cache:
            buf = io.BytesIO()
            np.savez(buf, mom2=stats.mom2, count=stats.count, corpus=stats.corpus)
            atomic_write_bytes(paths[layer], buf.getvalue())
    return out
