"""The parameter tree's layout in one table: per leaf its path, what it is, its axes, which axis the mesh's "model"
axis splits, and its names in transformers checkpoints and penzai models. Loading and export (`weights`, which
checks each tensor's shape by the axes), placement on a mesh (`placement`) and the penzai conversion
(`penzai_labels`, `jrome.interop.penzai`) all read it from here.

Rows run in the order the forward reads them (embeddings, then a block from its attention norm to its MLP output
norm, then the final norm and head). Axes: "layer" (the stacked blocks), "vocab", "position", "d_model", "q"
(query heads × head_dim), "kv" (key/value heads × head_dim), "head_dim", "d_mlp"; kernels are (in, out).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

from .config import ModelConfig

Path = tuple[str, ...]
MESH_AXES = ("data", "model")  # a device mesh's axes: "data" splits batches and noise samples, "model" parameters

# How a transformers checkpoint stores a module's tensors; its bias, a vector, is stored as the weight is.
AS_IS = "as_is"  # embeddings, norms, GPT-2's Conv1D (in, out): jrome's layout already
LINEAR = "linear"  # torch Linear (out, in): the transpose of jrome's kernel
QKV_CONCAT = "qkv_concat"  # GPT-2's c_attn: a Conv1D whose output is [q | k | v]
QKV_PER_HEAD = "qkv_per_head"  # GPT-NeoX's query_key_value: a Linear whose output runs (head, q/k/v, head_dim)
POST_NORMS = "post_norms"  # the names of Gemma 2 and 3 (norms after attention and MLP) where they are not Llama's
PREFIX = {"gpt2": "transformer.", "gptj": "transformer.", "gpt_neox": "gpt_neox.", "llama": "model."}  # base model


@dataclasses.dataclass(frozen=True)
class Param:
    """One leaf of the parameter tree. `hf`: naming scheme (a family, or POST_NORMS) → (transformers tensor name
    with "{i}" for the layer, how it is stored); `penzai`: penzai variant ("llama", "gpt_neox") → parameter label
    (after "block_<i>/" for a block's). `split`: the axis the "model" mesh axis splits; None: every device holds all.
    """

    path: Path
    role: str
    axes: tuple[str, ...]
    when: Callable[[ModelConfig], bool]
    split: str | None = None
    hf: Mapping[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    penzai: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def stacked(self) -> bool:
        """Whether the leaf holds one array per layer (under "blocks")."""
        return self.path[0] == "blocks"

    def shape(self, cfg: ModelConfig) -> tuple[int, ...]:
        """The leaf's shape in a model with this config (its axes' sizes)."""
        sizes = {"layer": cfg.n_layers, "vocab": cfg.vocab_size, "position": cfg.max_positions, "d_model": cfg.d_model,
                 "q": cfg.q_dim, "kv": cfg.kv_dim, "head_dim": cfg.head_dim, "d_mlp": cfg.d_mlp}  # fmt: skip
        return tuple(sizes[axis] for axis in self.axes)

    def hf_name(self, cfg: ModelConfig) -> tuple[str, str]:
        """(transformers tensor name with "{i}" for the layer, how it is stored) in cfg's architecture."""
        for scheme in (POST_NORMS, cfg.family) if cfg.post_norms else (cfg.family,):
            if scheme in self.hf:
                return self.hf[scheme]
        raise ValueError(f"{'.'.join(self.path)} ({self.role}) has no transformers name in the {cfg.family} family")


def _always(cfg: ModelConfig) -> bool:
    return True


def _layernorm(cfg: ModelConfig) -> bool:
    return cfg.norm == "layernorm"


