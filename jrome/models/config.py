"""One frozen description of a decoder-only transformer; GPT-2, GPT-J, GPT-NeoX and Llama are values of it, and
so are Mistral, Qwen2, Qwen3 and Gemma: Llama's parameter layout with a few switches (see docs/architecture.md)."""

from __future__ import annotations

import dataclasses
from typing import Any

FAMILIES = ("gpt2", "gptj", "gpt_neox", "llama")
ACTIVATIONS = ("gelu_tanh", "gelu", "silu", "relu")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything the forward pass needs to know about an architecture; hashable, so it can be static under jit."""

    family: str
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_mlp: int
    max_positions: int
    norm: str = "layernorm"  # "layernorm" | "rmsnorm"
    norm_eps: float = 1e-5
    positions: str = "learned"  # "learned" | "rotary"
    rotary_dim: int = 0  # head dimensions that rotate (the first ones); 0 with learned positions
    rotary_style: str = "half"  # "half" (NeoX, Llama: rotate halves) | "interleaved" (GPT-J: rotate pairs)
    rope_theta: float = 10000.0
    parallel_residual: bool = False  # h + attn(norm(h)) + mlp(norm'(h)) instead of two sequential steps
    shared_norm: bool = False  # parallel blocks that feed one norm to both branches (GPT-J)
    mlp: str = "gelu"  # "gelu" (up, act, down) | "swiglu" (act(gate) * up, down)
    activation: str = "gelu_tanh"
    qkv_bias: bool = True
    attn_out_bias: bool = True
    mlp_bias: bool = True
    tied_head: bool = True
    head_bias: bool = False
    model_type: str = ""  # the Hugging Face model_type it was read from (written back on export); "" = family
    qk_norm: bool = False  # RMSNorm of each head's query and key before rotary (Qwen3)
    norm_offset: float = 0.0  # RMSNorm multiplies by scale + this (Gemma stores scale - 1)
    embed_scale: float = 1.0  # token embeddings are multiplied by this (Gemma: sqrt(d_model))
    sliding_window: int = 0  # Mistral's and Gemma 2's attention window (also max_positions here, see _llama_like)
    post_norms: bool = False  # RMSNorm of the attention and MLP outputs before they join the residual (Gemma 2)
    attn_softcap: float = 0.0  # attention scores become cap * tanh(scores / cap) (Gemma 2); 0 = none
    final_softcap: float = 0.0  # logits become cap * tanh(logits / cap) (Gemma 2); 0 = none
    query_scale: float = 0.0  # what scores are multiplied by; 0 = head_dim ** -0.5 (Gemma 2: query_pre_attn_scalar)
    rope_local_theta: float = 0.0  # the rotary theta of local_layers (Gemma 3's sliding-window layers); 0 = none
    local_layers: tuple[int, ...] = ()  # the layers that use rope_local_theta

    def __post_init__(self) -> None:
        object.__setattr__(self, "local_layers", tuple(self.local_layers))  # from a JSON list too; hashable
        checks = {
            "family": (self.family, FAMILIES),
            "norm": (self.norm, ("layernorm", "rmsnorm")),
            "positions": (self.positions, ("learned", "rotary")),
            "rotary_style": (self.rotary_style, ("half", "interleaved")),
            "mlp": (self.mlp, ("gelu", "swiglu")),
            "activation": (self.activation, ACTIVATIONS),
        }
        for name, (value, accepted) in checks.items():
            if value not in accepted:
                raise ValueError(f"ModelConfig.{name}={value!r} is not supported; accepted: {', '.join(accepted)}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.positions == "rotary" and not (0 < self.rotary_dim <= self.head_dim and self.rotary_dim % 2 == 0):
            raise ValueError(f"rotary_dim={self.rotary_dim} must be even and in (0, head_dim={self.head_dim}]")
        if self.shared_norm and not self.parallel_residual:
            raise ValueError("shared_norm only makes sense with parallel_residual=True")
        switches = (self.qk_norm, self.norm_offset, self.embed_scale != 1.0, self.post_norms, self.attn_softcap,
                    self.final_softcap, self.query_scale, self.rope_local_theta)  # fmt: skip
        if self.family != "llama" and any(switches):
            raise ValueError(
                "qk_norm, norm_offset, embed_scale, post_norms, the soft caps, query_scale and rope_local_theta are "
                "switches of the llama layout only"
            )
        if any(not 0 <= i < self.n_layers for i in self.local_layers):
            raise ValueError(f"local_layers={self.local_layers} must be layers of the model (0..{self.n_layers - 1})")

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim


def _get(cfg: dict[str, Any], *names: str, default: Any = None) -> Any:
    """The first of several spellings a config.json may use for one field (they changed across versions)."""
    for name in names:
        if cfg.get(name) is not None:
            return cfg[name]
    return default


def _rope(cfg: dict[str, Any], default_theta: float, default_fraction: float) -> tuple[float, float]:
    """(rope theta, rotary fraction) from either the old flat keys or transformers 5's `rope_parameters`."""
    rope = cfg.get("rope_parameters") or {}
    rope = rope.get("full_attention", rope)  # Gemma 3 (transformers 5): one entry per layer type
    scaling = cfg.get("rope_scaling") or {}
    kind = rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise ValueError(f"rope scaling type {kind!r} is not supported; only unscaled rotary ('default') is")
    theta = _get(rope, "rope_theta", default=_get(cfg, "rope_theta", "rotary_emb_base", default=default_theta))
    fraction = _get(
        rope,
        "partial_rotary_factor",
        default=_get(cfg, "partial_rotary_factor", "rotary_pct", default=default_fraction),
    )
    return float(theta), float(fraction)


