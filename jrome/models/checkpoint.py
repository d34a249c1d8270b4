"""Saving models: an orbax checkpoint that `jrome.load` reads back, and a Hugging Face export transformers loads.

Both write into a temporary folder beside the target and rename it into place at the end, so a folder is
either complete or absent; an existing target is only replaced when `overwrite=True`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from ..files import user_mode
from .config import ModelConfig
from .lm import LM
from .placement import Placer
from .weights import checkpoint_from_params

MARKER = "jrome.json"
_ACTIVATION_TO_HF = {"gelu_tanh": "gelu_new", "gelu": "gelu", "silu": "silu", "relu": "relu"}


def _atomic_dir(target: Path, overwrite: bool, fill: Callable[[Path], None]) -> None:
    """Build the folder in a sibling temporary folder, then move it to `target` (a relative path is taken from the
    working directory; orbax needs absolute ones)."""
    target = Path(target).absolute()
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        user_mode(tmp, folder=True)
        fill(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save(lm: LM, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write an orbax checkpoint of the parameters, the config and the tokenizer; `jrome.load(path)` reads it."""
    import orbax.checkpoint as ocp

    def fill(tmp: Path) -> None:
        params = jax.tree.map(np.asarray, lm.params)
        with ocp.StandardCheckpointer() as ckpt:
            ckpt.save(tmp / "params", params)
        meta = {"format": "jrome", "version": 1, "name": lm.name, "config": dataclasses.asdict(lm.config)}
        (tmp / MARKER).write_text(json.dumps(meta, indent=2))
        if lm.tokenizer is not None:
            lm.tokenizer.save_pretrained(tmp / "tokenizer")

    _atomic_dir(Path(path), overwrite, fill)
    return Path(path)


def load_saved(path: Path, dtype: Any, mesh: Mesh | None = None) -> LM:
    """Read a folder written by `save`, its parameters in `dtype`, laid out over `mesh` when given."""
    import orbax.checkpoint as ocp

    meta = json.loads((path / MARKER).read_text())
    cfg = ModelConfig(**meta["config"])
    with ocp.StandardCheckpointer() as ckpt:
        params = ckpt.restore((path / "params").absolute())
    place = Placer(cfg, dtype, mesh)
    params = jax.tree_util.tree_map_with_path(lambda p, x: place.array(tuple(k.key for k in p), x), params)
    tokenizer = None
    if (path / "tokenizer").is_dir():
        from transformers import PreTrainedTokenizerFast

        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path / "tokenizer"))
    return LM(config=cfg, params=params, tokenizer=tokenizer, name=meta.get("name") or str(path))


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """A transformers config.json for this architecture (the inverse of config_from_hf)."""
    act = _ACTIVATION_TO_HF[cfg.activation]
    common = {"vocab_size": cfg.vocab_size, "tie_word_embeddings": cfg.tied_head, "torch_dtype": "float32"}
    if cfg.family in ("gpt2", "gptj"):
        d = {
            "n_embd": cfg.d_model, "n_layer": cfg.n_layers, "n_head": cfg.n_heads, "n_inner": cfg.d_mlp,
            "n_positions": cfg.max_positions, "layer_norm_epsilon": cfg.norm_eps, "activation_function": act,
        }  # fmt: skip
        if cfg.family == "gpt2":
            return common | d | {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}
        return common | d | {"model_type": "gptj", "architectures": ["GPTJForCausalLM"], "rotary_dim": cfg.rotary_dim}
    d = {
        "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "intermediate_size": cfg.d_mlp, "max_position_embeddings": cfg.max_positions, "hidden_act": act,
        "rope_theta": cfg.rope_theta, "attention_bias": cfg.qkv_bias,
    }  # fmt: skip
    if cfg.family == "gpt_neox":
        fraction = cfg.rotary_dim / cfg.head_dim
        return common | d | {
            "model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"], "layer_norm_eps": cfg.norm_eps,
            "use_parallel_residual": cfg.parallel_residual, "rotary_pct": fraction, "rotary_emb_base": cfg.rope_theta,
            "partial_rotary_factor": fraction,
        }  # fmt: skip
    kind = cfg.model_type or "llama"
    llama = common | d | {
        "model_type": kind, "architectures": [LLAMA_ARCHITECTURES[kind]], "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim, "rms_norm_eps": cfg.norm_eps, "mlp_bias": cfg.mlp_bias,
    }  # fmt: skip
    if kind in ("mistral", "gemma2", "gemma3_text"):
        llama["sliding_window"] = cfg.sliding_window or None
    if kind in ("gemma", "gemma2", "gemma3_text"):
        llama["hidden_act"] = llama["hidden_activation"] = "gelu_pytorch_tanh"
    if kind in ("gemma2", "gemma3_text"):
        llama |= {
            "attn_logit_softcapping": cfg.attn_softcap or None, "final_logit_softcapping": cfg.final_softcap or None,
            "query_pre_attn_scalar": round(cfg.query_scale**-2),
        }  # fmt: skip
    if kind == "gemma3_text":
        local = set(cfg.local_layers)
        llama["layer_types"] = ["sliding_attention" if i in local else "full_attention" for i in range(cfg.n_layers)]
        llama["rope_parameters"] = {
            "full_attention": {"rope_type": "default", "rope_theta": cfg.rope_theta},
            "sliding_attention": {"rope_type": "default", "rope_theta": cfg.rope_local_theta},
        }
        llama["rope_local_base_freq"] = cfg.rope_local_theta
    return llama


LLAMA_ARCHITECTURES = {
    "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM", "gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
}  # fmt: skip


def export_hf(lm: LM, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a Hugging Face folder (config.json, model.safetensors, tokenizer) that transformers loads as is."""
    from safetensors.numpy import save_file

    def fill(tmp: Path) -> None:
        (tmp / "config.json").write_text(json.dumps(config_to_hf(lm.config), indent=2))
        tensors = checkpoint_from_params(lm.config, jax.tree.map(lambda x: np.asarray(x, np.float32), lm.params))
        if lm.config.tied_head:  # transformers ties the head itself; saving both names would duplicate the matrix
            tensors.pop("lm_head.weight", None)
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if lm.tokenizer is not None:
            lm.tokenizer.save_pretrained(tmp)

    _atomic_dir(Path(path), overwrite, fill)
    return Path(path)