def _dense(
    path: str,
    role: str,
    axes: tuple[str, str],
    *,
    split: str | None,
    bias: Callable[[ModelConfig], bool],
    hf: Mapping[str, tuple[str, str]],
    penzai: Mapping[str, tuple[str, str | None]] | None = None,
    when: Callable[[ModelConfig], bool] = _always,
) -> tuple[Param, Param]:
    """A stacked projection's kernel and bias rows: `hf` names the module (scheme → (name, storage)), `penzai` its
    weights and bias labels; the bias is split with the kernel's output axis and present where `bias` says."""
    bias_split = split if split == axes[1] else None
    penzai = penzai or {}
    return (
        Param(("blocks", *path.split("."), "kernel"), role, ("layer", *axes), when, split,
              {k: (f"{name}.weight", how) for k, (name, how) in hf.items()}, {k: w for k, (w, _) in penzai.items()}),
        Param(("blocks", *path.split("."), "bias"), f"{role} bias", ("layer", axes[1]),
              lambda cfg: when(cfg) and bias(cfg), bias_split,
              {k: (f"{name}.bias", how) for k, (name, how) in hf.items()}, {k: b for k, (_, b) in penzai.items() if b}),
    )  # fmt: skip


def _norm(path: str, role: str, when: Callable[[ModelConfig], bool], hf: Mapping[str, str], penzai: str = "",
          bias: Mapping[str, str] | None = None, penzai_bias: str = "") -> tuple[Param, ...]:  # fmt: skip
    """A stacked norm's scale row (and its bias row, where LayerNorm has one): `hf` and `bias` name the tensors."""
    scale = Param(
        ("blocks", path, "scale"), f"{role} scale", ("layer", "d_model"), when, None,
        {k: (v, AS_IS) for k, v in hf.items()}, dict.fromkeys(("llama", "gpt_neox"), penzai) if penzai else {},
    )  # fmt: skip
    if bias is None:
        return (scale,)
    shift = Param(
        ("blocks", path, "bias"), f"{role} bias", ("layer", "d_model"), lambda c: when(c) and _layernorm(c), None,
        {k: (v, AS_IS) for k, v in bias.items()}, {"gpt_neox": penzai_bias} if penzai_bias else {},
    )  # fmt: skip
    return scale, shift


_GPT2, _NEOX, _LLAMA = "transformer.h.{i}.", "gpt_neox.layers.{i}.", "model.layers.{i}."