_ACTIVATION_NAMES = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu": "gelu",
    "silu": "silu",
    "swish": "silu",
    "relu": "relu",
}


def _activation(name: str) -> str:
    if name not in _ACTIVATION_NAMES:
        raise ValueError(f"activation {name!r} is not supported; accepted: {', '.join(_ACTIVATION_NAMES)}")
    return _ACTIVATION_NAMES[name]


def config_from_hf(cfg: dict[str, Any]) -> ModelConfig:
    """Read a Hugging Face `config.json` (as a dict) into a ModelConfig, with transformers' defaults."""
    model_type = cfg.get("model_type")
    builders = {"gpt2": _gpt2, "gptj": _gptj, "gpt_neox": _gpt_neox, **dict.fromkeys(LLAMA_LIKE, _llama_like)}
    if model_type not in builders:
        raise ValueError(
            f"unknown architecture model_type={model_type!r}; supported families: {', '.join(FAMILIES)} "
            f"(GPT-2, GPT-J, GPT-NeoX/Pythia, and the Llama layout: {', '.join(LLAMA_LIKE)}, e.g. SmolLM2)"
        )
    return builders[model_type](cfg)


# The config.json keys of (width, layers, heads, MLP width, norm epsilon, activation): GPT-2 and GPT-J keep the
# old names, GPT-NeoX has transformers' current ones.
_OLD_NAMES = ("n_embd", "n_layer", "n_head", "n_inner", "layer_norm_epsilon", "activation_function")
_NEW_NAMES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "layer_norm_eps", "hidden_act")  # fmt: skip


def _mha_sizes(cfg: dict[str, Any], names: tuple[str, ...], activation: str) -> dict[str, Any]:
    """The fields every head-per-key/value model (GPT-2, GPT-J, GPT-NeoX) reads alike, under its family's key
    `names`, with transformers' defaults (an MLP 4 × wide, ε = 1e-5, `activation`)."""
    width, layers, heads, inner, eps, act = names
    d, h = cfg[width], cfg[heads]
    return dict(
        vocab_size=cfg["vocab_size"],
        d_model=d,
        n_layers=cfg[layers],
        n_heads=h,
        n_kv_heads=h,
        head_dim=d // h,
        d_mlp=_get(cfg, inner, default=4 * d),
        norm_eps=_get(cfg, eps, default=1e-5),
        activation=_activation(_get(cfg, act, default=activation)),
    )


def _gpt2(cfg: dict[str, Any]) -> ModelConfig:
    if cfg.get("scale_attn_by_inverse_layer_idx") or cfg.get("scale_attn_weights") is False:
        raise ValueError("GPT-2 variants with scale_attn_by_inverse_layer_idx or unscaled attention are not supported")
    return ModelConfig(
        family="gpt2",
        **_mha_sizes(cfg, _OLD_NAMES, "gelu_new"),
        max_positions=_get(cfg, "n_positions", "n_ctx", default=1024),
        tied_head=_get(cfg, "tie_word_embeddings", default=True),
    )


def _gptj(cfg: dict[str, Any]) -> ModelConfig:
    sizes = _mha_sizes(cfg, _OLD_NAMES, "gelu_new")
    return ModelConfig(
        family="gptj",
        **sizes,
        max_positions=_get(cfg, "n_positions", default=2048),
        positions="rotary",
        rotary_dim=_get(cfg, "rotary_dim", default=sizes["head_dim"]),
        rotary_style="interleaved",
        parallel_residual=True,
        shared_norm=True,
        qkv_bias=False,
        attn_out_bias=False,
        tied_head=_get(cfg, "tie_word_embeddings", default=False),
        head_bias=True,
    )


def _gpt_neox(cfg: dict[str, Any]) -> ModelConfig:
    sizes = _mha_sizes(cfg, _NEW_NAMES, "gelu")
    theta, fraction = _rope(cfg, 10000.0, 0.25)
    bias = _get(cfg, "attention_bias", default=True)
    return ModelConfig(
        family="gpt_neox",
        **sizes,
        max_positions=_get(cfg, "max_position_embeddings", default=2048),
        positions="rotary",
        rotary_dim=int(sizes["head_dim"] * fraction),
        rope_theta=theta,
        parallel_residual=_get(cfg, "use_parallel_residual", default=True),
        qkv_bias=bias,
        attn_out_bias=bias,
        tied_head=_get(cfg, "tie_word_embeddings", default=False),
    )


LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")


def _llama_like(cfg: dict[str, Any]) -> ModelConfig:
    """Llama and the families that share its parameter names, each as switches of the one config:
    Mistral (a sliding window), Qwen2 (biases on q, k, v only), Qwen3 (q/k RMSNorm), Gemma (RMSNorm scale stored
    minus one, embeddings times sqrt(d), GeGLU, tied head, head_dim 256), Gemma 2 (Gemma's, plus norms after
    attention and MLP, soft-capped attention scores and logits, its own query scale, a window on every other layer),
    Gemma 3 (Gemma 2's without soft caps, plus q/k norms and a rotary theta of its own on the sliding-window layers)."""
    model_type = cfg["model_type"]
    d = cfg["hidden_size"]
    heads = cfg["num_attention_heads"]
    gemma3 = model_type == "gemma3_text"
    gemma2 = model_type == "gemma2" or gemma3  # Gemma 3 keeps Gemma 2's norms, query scale and window
    gemma = model_type == "gemma" or gemma2
    head_dim = _get(cfg, "head_dim", default=256 if gemma else d // heads)
    local_theta, local_layers = _gemma3_local_layers(cfg) if gemma3 else (0.0, ())
    theta, fraction = _rope(cfg, 1_000_000.0 if gemma3 else 10000.0, 1.0)
    bias = _get(cfg, "attention_bias", default=False)
    if model_type in ("qwen2", "qwen3") and cfg.get("use_sliding_window"):
        raise ValueError(f"{model_type} with use_sliding_window (windows on some layers only) is not supported")
    act = _get(cfg, "hidden_activation", "hidden_act", default="gelu_pytorch_tanh" if gemma else "silu")
    # A sliding window limits what a position sees only beyond its length, so jrome takes it as the context:
    # every sequence it runs fits in the window, where the model computes exactly what full attention computes.
    window = (
        (_get(cfg, "sliding_window", default=4096 if gemma2 else 0) or 0) if model_type == "mistral" or gemma2 else 0
    )
    return ModelConfig(
        family="llama",
        model_type=model_type,
        vocab_size=cfg["vocab_size"],
        d_model=d,
        n_layers=cfg["num_hidden_layers"],
        n_heads=heads,
        n_kv_heads=_get(cfg, "num_key_value_heads", default=heads),
        head_dim=head_dim,
        d_mlp=cfg["intermediate_size"],
        max_positions=min(_get(cfg, "max_position_embeddings", default=8192 if gemma else 2048), window or 1 << 62),
        norm="rmsnorm",
        norm_eps=_get(cfg, "rms_norm_eps", default=1e-6),
        positions="rotary",
        rotary_dim=int(head_dim * fraction),
        rope_theta=theta,
        mlp="swiglu",
        activation="gelu_tanh" if gemma else _activation(act),  # Gemma's legacy "gelu" means the tanh form too
        qkv_bias=True if model_type == "qwen2" else bias,
        attn_out_bias=False if model_type == "qwen2" else bias,
        mlp_bias=_get(cfg, "mlp_bias", default=False),
        tied_head=_get(cfg, "tie_word_embeddings", default=gemma),
        qk_norm=model_type == "qwen3" or gemma3,
        norm_offset=1.0 if gemma else 0.0,
        embed_scale=float(d) ** 0.5 if gemma else 1.0,
        sliding_window=window,
        post_norms=gemma2,
        attn_softcap=float(cfg.get("attn_logit_softcapping", None if gemma3 else 50.0) or 0.0) if gemma2 else 0.0,
        final_softcap=float(cfg.get("final_logit_softcapping", None if gemma3 else 30.0) or 0.0) if gemma2 else 0.0,
        query_scale=float(_get(cfg, "query_pre_attn_scalar", default=256)) ** -0.5 if gemma2 else 0.0,
        rope_local_theta=local_theta,
        local_layers=local_layers,
    )


def _gemma3_local_layers(cfg: dict[str, Any]) -> tuple[float, tuple[int, ...]]:
    """Gemma 3's sliding-window layers and their rotary theta: from `layer_types` (else every layer but each
    `sliding_window_pattern`-th), and `rope_parameters["sliding_attention"]` (else `rope_local_base_freq`)."""
    n = cfg["num_hidden_layers"]
    types = cfg.get("layer_types")
    if types is None:
        pattern = _get(cfg, "sliding_window_pattern", "_sliding_window_pattern", default=6)
        types = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n)]
    rope = cfg.get("rope_parameters") or {}
    local = rope.get("sliding_attention") or {}
    if local.get("rope_type", "default") != "default":
        raise ValueError(f"rope scaling type {local['rope_type']!r} is not supported; only unscaled rotary is")
    theta = _get(local, "rope_theta", default=_get(cfg, "rope_local_base_freq", default=10000.0))
    return float(theta), tuple(i for i, kind in enumerate(types) if kind == "sliding_attention")
