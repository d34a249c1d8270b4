"""Loading checkpoints: directories, shards, the hub cache, GGUF files, dtypes, and every way that can go wrong."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import chex
import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import build_torch_model
from gguf_helpers import write_llama_gguf
from test_parity import torch_run

import jrome
from jrome.models import placement
from jrome.models.config import config_from_hf


def test_importing_jrome_does_not_import_torch():
    code = "import sys, jrome; jrome.load('smollm2'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_sharded_checkpoint_loads_like_a_single_file(tiny_dir, tmp_path, rng):
    model = build_torch_model("gpt_neox")
    model.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("*.safetensors"))) > 2
    ids = rng.integers(0, 96, size=(1, 10))
    sharded = jrome.forward(jrome.load(tmp_path), ids).logits
    single = jrome.forward(jrome.load(tiny_dir("gpt_neox")), ids).logits
    np.testing.assert_array_equal(np.asarray(sharded), np.asarray(single))


@pytest.mark.parametrize("name", ["gpt2", "gpt_neox"])  # fused q/k/v split per layer; separate ones
def test_parameters_larger_than_a_transfer_block_are_filled_in_place_block_by_block(tiny_dir, name, monkeypatch):
    whole = jrome.load(tiny_dir(name))
    for chunk in (1, 3 * 64 * 48 * 4):  # one layer per block; three MLP layers per block and a shorter last one
        monkeypatch.setattr(placement, "CHUNK_BYTES", chunk)
        chex.assert_trees_all_equal(jrome.load(tiny_dir(name)).params, whole.params)


@pytest.mark.parametrize(
    "name", ["gpt2", "gptj", "gpt_neox", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3"]
)
def test_config_sizes_match_transformers_including_its_defaults(tiny_dir, name):
    import transformers

    cfg = jrome.load(tiny_dir(name)).config
    hf = transformers.AutoConfig.from_pretrained(tiny_dir(name))
    d, heads = hf.hidden_size, hf.num_attention_heads
    mlp = getattr(hf, "intermediate_size", None) or getattr(hf, "n_inner", None) or 4 * d  # GPT-J: None means 4d
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.vocab_size) == (hf.num_hidden_layers, d, heads, hf.vocab_size)
    assert cfg.d_mlp == mlp
    assert cfg.n_kv_heads == getattr(hf, "num_key_value_heads", heads)
    assert cfg.head_dim == (getattr(hf, "head_dim", None) or d // heads)
    assert cfg.max_positions == min(hf.max_position_embeddings, getattr(hf, "sliding_window", None) or 1 << 62)


def test_the_llama_layout_families_are_switches_of_one_config(tiny_dir):
    names = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3")
    configs = {name: jrome.load(tiny_dir(name)).config for name in names}
    assert {c.family for c in configs.values()} == {"llama"}
    assert (configs["qwen2"].qkv_bias, configs["qwen2"].attn_out_bias) == (True, False)
    assert configs["qwen3"].qk_norm and not configs["llama"].qk_norm
    assert configs["mistral"].sliding_window == 16 and configs["llama"].sliding_window == 0
    gemma = configs["gemma"]
    assert (gemma.norm_offset, gemma.embed_scale, gemma.activation) == (1.0, 32**0.5, "gelu_tanh")
    assert not (gemma.post_norms or gemma.attn_softcap or gemma.final_softcap or gemma.query_scale)
    gemma2 = configs["gemma2"]
    assert (gemma2.norm_offset, gemma2.embed_scale, gemma2.post_norms, gemma2.sliding_window) == (
        1.0,
        32**0.5,
        True,
        16,
    )
    assert (gemma2.attn_softcap, gemma2.final_softcap, gemma2.query_scale) == (2.0, 3.0, 24**-0.5)
    gemma3 = configs["gemma3"]
    assert (gemma3.qk_norm, gemma3.post_norms, gemma3.attn_softcap, gemma3.final_softcap) == (True, True, 0.0, 0.0)
    assert (gemma3.rope_theta, gemma3.rope_local_theta, gemma3.local_layers) == (10000.0, 100.0, (0, 2))
    config = json.loads((tiny_dir("qwen2") / "config.json").read_text()) | {"use_sliding_window": True}
    with pytest.raises(ValueError, match="qwen2 with use_sliding_window .* is not supported"):
        config_from_hf(config)


def test_a_sequence_longer_than_a_sliding_window_is_refused(tiny_lm):
    lm = tiny_lm("mistral")  # window 16: within it the window changes nothing (the parity tests), beyond it is refused
    assert lm.config.max_positions == 16
    assert jrome.forward(lm, np.arange(2, 18)[None]).logits.shape == (1, 16, 96)
    with pytest.raises(ValueError, match="17 tokens exceed the model's context of 16 positions"):
        jrome.forward(lm, np.arange(2, 19)[None])


def test_old_style_config_keys_are_read():
    cfg = config_from_hf(
        {"model_type": "gpt_neox", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
         "vocab_size": 10, "rotary_pct": 0.5, "rotary_emb_base": 500.0, "intermediate_size": 8}
    )  # fmt: skip
    assert cfg.rotary_dim == 8 and cfg.rope_theta == 500.0
    cfg = config_from_hf(
        {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
         "vocab_size": 10, "rope_theta": 100000.0, "intermediate_size": 8}
    )  # fmt: skip
    assert cfg.rope_theta == 100000.0 and cfg.n_kv_heads == 4 and cfg.rotary_dim == 16


def test_gguf_written_like_llama_cpp_matches_transformers(tmp_path, rng):
    model = build_torch_model("llama")
    path = write_llama_gguf(model, tmp_path / "tiny.gguf")
    lm = jrome.load(path)
    assert lm.config.n_kv_heads == 2 and lm.config.rope_theta == 100000.0 and lm.config.tied_head
    ids = rng.integers(0, 96, size=(2, 11))
    ref, _ = torch_run(model, ids)
    np.testing.assert_allclose(np.asarray(jrome.forward(lm, ids).logits), ref, atol=1e-4, rtol=1e-4)


def test_quantised_gguf_is_dequantised(tmp_path, rng):
    model = build_torch_model("llama")
    lm = jrome.load(write_llama_gguf(model, tmp_path / "q8.gguf", qtype=gguf.GGMLQuantizationType.Q8_0))
    exact = jrome.load(write_llama_gguf(model, tmp_path / "f32.gguf"))
    q = np.asarray(lm.params["blocks"]["mlp"]["down"]["kernel"])
    f = np.asarray(exact.params["blocks"]["mlp"]["down"]["kernel"])
    assert not np.array_equal(q, f)
    np.testing.assert_allclose(q, f, atol=np.abs(f).max() / 100)


def test_bfloat16(tiny_dir, rng):
    ids = rng.integers(0, 96, size=(1, 10))
    lm16 = jrome.load(tiny_dir("llama"), dtype="bfloat16")
    assert lm16.dtype == jnp.bfloat16
    logits16 = jrome.forward(lm16, ids).logits
    assert logits16.dtype == jnp.float32
    logits32 = np.asarray(jrome.forward(jrome.load(tiny_dir("llama")), ids).logits)
    err = np.abs(np.asarray(logits16) - logits32).max()
    assert 0 < err < 0.05 * np.abs(logits32).max()


def test_float64_needs_jax_64_bit_mode_and_then_computes_in_float64(tiny_dir, rng):
    with pytest.raises(ValueError, match="dtype float64 needs JAX's 64-bit mode"):
        jrome.load(tiny_dir("llama"), dtype="float64")
    ids = rng.integers(0, 96, size=(1, 10))
    with jax.enable_x64(True):
        lm64 = jrome.load(tiny_dir("llama"), dtype="float64")
        logits64 = jrome.forward(lm64, ids).logits
    assert lm64.dtype == jnp.float64 and logits64.dtype == jnp.float64
    logits32 = np.asarray(jrome.forward(jrome.load(tiny_dir("llama")), ids).logits)
    err = np.abs(np.asarray(logits64) - logits32).max()
    assert 0 < err < 1e-4 * np.abs(logits32).max()  # the same model, without float32's rounding


def test_hub_id_is_resolved_through_the_hub_cache(tiny_dir, tmp_path):
    """Offline, a hub id resolves to the local Hugging Face cache; a missing one is a clear error."""
    repo = tmp_path / "hub" / "models--jrome-test--tiny-gpt2"
    commit = "0" * 40
    shutil.copytree(tiny_dir("gpt2"), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hub"))
    code = (
        "import jrome, sys\n"
        "lm = jrome.load('jrome-test/tiny-gpt2'); print(lm.config.family, lm.config.n_layers)\n"
        "try:\n    jrome.load('jrome-test/absent')\nexcept OSError as e:\n    print('ERR', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert "gpt2 3" in out
    assert "ERR could not get 'jrome-test/absent' from the Hugging Face hub" in out and "local directory" in out


# Bad input: each a clear error that names what was wrong.


def test_unknown_architecture_lists_the_supported_families(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    with pytest.raises(ValueError, match="model_type='bert'.*gpt2, gptj, gpt_neox, llama"):
        jrome.load(tmp_path)


def test_missing_safetensors_names_the_directory(tiny_dir, tmp_path):
    shutil.copy(tiny_dir("gpt2") / "config.json", tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} has no \\*.safetensors"):
        jrome.load(tmp_path)


def test_truncated_safetensors_names_the_file(tiny_dir, tmp_path):
    shutil.copy(tiny_dir("gpt2") / "config.json", tmp_path / "config.json")
    data = (tiny_dir("gpt2") / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors is not a readable safetensors file"):
        jrome.load(tmp_path)


def test_missing_shard_names_the_shard(tmp_path):
    build_torch_model("gpt2").save_pretrained(tmp_path, safe_serialization=True, max_shard_size="20KB")
    shard = sorted(tmp_path.glob("*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=f"shard {shard.name}"):
        jrome.load(tmp_path)


def test_missing_tensor_is_named(tiny_dir, tmp_path):
    from safetensors.numpy import load_file, save_file

    shutil.copy(tiny_dir("llama") / "config.json", tmp_path / "config.json")
    tensors = load_file(tiny_dir("llama") / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="no tensor 'model.layers.1.mlp.up_proj.weight'"):
        jrome.load(tmp_path)


def test_unsupported_gguf_quantisation(tmp_path):
    writer = gguf.GGUFWriter(str(tmp_path / "iq.gguf"), "llama")
    for key, value in [("block_count", 1), ("embedding_length", 256), ("feed_forward_length", 256),
                       ("attention.head_count", 2)]:  # fmt: skip
        writer.add_uint32(f"llama.{key}", value)
    iq = gguf.GGMLQuantizationType.IQ2_XXS
    block, size = gguf.GGML_QUANT_SIZES[iq]
    writer.add_tensor("token_embd.weight", np.zeros((4, 256 // block * size), np.uint8), raw_dtype=iq)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match="unsupported GGUF quantisation IQ2_XXS.*supported: F32, F16, BF16, Q4_0"):
        jrome.load(tmp_path / "iq.gguf")


def test_unsupported_gguf_architecture(tmp_path):
    model = build_torch_model("llama")
    with pytest.raises(ValueError, match="GGUF architecture 'falcon' is not supported; supported: llama"):
        jrome.load(write_llama_gguf(model, tmp_path / "f.gguf", arch="falcon"))


def test_not_a_gguf_file(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"not a gguf at all, just text")
    with pytest.raises(ValueError, match="not a readable GGUF file"):
        jrome.load(tmp_path / "x.gguf")


@pytest.mark.parametrize("dtype", ["float16", "fp32", "int8"])
def test_wrong_dtype_string(tiny_dir, dtype):
    with pytest.raises(ValueError, match=f"dtype '{dtype}' is not supported; accepted: float32, bfloat16, float64"):
        jrome.load(tiny_dir("gpt2"), dtype=dtype)


def test_unknown_spec():
    with pytest.raises(FileNotFoundError, match="model 'no-such-model' not found"):
        jrome.load("no-such-model")


def test_forward_rejects_bad_ids(tiny_dir):
    lm = jrome.load(tiny_dir("gpt2"))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 96\)"):
        jrome.forward(lm, np.array([[1, 2, 96]]))
    with pytest.raises(ValueError, match="exceed the model's context of 64"):
        jrome.forward(lm, np.zeros((1, 65), np.int32))
    with pytest.raises(ValueError, match="attention_mask has shape"):
        jrome.forward(lm, np.zeros((1, 5), np.int32), np.ones((1, 4)))
    with pytest.raises(ValueError, match="integer token ids"):
        jrome.forward(lm, np.zeros((1, 5), np.float32))


def test_path_that_is_a_file_but_not_a_model(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="neither a .gguf file nor a model directory"):
        jrome.load(Path(tmp_path / "weights.bin"))


def test_parameters_in_memory_load_flat_nested_or_flax_style_like_the_checkpoint(tiny_dir):
    model = build_torch_model("qwen3")  # q/k norms and GQA: every kind of leaf of the Llama layout
    flat = {k: v.numpy() for k, v in model.state_dict().items()}
    want = jrome.load(tiny_dir("qwen3")).params
    nested: dict = {}
    flax: dict = {}
    for name, value in flat.items():
        *path, leaf = name.split(".")
        for tree in (nested, flax):
            node = tree
            for key in path:
                node = node.setdefault(key, {})
            node[leaf] = value
        if name.endswith("_proj.weight"):  # Flax Dense: kernel (in, out)
            del node["weight"]
            node["kernel"] = value.T
        if name.endswith("embed_tokens.weight"):
            del node["weight"]
            node["embedding"] = value
    for tree, config in ((flat, model.config.to_dict()), (nested, tiny_dir("qwen3") / "config.json"), (flax, model.config)):  # fmt: skip
        lm = jrome.load(tree, config=config)
        chex.assert_trees_all_equal(lm.params, want)
        assert lm.config == jrome.load(tiny_dir("qwen3")).config
    with pytest.raises(ValueError, match="a parameter dict needs config="):
        jrome.load(flat)
    with pytest.raises(ValueError, match="the checkpoint has no tensor 'model.norm.weight'"):
        jrome.load({k: v for k, v in flat.items() if k != "model.norm.weight"}, config=model.config)
    up = "model.layers.1.mlp.up_proj.weight"  # [40, 32] stored as a torch Linear; transposed by mistake here
    with pytest.raises(ValueError, match=rf"'{up}' \(MLP input projection\) has shape \(32, 40\); .* needs \(40, 32\)"):
        jrome.load(flat | {up: flat[up].T}, config=model.config)
