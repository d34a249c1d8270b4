"""jrome models as penzai transformers and back, so a penzai user's model can be traced and edited by jrome and
jrome's edits land in the penzai model.

penzai (the JAX interpretability toolkit) builds Llama-like (Llama, Mistral, SmolLM2) and GPT-NeoX transformers as
pytrees of layers whose parameters are named arrays labelled by where they sit ("transformer/block_3/mlp/
out_linear.weights"). The labels are the penzai column of `jrome.models.layout`, read by
`jrome.models.penzai_labels`; values are moved, never recomputed, so a round trip gives the same arrays bit for bit.
Needs the optional `penzai` package (`pip install "jrome[penzai]"`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..models.config import ModelConfig
from ..models.layout import leaf
from ..models.lm import LM
from ..models.penzai_labels import HEADS, KV_HEADS, label_table, params_from_named, strip_label

PENZAI_ACTIVATIONS = {"gelu": "gelu_exact", "gelu_tanh": "gelu_approx", "relu": "relu", "silu": "silu"}
NAME = "transformer"  # the prefix of every parameter label in the models to_penzai builds


def _pz():
    try:
        from penzai import pz
    except ImportError as e:
        raise ImportError('penzai is not installed; install it with pip install "jrome[penzai]"') from e
    return pz


def _variant(cfg: ModelConfig) -> str:
    """Which penzai variant holds this architecture ("llama" or "gpt_neox"); a clear error for what none holds."""
    if cfg.family == "llama":
        unsupported = {
            "q/k/v, output or MLP biases": cfg.qkv_bias or cfg.attn_out_bias or cfg.mlp_bias or cfg.head_bias,
            "q/k norms (Qwen3)": cfg.qk_norm,
            "norms of scale + 1 or scaled embeddings (Gemma)": cfg.norm_offset != 0 or cfg.embed_scale != 1.0,
            "norms after attention and MLP, soft caps or a query scale (Gemma 2)": cfg.post_norms
            or bool(cfg.attn_softcap or cfg.final_softcap or cfg.query_scale),
            "partial rotary": cfg.rotary_dim != cfg.head_dim,
            f"the {cfg.activation} gated MLP": cfg.activation not in ("silu", "gelu_tanh"),
        }
        variant = "llama"
    elif cfg.family == "gpt_neox":
        unsupported = {
            "sequential residuals (use_parallel_residual=False)": not cfg.parallel_residual,
            "a tied LM head": cfg.tied_head,
            "an LM head bias": cfg.head_bias,
        }
        variant = "gpt_neox"
    else:
        unsupported, variant = {f"the {cfg.family} family": True}, ""
    found = [what for what, present in unsupported.items() if present]
    if found:
        raise ValueError(
            f"penzai has no variant for {', '.join(found)} ({cfg.model_type or cfg.family}); "
            "to_penzai takes Llama-like models (Llama, Mistral, SmolLM2: no biases, full rotary) and GPT-NeoX "
            "(parallel residual, untied head)"
        )
    return variant


def _model_def(cfg: ModelConfig, dtype: Any):
    """penzai's model for cfg with parameter slots (no values yet)."""
    pz = _pz()
    if _variant(cfg) == "gpt_neox":
        from penzai.models.transformer.variants import gpt_neox

        config = gpt_neox.GPTNeoXTransformerConfig(
            num_attention_heads=cfg.n_heads,
            embedding_dim=cfg.d_model,
            projection_dim=cfg.head_dim,
            mlp_hidden_dim=cfg.d_mlp,
            num_decoder_blocks=cfg.n_layers,
            vocab_size=cfg.vocab_size,
            activation_fn=PENZAI_ACTIVATIONS[cfg.activation],
            rope_subset_size=cfg.rotary_dim,
            rope_wavelength=cfg.rope_theta,
            layernorm_epsilon=cfg.norm_eps,
            parameter_dtype=dtype,
            activation_dtype=dtype,
        )
        model = gpt_neox.build_gpt_neox_transformer(config, init_base_rng=None, name=NAME)
        return _exact_epsilon(model, pz.nn.Standardize, cfg.norm_eps)
    from penzai.models.transformer.variants import llamalike_common as llamalike

    window = cfg.sliding_window
    config = llamalike.LlamalikeTransformerConfig(
        num_kv_heads=cfg.n_kv_heads,
        query_head_multiplier=cfg.n_heads // cfg.n_kv_heads,
        embedding_dim=cfg.d_model,
        projection_dim=cfg.head_dim,
        mlp_hidden_dim=cfg.d_mlp,
        num_decoder_blocks=cfg.n_layers,
        vocab_size=cfg.vocab_size,
        mlp_variant="swiglu" if cfg.activation == "silu" else "geglu_approx",
        tie_embedder_and_logits=cfg.tied_head,
        rope_wavelength=cfg.rope_theta,
        rms_norm_eps=cfg.norm_eps,
        attention_type=llamalike.AttentionTypeSlidingWindowCausal(window)
        if window
        else llamalike.AttentionTypeGlobalCausal(),
        parameter_dtype=dtype,
        activation_dtype=dtype,
    )
    model = llamalike.build_llamalike_transformer(config, init_base_rng=None, name=NAME)
    model = _exact_epsilon(model, pz.nn.RMSStandardize, cfg.norm_eps)
    if cfg.tied_head:  # penzai ties the head only with Gemma's √d embedding scale; jrome's tied models have none
        kept = [layer for layer in model.body.sublayers if not isinstance(layer, pz.nn.ConstantRescale)]
        model = dataclasses.replace(model, body=pz.nn.Sequential(kept))
    return model


