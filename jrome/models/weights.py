"""Checkpoint tensors ↔ jrome's parameter tree: one table per family, read in one direction, written in the other.

The tree is a plain nested dict. Kernels are (in, out), so `x @ kernel`; per-layer arrays are stacked on a
leading layer axis under "blocks", which is what `lax.scan` runs over.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from .config import ModelConfig
from .placement import Placer

Getter = Callable[[str], np.ndarray]

# Per family: the prefix of the base model's tensors, and (tree path, checkpoint name, layout) rows.
# Layouts: "linear" = torch Linear weight (out, in), transposed into a kernel; "conv1d" = already (in, out);
# "vector" = a bias or norm scale; "embedding" = (vocab or positions, d) as is.
_GLOBAL = {
    "gpt2": [
        (("embed", "tokens"), "wte.weight", "embedding"),
        (("embed", "positions"), "wpe.weight", "embedding"),
        (("norm_final", "scale"), "ln_f.weight", "vector"),
        (("norm_final", "bias"), "ln_f.bias", "vector"),
    ],
    "gptj": [
        (("embed", "tokens"), "wte.weight", "embedding"),
        (("norm_final", "scale"), "ln_f.weight", "vector"),
        (("norm_final", "bias"), "ln_f.bias", "vector"),
    ],
    "gpt_neox": [
        (("embed", "tokens"), "embed_in.weight", "embedding"),
        (("norm_final", "scale"), "final_layer_norm.weight", "vector"),
        (("norm_final", "bias"), "final_layer_norm.bias", "vector"),
    ],
    "llama": [
        (("embed", "tokens"), "embed_tokens.weight", "embedding"),
        (("norm_final", "scale"), "norm.weight", "vector"),
    ],
}
_PREFIX = {"gpt2": "transformer.", "gptj": "transformer.", "gpt_neox": "gpt_neox.", "llama": "model."}
_HEAD = {"gpt2": "lm_head", "gptj": "lm_head", "gpt_neox": "embed_out", "llama": "lm_head"}

_LAYER = {
    "gpt2": [
        (("norm_attn", "scale"), "h.{i}.ln_1.weight", "vector"),
        (("norm_attn", "bias"), "h.{i}.ln_1.bias", "vector"),
        (("attn", "o", "kernel"), "h.{i}.attn.c_proj.weight", "conv1d"),
        (("attn", "o", "bias"), "h.{i}.attn.c_proj.bias", "vector"),
        (("norm_mlp", "scale"), "h.{i}.ln_2.weight", "vector"),
        (("norm_mlp", "bias"), "h.{i}.ln_2.bias", "vector"),
        (("mlp", "up", "kernel"), "h.{i}.mlp.c_fc.weight", "conv1d"),
        (("mlp", "up", "bias"), "h.{i}.mlp.c_fc.bias", "vector"),
        (("mlp", "down", "kernel"), "h.{i}.mlp.c_proj.weight", "conv1d"),
        (("mlp", "down", "bias"), "h.{i}.mlp.c_proj.bias", "vector"),
    ],
    "gptj": [
        (("norm_attn", "scale"), "h.{i}.ln_1.weight", "vector"),
        (("norm_attn", "bias"), "h.{i}.ln_1.bias", "vector"),
        (("attn", "q", "kernel"), "h.{i}.attn.q_proj.weight", "linear"),
        (("attn", "k", "kernel"), "h.{i}.attn.k_proj.weight", "linear"),
        (("attn", "v", "kernel"), "h.{i}.attn.v_proj.weight", "linear"),
        (("attn", "o", "kernel"), "h.{i}.attn.out_proj.weight", "linear"),
        (("mlp", "up", "kernel"), "h.{i}.mlp.fc_in.weight", "linear"),
        (("mlp", "up", "bias"), "h.{i}.mlp.fc_in.bias", "vector"),
        (("mlp", "down", "kernel"), "h.{i}.mlp.fc_out.weight", "linear"),
        (("mlp", "down", "bias"), "h.{i}.mlp.fc_out.bias", "vector"),
    ],
    "gpt_neox": [
        (("norm_attn", "scale"), "layers.{i}.input_layernorm.weight", "vector"),
        (("norm_attn", "bias"), "layers.{i}.input_layernorm.bias", "vector"),
        (("norm_mlp", "scale"), "layers.{i}.post_attention_layernorm.weight", "vector"),
        (("norm_mlp", "bias"), "layers.{i}.post_attention_layernorm.bias", "vector"),
        (("attn", "o", "kernel"), "layers.{i}.attention.dense.weight", "linear"),
        (("attn", "o", "bias"), "layers.{i}.attention.dense.bias", "vector"),
        (("mlp", "up", "kernel"), "layers.{i}.mlp.dense_h_to_4h.weight", "linear"),
        (("mlp", "up", "bias"), "layers.{i}.mlp.dense_h_to_4h.bias", "vector"),
        (("mlp", "down", "kernel"), "layers.{i}.mlp.dense_4h_to_h.weight", "linear"),
        (("mlp", "down", "bias"), "layers.{i}.mlp.dense_4h_to_h.bias", "vector"),
    ],
    "llama": [
        (("norm_attn", "scale"), "layers.{i}.input_layernorm.weight", "vector"),
        (("norm_mlp", "scale"), "layers.{i}.post_attention_layernorm.weight", "vector"),
        (("attn", "q", "kernel"), "layers.{i}.self_attn.q_proj.weight", "linear"),
        (("attn", "q", "bias"), "layers.{i}.self_attn.q_proj.bias", "vector"),
        (("attn", "k", "kernel"), "layers.{i}.self_attn.k_proj.weight", "linear"),
        (("attn", "k", "bias"), "layers.{i}.self_attn.k_proj.bias", "vector"),
        (("attn", "v", "kernel"), "layers.{i}.self_attn.v_proj.weight", "linear"),
        (("attn", "v", "bias"), "layers.{i}.self_attn.v_proj.bias", "vector"),
        (("attn", "o", "kernel"), "layers.{i}.self_attn.o_proj.weight", "linear"),
        (("attn", "o", "bias"), "layers.{i}.self_attn.o_proj.bias", "vector"),
        (("attn", "q_norm", "scale"), "layers.{i}.self_attn.q_norm.weight", "vector"),
        (("attn", "k_norm", "scale"), "layers.{i}.self_attn.k_norm.weight", "vector"),
        (("mlp", "gate", "kernel"), "layers.{i}.mlp.gate_proj.weight", "linear"),
        (("mlp", "gate", "bias"), "layers.{i}.mlp.gate_proj.bias", "vector"),
        (("mlp", "up", "kernel"), "layers.{i}.mlp.up_proj.weight", "linear"),
        (("mlp", "up", "bias"), "layers.{i}.mlp.up_proj.bias", "vector"),
        (("mlp", "down", "kernel"), "layers.{i}.mlp.down_proj.weight", "linear"),
        (("mlp", "down", "bias"), "layers.{i}.mlp.down_proj.bias", "vector"),
    ],
}

# Fused query/key/value tensors, split into q, k, v kernels on the way in.
_FUSED_QKV = {"gpt2": "h.{i}.attn.c_attn", "gpt_neox": "layers.{i}.attention.query_key_value"}


# Gemma 2 names its four norms differently: its post_attention_layernorm follows attention (Llama's is the MLP's).
_POST_NORMS = [
    (("norm_attn", "scale"), "layers.{i}.input_layernorm.weight", "vector"),
    (("norm_attn_post", "scale"), "layers.{i}.post_attention_layernorm.weight", "vector"),
    (("norm_mlp", "scale"), "layers.{i}.pre_feedforward_layernorm.weight", "vector"),
    (("norm_mlp_post", "scale"), "layers.{i}.post_feedforward_layernorm.weight", "vector"),
]


def _layer_rows(cfg: ModelConfig) -> list[tuple[tuple[str, ...], str, str]]:
    """The per-layer table of this architecture."""
    rows = _LAYER[cfg.family]
    if cfg.post_norms:
        rows = _POST_NORMS + [row for row in rows if row[0][0] not in ("norm_attn", "norm_mlp")]
    return rows


def _wanted(cfg: ModelConfig, path: tuple[str, ...]) -> bool:
    """Whether this architecture has the parameter at `path` (biases, q/k norms and the second norm are optional)."""
    if path[:2] in (("attn", "q_norm"), ("attn", "k_norm")):
        return cfg.qk_norm
    if path[-1] == "bias":
        if path[0] == "attn":
            return cfg.qkv_bias if path[1] in "qkv" else cfg.attn_out_bias
        if path[0] == "mlp":
            return cfg.mlp_bias
    return not (path[0] == "norm_mlp" and cfg.shared_norm)


def _set(tree: dict, path: tuple[str, ...], value: np.ndarray) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _from_layout(x: np.ndarray, layout: str) -> np.ndarray:
    return np.ascontiguousarray(x.T) if layout == "linear" else x


def _split_qkv(cfg: ModelConfig, family: str, w: np.ndarray, b: np.ndarray | None) -> dict[str, dict]:
    """q, k, v kernels (in, out) and biases from a fused tensor: GPT-2 concatenates them, NeoX interleaves per head."""
    d, h, hd = cfg.d_model, cfg.n_heads, cfg.head_dim
    if family == "gpt2":  # Conv1D: (in, 3 * out), [q | k | v]
        kernels = np.split(w, 3, axis=1)
        biases = np.split(b, 3) if b is not None else [None] * 3
    else:  # Linear (3 * out, in), rows ordered (head, [q, k, v], head_dim)
        per_head = w.reshape(h, 3, hd, d)
        kernels = [np.ascontiguousarray(per_head[:, j].reshape(h * hd, d).T) for j in range(3)]
        biases = [b.reshape(h, 3, hd)[:, j].reshape(-1) for j in range(3)] if b is not None else [None] * 3
    out = {}
    for name, kernel, bias in zip("qkv", kernels, biases, strict=True):
        out[name] = {"kernel": kernel} | ({"bias": bias} if bias is not None else {})
    return out


def params_from_checkpoint(cfg: ModelConfig, names: set[str], get: Getter, place: Placer) -> dict:
    """Build the parameter tree from checkpoint tensors, read one at a time and put in place by `place`.

    `names` are the tensor names in the checkpoint (with or without the base model's prefix).
    """
    family = cfg.family
    prefix = _PREFIX[family] if any(n.startswith(_PREFIX[family]) for n in names) else ""

    def read(name: str) -> np.ndarray:
        full = prefix + name
        if full not in names:
            raise ValueError(f"the checkpoint has no tensor {full!r}, which a {family} model with this config needs")
        return get(full)

    params: dict = {}
    for path, name, layout in _GLOBAL[family]:
        _set(params, path, place.array(path, _from_layout(read(name), layout)))
    head = _HEAD[family]
    if not cfg.tied_head:
        kernel = _from_layout(_head_tensor(names, get, head + ".weight", prefix), "linear")
        _set(params, ("head", "kernel"), place.array(("head", "kernel"), kernel))
    if cfg.head_bias:
        _set(params, ("head", "bias"), place.array(("head", "bias"), _head_tensor(names, get, head + ".bias", prefix)))

    blocks: dict = {}
    for path, name, layout in _layer_rows(cfg):
        if _wanted(cfg, path):
            (leaf,) = place.stack([path], lambda i, n=name, lay=layout: [_from_layout(read(n.format(i=i)), lay)], cfg.n_layers)  # fmt: skip
            _set(blocks, path, leaf)
    if family in _FUSED_QKV:
        base = _FUSED_QKV[family]

        def split(i: int) -> list[np.ndarray]:
            bias = read(base.format(i=i) + ".bias") if cfg.qkv_bias else None
            parts = _split_qkv(cfg, family, read(base.format(i=i) + ".weight"), bias)
            return [parts[proj][leaf] for proj in "qkv" for leaf in sorted(parts[proj])]

        leaves = [
            ("attn", proj, leaf) for proj in "qkv" for leaf in (["bias", "kernel"] if cfg.qkv_bias else ["kernel"])
        ]
        for path, leaf in zip(leaves, place.stack(leaves, split, cfg.n_layers), strict=True):
            _set(blocks, path, leaf)
    params["blocks"] = blocks
    return params


def _head_tensor(names: set[str], get: Getter, name: str, prefix: str) -> np.ndarray:
    """A head tensor, which lives outside the base model's prefix (`lm_head.weight`) but is sometimes inside it."""
    for candidate in (name, prefix + name):
        if candidate in names:
            return get(candidate)
    raise ValueError(f"the checkpoint has no tensor {name!r} (the untied LM head)")


def checkpoint_from_params(cfg: ModelConfig, params: Mapping) -> dict[str, np.ndarray]:
    """The inverse of params_from_checkpoint: Hugging Face tensor names (with the model prefix) → numpy arrays."""
    family = cfg.family
    prefix = _PREFIX[family]
    out: dict[str, np.ndarray] = {}

    def leaf(tree: Mapping, path: tuple[str, ...]) -> np.ndarray:
        for key in path:
            tree = tree[key]
        return np.asarray(tree)

    for path, name, layout in _GLOBAL[family]:
        out[prefix + name] = _from_layout(leaf(params, path), layout)
    head = _HEAD[family]
    if cfg.tied_head:
        out[head + ".weight"] = out[prefix + _GLOBAL[family][0][1]]
    else:
        out[head + ".weight"] = _from_layout(leaf(params, ("head", "kernel")), "linear")
    if cfg.head_bias:
        out[head + ".bias"] = leaf(params, ("head", "bias"))
    blocks = params["blocks"]
    for path, name, layout in _layer_rows(cfg):
        if _wanted(cfg, path):
            stacked = leaf(blocks, path)
            for i in range(cfg.n_layers):
                out[prefix + name.format(i=i)] = _from_layout(stacked[i], layout)
    if family in _FUSED_QKV:
        base = _FUSED_QKV[family]
        d, h, hd = cfg.d_model, cfg.n_heads, cfg.head_dim
        for i in range(cfg.n_layers):
            kernels = [leaf(blocks, ("attn", p, "kernel"))[i] for p in "qkv"]
            biases = [leaf(blocks, ("attn", p, "bias"))[i] for p in "qkv"] if cfg.qkv_bias else None
            if family == "gpt2":
                out[prefix + base.format(i=i) + ".weight"] = np.concatenate(kernels, axis=1)
                if biases is not None:
                    out[prefix + base.format(i=i) + ".bias"] = np.concatenate(biases)
            else:
                rows = np.stack([k.T.reshape(h, hd, d) for k in kernels], axis=1)
                out[prefix + base.format(i=i) + ".weight"] = rows.reshape(3 * h * hd, d)
                if biases is not None:
                    out[prefix + base.format(i=i) + ".bias"] = np.stack(
                        [b.reshape(h, hd) for b in biases], axis=1
                    ).reshape(-1)
    return {k: np.ascontiguousarray(v) for k, v in out.items()}
