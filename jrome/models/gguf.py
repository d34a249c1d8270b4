"""GGUF files (llama.cpp's format): metadata, dequantised tensors, the model config and the tokenizer.

The header is parsed here directly (the vocabulary alone is 100k strings, which `gguf.GGUFReader` takes
seconds to walk); tensors are dequantised with the `gguf` package.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from .config import ModelConfig

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9

Q = gguf.GGMLQuantizationType
SUPPORTED_TYPES = (
    Q.F32, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K,
)  # fmt: skip
SUPPORTED_ARCHITECTURES = ("llama",)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order: ggml lists dimensions fastest first, so this is reversed
    kind: gguf.GGMLQuantizationType
    offset: int  # from the start of the file


class _Cursor:
    """Sequential little-endian reads over a memory-mapped buffer."""

    def __init__(self, buf: memoryview, pos: int = 0) -> None:
        self.buf, self.pos = buf, pos

    def unpack(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.unpack("<Q")
        self.pos += n
        return bytes(self.buf[self.pos - n : self.pos]).decode("utf-8", errors="replace")

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, n = self.unpack("<I"), self.unpack("<Q")
            if item in _SCALARS:
                fmt = _SCALARS[item]
                values = list(struct.unpack_from(f"<{n}{fmt[1]}", self.buf, self.pos))
                self.pos += n * struct.calcsize(fmt)
                return values
            return [self.value(item) for _ in range(n)]
        raise ValueError(f"unknown GGUF metadata value type {kind}")


class GGUFFile:
    """A GGUF file's metadata and tensor table, with tensors read and dequantised on demand."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._map = np.memmap(self.path, mode="r", dtype=np.uint8)
            buf = memoryview(self._map)
            cur = _Cursor(buf)
            if bytes(buf[:4]) != b"GGUF":
                raise ValueError("it does not start with the GGUF magic bytes")
            version = cur.unpack("<4xI")
            if version not in (2, 3):
                raise ValueError(f"GGUF version {version} is not supported (2 and 3 are)")
            n_tensors, n_kv = cur.unpack("<Q"), cur.unpack("<Q")
            self.metadata: dict[str, Any] = {}
            for _ in range(n_kv):
                key = cur.string()
                self.metadata[key] = cur.value(cur.unpack("<I"))
            raw = []
            for _ in range(n_tensors):
                name = cur.string()
                dims = [cur.unpack("<Q") for _ in range(cur.unpack("<I"))]
                raw.append((name, tuple(reversed(dims)), cur.unpack("<I"), cur.unpack("<Q")))
            align = int(self.metadata.get("general.alignment", 32))
            start = (cur.pos + align - 1) // align * align
        except (struct.error, UnicodeDecodeError, ValueError) as err:
            raise ValueError(f"{self.path} is not a readable GGUF file: {err}") from err
        self.tensors: dict[str, TensorInfo] = {}
        for name, shape, kind, offset in raw:
            try:
                qtype = Q(kind)
            except ValueError:
                raise ValueError(f"{self.path}: tensor {name} has unknown ggml type {kind}") from None
            self.tensors[name] = TensorInfo(name, shape, qtype, start + offset)

    def check_types(self) -> None:
        """Fail before reading anything if some tensor uses a quantisation this loader cannot dequantise."""
        bad = sorted({(t.kind.name, t.name) for t in self.tensors.values() if t.kind not in SUPPORTED_TYPES})
        if bad:
            raise ValueError(
                f"{self.path} uses unsupported GGUF quantisation {bad[0][0]} (tensor {bad[0][1]}); "
                f"supported: {', '.join(t.name for t in SUPPORTED_TYPES)}"
            )

    def tensor(self, name: str) -> np.ndarray:
        """The tensor dequantised to float32, in numpy (out, in) order."""
        info = self.tensors[name]
        block, size = gguf.GGML_QUANT_SIZES[info.kind]
        n = int(np.prod(info.shape))
        if info.offset + n // block * size > self._map.size:
            raise ValueError(f"{self.path} is truncated: tensor {name} runs past the end of the file")
        rows = self._map[info.offset : info.offset + n // block * size].reshape(-1, info.shape[-1] // block * size)
        if info.kind == Q.BF16:
            out = (rows.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            out = gguf.quants.dequantize(np.array(rows), info.kind)  # in memory: a memmap view per row group is slow
        return np.asarray(out, np.float32).reshape(info.shape)


def config_from_gguf(f: GGUFFile) -> ModelConfig:
    """The ModelConfig of a llama-architecture GGUF, from its metadata."""
    arch = f.metadata.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"{f.path}: GGUF architecture {arch!r} is not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    m = f.metadata

    def key(name: str, default: Any = None) -> Any:
        value = m.get(f"{arch}.{name}", default)
        if value is None:
            raise ValueError(f"{f.path}: metadata {arch}.{name} is missing")
        return value

    if m.get(f"{arch}.rope.scaling.type", "none") not in ("none", "linear") or m.get(
        f"{arch}.rope.scaling.factor", 1.0
    ) not in (0.0, 1.0):
        raise ValueError(f"{f.path}: rope scaling is not supported")
    d = key("embedding_length")
    heads = key("attention.head_count")
    head_dim = key("attention.key_length", d // heads)
    vocab = f.tensors["token_embd.weight"].shape[0]
    return ModelConfig(
        family="llama",
        vocab_size=vocab,
        d_model=d,
        n_layers=key("block_count"),
        n_heads=heads,
        n_kv_heads=key("attention.head_count_kv", heads),
        head_dim=head_dim,
        d_mlp=key("feed_forward_length"),
        max_positions=key("context_length", 2048),
        norm="rmsnorm",
        norm_eps=float(key("attention.layer_norm_rms_epsilon", 1e-5)),
        positions="rotary",
        rotary_dim=key("rope.dimension_count", head_dim),
        rope_theta=float(key("rope.freq_base", 10000.0)),
        mlp="swiglu",
        activation="silu",
        qkv_bias="blk.0.attn_q.bias" in f.tensors,
        attn_out_bias="blk.0.attn_output.bias" in f.tensors,
        mlp_bias=False,
        tied_head="output.weight" not in f.tensors,
    )


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's reordering of Q/K rows (pairs per head) back to Hugging Face's rotate-half layout."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_GGUF_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_GGUF_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def hf_tensors(f: GGUFFile, cfg: ModelConfig) -> tuple[set[str], Any]:
    """The file's tensors under Hugging Face llama names, with Q/K rows restored: (names, getter)."""
    to_gguf = {hf: g for g, hf in _GGUF_NAMES.items() if g in f.tensors}
    for name in f.tensors:
        if name.startswith("blk."):
            _, layer, rest = name.split(".", 2)
            if rest in _GGUF_LAYER_NAMES:
                to_gguf[f"model.layers.{layer}.{_GGUF_LAYER_NAMES[rest]}"] = name

    def get(hf_name: str) -> np.ndarray:
        name = to_gguf[hf_name]
        w = f.tensor(name)
        if name.endswith(("attn_q.weight", "attn_q.bias")):
            return _unpermute(w, cfg.n_heads)
        if name.endswith(("attn_k.weight", "attn_k.bias")):
            return _unpermute(w, cfg.n_kv_heads)
        return w

    return set(to_gguf), get


def tokenizer_from_gguf(f: GGUFFile) -> Any:
    """A transformers fast tokenizer built from the vocabulary and merges stored in the file (None if it has none).

    Byte-level BPE ("gpt2" tokenizer model, as SmolLM2, GPT-2 and most BPE models use) with GPT-2's
    pre-tokenizer; special tokens are the file's control tokens; a BOS is prepended when the file asks.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    m = f.metadata
    if "tokenizer.ggml.tokens" not in m:
        return None
    kind, pre = m.get("tokenizer.ggml.model"), m.get("tokenizer.ggml.pre", "default")
    if kind != "gpt2" or pre not in ("default", "gpt2", "smollm", "gpt-2"):
        raise ValueError(
            f"{f.path}: the GGUF tokenizer (model {kind!r}, pre-tokenizer {pre!r}) is not supported; "
            "byte-level BPE with GPT-2 pre-tokenisation is. Pass tokenizer=<Hugging Face tokenizer directory>."
        )
    tokens = m["tokenizer.ggml.tokens"]
    types = m.get("tokenizer.ggml.token_type", [1] * len(tokens))
    merges = [tuple(merge.split(" ", 1)) for merge in m["tokenizer.ggml.merges"]]
    backend = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types, strict=True) if k == 3]
    )

    def special(name: str) -> str | None:
        index = m.get(f"tokenizer.ggml.{name}_token_id")
        return tokens[index] if index is not None else None

    bos = special("bos")
    if m.get("tokenizer.ggml.add_bos_token", False) and bos is not None:
        backend.post_processor = processors.Sequence(
            [
                processors.ByteLevel(trim_offsets=False),
                processors.TemplateProcessing(
                    single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokens.index(bos))]
                ),
            ]
        )
    else:
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=special("eos"),
        unk_token=special("unknown"),
        pad_token=special("padding") or special("eos"),
        clean_up_tokenization_spaces=False,
    )