def _exact_epsilon(model: Any, norm: type, eps: float) -> Any:
    """Every norm of `model` with jrome's epsilon as a Python float (penzai's builders store a float32 array; the
    value computed with is the same, and from_penzai reads it back exactly)."""
    return _pz().select(model).at_instances_of(norm).apply(lambda n: dataclasses.replace(n, epsilon=eps))


def _axes(names: tuple[str, ...], metadata: Any) -> list[tuple[str, int]]:
    """(name, size) of each penzai axis, with the head placeholders expanded to the model's head axes."""
    sizes = {
        "embedding": metadata.embedding_dim,
        "projection": metadata.projection_dim,
        "neurons": metadata.mlp_hidden_dim,
        "vocabulary": metadata.vocab_size,
    }
    heads = {HEADS: {**metadata.common_head_axes, **metadata.query_only_head_axes}, KV_HEADS: metadata.common_head_axes}
    out: list[tuple[str, int]] = []
    for name in names:
        out.extend(heads[name].items() if name in heads else [(name, sizes[name])])
    return out


def _named_values(lm: LM, labels: list[str], metadata: Any) -> dict[str, Any]:
    """lm's parameters as penzai named arrays, for these parameter labels of a penzai model."""
    pz = _pz()
    table = label_table(_variant(lm.config), lm.config.n_layers)
    values = {}
    for label in labels:
        if strip_label(label) not in table:
            raise ValueError(f"the penzai model has a parameter jrome does not know: {label}")
        path, layer, names = table[strip_label(label)]
        array = leaf(lm.params, path)
        array = array if layer is None else array[layer]
        axes = _axes(names, metadata)
        values[label] = pz.nx.wrap(array.reshape([size for _, size in axes])).tag(*[name for name, _ in axes])
    return values


def to_penzai(lm: LM) -> Any:
    """A penzai TransformerLM (its Llama-like or GPT-NeoX variant) with lm's parameters; its logits are lm's."""
    pz = _pz()
    model = _model_def(lm.config, lm.dtype)
    slots = pz.select(model).at_instances_of(pz.ParameterSlot).get_sequence()
    values = _named_values(lm, [slot.label for slot in slots], model.metadata)
    model = pz.bind_variables(model, [pz.Parameter(value=v, label=k) for k, v in values.items()])
    pz.nn.assert_no_parameter_slots(model)
    return model


def update_penzai(model: Any, lm: LM) -> Any:
    """`model` (a penzai transformer, possibly changed by its user) with the parameter values of `lm` — e.g. after a
    jrome edit — and everything else kept; `model` itself is not changed."""
    pz = _pz()
    unbound, params = pz.unbind_params(model)
    values = _named_values(lm, [p.label for p in params], model.metadata)
    for p in params:
        if values[p.label].named_shape != p.value.named_shape:
            raise ValueError(
                f"{p.label}: the LM gives {dict(values[p.label].named_shape)}, the model has {dict(p.value.named_shape)}"
            )
    return pz.bind_variables(unbound, [pz.Parameter(value=values[p.label], label=p.label) for p in params])


def _only(values: list, what: str) -> Any:
    if len(set(values)) != 1:
        raise ValueError(f"from_penzai needs one {what} for the whole model; found {sorted(set(map(str, values)))}")
    return values[0]


def _epsilon(norms: list) -> float:
    """The norms' epsilon: as given where it is a Python number (to_penzai's models), else the shortest decimal of
    penzai's float32 (its builders keep 1e-6 as 9.9999997e-07). penzai's GPT-NeoX final norm keeps its own default
    (1e-6) whatever the config; jrome uses one epsilon, the one most norms have."""
    values = [
        n.epsilon
        if isinstance(n.epsilon, float)
        else float(np.format_float_positional(np.float32(n.epsilon), unique=True))
        for n in norms
    ]
    return max(set(values), key=values.count)


def _activation(fn: Any) -> str:
    base = fn.func if isinstance(fn, functools.partial) else fn
    if base is jax.nn.gelu:
        return "gelu_tanh" if fn.keywords.get("approximate", True) else "gelu"
    for name in ("silu", "relu"):
        if base is getattr(jax.nn, name):
            return name
    raise ValueError(f"from_penzai: the MLP activation {fn!r} is not one jrome runs (gelu, gelu_tanh, silu, relu)")