PARAMS: tuple[Param, ...] = (
    Param(("embed", "tokens"), "token embeddings (the LM head too when tied)", ("vocab", "d_model"), _always, "vocab",
          {"gpt2": ("transformer.wte.weight", AS_IS), "gptj": ("transformer.wte.weight", AS_IS),
           "gpt_neox": ("gpt_neox.embed_in.weight", AS_IS), "llama": ("model.embed_tokens.weight", AS_IS)},
          {"llama": "embedder.embeddings", "gpt_neox": "embedder.embeddings"}),
    Param(("embed", "positions"), "learned position embeddings", ("position", "d_model"),
          lambda c: c.positions == "learned", None, {"gpt2": ("transformer.wpe.weight", AS_IS)}),
    *_norm("norm_attn", "attention input norm", _always,
           {"gpt2": _GPT2 + "ln_1.weight", "gptj": _GPT2 + "ln_1.weight",
            "gpt_neox": _NEOX + "input_layernorm.weight", "llama": _LLAMA + "input_layernorm.weight"},
           "pre_attention_norm/scale.weights",
           {"gpt2": _GPT2 + "ln_1.bias", "gptj": _GPT2 + "ln_1.bias", "gpt_neox": _NEOX + "input_layernorm.bias"},
           "pre_attention_norm/shift.bias"),
    *_dense("attn.q", "query projection", ("d_model", "q"), split="q", bias=lambda c: c.qkv_bias,
            hf={"gpt2": (_GPT2 + "attn.c_attn", QKV_CONCAT), "gptj": (_GPT2 + "attn.q_proj", LINEAR),
                "gpt_neox": (_NEOX + "attention.query_key_value", QKV_PER_HEAD),
                "llama": (_LLAMA + "self_attn.q_proj", LINEAR)},
            penzai={"llama": ("attention/query.weights", None),
                    "gpt_neox": ("attention/query/Linear.weights", "attention/query/AddBias.bias")}),
    *_dense("attn.k", "key projection", ("d_model", "kv"), split="kv", bias=lambda c: c.qkv_bias,
            hf={"gpt2": (_GPT2 + "attn.c_attn", QKV_CONCAT), "gptj": (_GPT2 + "attn.k_proj", LINEAR),
                "gpt_neox": (_NEOX + "attention.query_key_value", QKV_PER_HEAD),
                "llama": (_LLAMA + "self_attn.k_proj", LINEAR)},
            penzai={"llama": ("attention/key.weights", None),
                    "gpt_neox": ("attention/key/Linear.weights", "attention/key/AddBias.bias")}),
    *_dense("attn.v", "value projection", ("d_model", "kv"), split="kv", bias=lambda c: c.qkv_bias,
            hf={"gpt2": (_GPT2 + "attn.c_attn", QKV_CONCAT), "gptj": (_GPT2 + "attn.v_proj", LINEAR),
                "gpt_neox": (_NEOX + "attention.query_key_value", QKV_PER_HEAD),
                "llama": (_LLAMA + "self_attn.v_proj", LINEAR)},
            penzai={"llama": ("attention/value.weights", None),
                    "gpt_neox": ("attention/value/Linear.weights", "attention/value/AddBias.bias")}),
    Param(("blocks", "attn", "q_norm", "scale"), "per-head query norm scale", ("layer", "head_dim"),
          lambda c: c.qk_norm, None, {"llama": (_LLAMA + "self_attn.q_norm.weight", AS_IS)}),
    Param(("blocks", "attn", "k_norm", "scale"), "per-head key norm scale", ("layer", "head_dim"),
          lambda c: c.qk_norm, None, {"llama": (_LLAMA + "self_attn.k_norm.weight", AS_IS)}),
    *_dense("attn.o", "attention output projection", ("q", "d_model"), split="q", bias=lambda c: c.attn_out_bias,
            hf={"gpt2": (_GPT2 + "attn.c_proj", AS_IS), "gptj": (_GPT2 + "attn.out_proj", LINEAR),
                "gpt_neox": (_NEOX + "attention.dense", LINEAR), "llama": (_LLAMA + "self_attn.o_proj", LINEAR)},
            penzai={"llama": ("attention/output.weights", None),
                    "gpt_neox": ("attention/output/Linear.weights", "attention/output/AddBias.bias")}),
    *_norm("norm_attn_post", "attention output norm", lambda c: c.post_norms,
           {POST_NORMS: _LLAMA + "post_attention_layernorm.weight"}),
    *_norm("norm_mlp", "MLP input norm", lambda c: not c.shared_norm,
           {"gpt2": _GPT2 + "ln_2.weight", "gpt_neox": _NEOX + "post_attention_layernorm.weight",
            "llama": _LLAMA + "post_attention_layernorm.weight",
            POST_NORMS: _LLAMA + "pre_feedforward_layernorm.weight"},
           "pre_ffw_norm/scale.weights",
           {"gpt2": _GPT2 + "ln_2.bias", "gpt_neox": _NEOX + "post_attention_layernorm.bias"},
           "pre_ffw_norm/shift.bias"),
    *_dense("mlp.gate", "MLP gate projection", ("d_model", "d_mlp"), split="d_mlp", bias=lambda c: c.mlp_bias,
            when=lambda c: c.mlp == "swiglu", hf={"llama": (_LLAMA + "mlp.gate_proj", LINEAR)},
            penzai={"llama": ("mlp/gating_linear.weights", None)}),
    *_dense("mlp.up", "MLP input projection", ("d_model", "d_mlp"), split="d_mlp", bias=lambda c: c.mlp_bias,
            hf={"gpt2": (_GPT2 + "mlp.c_fc", AS_IS), "gptj": (_GPT2 + "mlp.fc_in", LINEAR),
                "gpt_neox": (_NEOX + "mlp.dense_h_to_4h", LINEAR), "llama": (_LLAMA + "mlp.up_proj", LINEAR)},
            penzai={"llama": ("mlp/value_linear.weights", None),
                    "gpt_neox": ("mlp/in/Linear.weights", "mlp/in/AddBias.bias")}),
    *_dense("mlp.down", "MLP output projection (the weights ROME and MEMIT edit)", ("d_mlp", "d_model"),
            split="d_mlp", bias=lambda c: c.mlp_bias,
            hf={"gpt2": (_GPT2 + "mlp.c_proj", AS_IS), "gptj": (_GPT2 + "mlp.fc_out", LINEAR),
                "gpt_neox": (_NEOX + "mlp.dense_4h_to_h", LINEAR), "llama": (_LLAMA + "mlp.down_proj", LINEAR)},
            penzai={"llama": ("mlp/out_linear.weights", None),
                    "gpt_neox": ("mlp/out/Linear.weights", "mlp/out/AddBias.bias")}),
    *_norm("norm_mlp_post", "MLP output norm", lambda c: c.post_norms,
           {POST_NORMS: _LLAMA + "post_feedforward_layernorm.weight"}),
    Param(("norm_final", "scale"), "final norm scale", ("d_model",), _always, None,
          {"gpt2": ("transformer.ln_f.weight", AS_IS), "gptj": ("transformer.ln_f.weight", AS_IS),
           "gpt_neox": ("gpt_neox.final_layer_norm.weight", AS_IS), "llama": ("model.norm.weight", AS_IS)},
          {"llama": "final_norm/scale.weights", "gpt_neox": "final_norm/scale.weights"}),
    Param(("norm_final", "bias"), "final norm bias", ("d_model",), _layernorm, None,
          {"gpt2": ("transformer.ln_f.bias", AS_IS), "gptj": ("transformer.ln_f.bias", AS_IS),
           "gpt_neox": ("gpt_neox.final_layer_norm.bias", AS_IS)}, {"gpt_neox": "final_norm/shift.bias"}),
    Param(("head", "kernel"), "untied LM head", ("d_model", "vocab"), lambda c: not c.tied_head, "vocab",
          {"gpt2": ("lm_head.weight", LINEAR), "gptj": ("lm_head.weight", LINEAR),
           "gpt_neox": ("embed_out.weight", LINEAR), "llama": ("lm_head.weight", LINEAR)},
          {"llama": "lm_head.weights", "gpt_neox": "lm_head.weights"}),
    Param(("head", "bias"), "LM head bias", ("vocab",), lambda c: c.head_bias, "vocab",
          {"gpt2": ("lm_head.bias", AS_IS), "gptj": ("lm_head.bias", AS_IS), "gpt_neox": ("embed_out.bias", AS_IS),
           "llama": ("lm_head.bias", AS_IS)}),
)  # fmt: skip
BY_PATH: dict[Path, Param] = {p.path: p for p in PARAMS}
EDITED: Path = ("blocks", "mlp", "down", "kernel")  # the stacked kernels ROME and MEMIT rewrite


def param(path: Path) -> Param:
    """The row of the leaf at `path`; an error naming the known paths for one the layout does not have."""
    if tuple(path) not in BY_PATH:
        known = ", ".join(".".join(p) for p in BY_PATH)
        raise ValueError(f"{'.'.join(map(str, path))} is not a parameter of jrome's layout; the layout has: {known}")
    return BY_PATH[tuple(path)]


def present(cfg: ModelConfig) -> list[Param]:
    """The rows of the leaves a model with this config has, in the order the forward reads them."""
    return [p for p in PARAMS if p.when(cfg)]


def leaf(tree: Mapping, path: Path) -> Any:
    """The value at `path` in a nested dict."""
    return functools.reduce(lambda node, key: node[key], path, tree)


def put(tree: dict, path: Path, value: Any) -> None:
    """Set the value at `path` in a nested dict being built, making the dicts on the way."""
    functools.reduce(lambda node, key: node.setdefault(key, {}), path[:-1], tree)[path[-1]] = value