def _instances(model: Any, cls: type) -> list:
    return _pz().select(model).at_instances_of(cls).get_sequence()


def _wavelength(rope: list) -> float:
    return float(_only([float(r.max_wavelength) for r in rope], "rotary wavelength"))


def _config(model: Any, variant: str, n_layers: int, max_positions: int | None, model_type: str) -> ModelConfig:
    """The ModelConfig of a penzai transformer, read from its metadata and layers."""
    pz = _pz()
    extras = {"logit soft-capping": pz.nn.TanhSoftCap, "a layer stack": pz.nn.LayerStack}
    found = [what for what, cls in extras.items() if _instances(model, cls)]
    if found:
        raise ValueError(f"from_penzai does not take a model with {', '.join(found)}")
    meta = model.metadata
    windows = [m.sliding_window_size for m in _instances(model, pz.nn.ApplyCausalSlidingWindowAttentionMask)]
    window = _only(windows, "sliding window") if windows else 0
    common = dict(
        vocab_size=meta.vocab_size,
        d_model=meta.embedding_dim,
        n_layers=n_layers,
        n_heads=math.prod([*meta.common_head_axes.values(), *meta.query_only_head_axes.values()]),
        head_dim=meta.projection_dim,
        d_mlp=meta.mlp_hidden_dim,
        max_positions=window or max_positions or 4096,
        positions="rotary",
        rotary_style="half",
        activation=_only([_activation(e.fn) for e in _instances(model, pz.nn.Elementwise)], "MLP activation"),
        tied_head=any(isinstance(layer, pz.nn.EmbeddingDecode) for layer in model.body.sublayers),
        head_bias=False,
        model_type=model_type,
    )
    if variant == "llama":
        return ModelConfig(**common, **_llama_fields(model, window))
    return ModelConfig(**common, **_neox_fields(model, common["n_heads"]))


def _llama_fields(model: Any, window: int) -> dict[str, Any]:
    """The fields a Llama-like penzai transformer sets: grouped key/value heads, RMSNorm, full rotary, SwiGLU or
    GeGLU without biases, an embedding scale (Gemma's) and a sliding window."""
    pz = _pz()
    scale = [float(layer.by) for layer in model.body.sublayers if isinstance(layer, pz.nn.ConstantRescale)]
    return dict(
        family="llama",
        n_kv_heads=math.prod(model.metadata.common_head_axes.values()),
        norm="rmsnorm",
        norm_eps=_epsilon(_instances(model, pz.nn.RMSStandardize)),
        rotary_dim=model.metadata.projection_dim,
        rope_theta=_wavelength(_instances(model, pz.nn.ApplyRoPE)),
        mlp="swiglu",
        qkv_bias=False,
        attn_out_bias=False,
        mlp_bias=False,
        embed_scale=scale[0] if scale else 1.0,
        sliding_window=window,
    )


def _neox_fields(model: Any, n_heads: int) -> dict[str, Any]:
    """The fields a GPT-NeoX penzai transformer sets: LayerNorm, rotary on a subset of each head, a parallel
    residual and a GELU MLP."""
    pz = _pz()
    rope = _instances(model, pz.nn.ApplyRoPEToSubset)
    return dict(
        family="gpt_neox",
        n_kv_heads=n_heads,
        norm="layernorm",
        norm_eps=_epsilon(_instances(model, pz.nn.Standardize)),
        rotary_dim=_only([r.rope_subset_size for r in rope], "rotary size"),
        rope_theta=_wavelength(rope),
        parallel_residual=True,
        mlp="gelu",
    )


def from_penzai(
    model: Any, tokenizer: Any = None, *, max_positions: int | None = None, model_type: str = "", name: str = ""
) -> LM:
    """An LM with the parameters of a penzai transformer (Llama-like or GPT-NeoX, blocks unstacked), for tracing
    and editing with jrome; `update_penzai` puts an edited LM back. penzai models do not record a context length:
    max_positions bounds the inputs jrome accepts (default: the sliding window, else 4096)."""
    pz = _pz()
    variant, n_layers, tree = params_from_named({p.label: p.value for p in pz.unbind_params(model)[1]})
    cfg = _config(model, variant, n_layers, max_positions, model_type)
    return LM(config=cfg, params=tree, tokenizer=tokenizer, name=name)


def logits(model: Any, ids: Any) -> np.ndarray:
    """[B, T, vocab] logits of a penzai transformer for token ids [B, T] (no padding), as a NumPy array."""
    pz = _pz()
    tokens = pz.nx.wrap(jnp.asarray(ids)).tag("batch", "seq")
    return np.asarray(model(tokens).unwrap("batch", "seq", "vocabulary"))
