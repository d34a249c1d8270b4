"""jrome ↔ penzai: penzai's transformers (its Llama-like and GPT-NeoX variants) built from jrome models compute
jrome's logits, models penzai itself loaded come into jrome, round trips are exact, and a jrome edit lands in the
penzai model."""

from __future__ import annotations

import chex
import numpy as np
import pytest
from conftest import build_torch_model
from penzai import pz

import jrome
from jrome.interop import penzai as jpz
from jrome.models.forward import forward

IDS = np.array([[3, 7, 9, 11, 20, 5, 2], [4, 4, 30, 8, 1, 17, 6]])


@pytest.mark.parametrize("family", ["llama", "mistral", "gpt_neox"])
def test_penzai_model_of_a_tiny_lm_has_its_logits_and_comes_back_bit_for_bit(family, tiny_dir):
    lm = jrome.load(tiny_dir(family))
    model = jpz.to_penzai(lm)
    np.testing.assert_allclose(jpz.logits(model, IDS), np.asarray(forward(lm, IDS).logits), atol=1e-4, rtol=0)

    back = jpz.from_penzai(model, max_positions=lm.config.max_positions, model_type=lm.config.model_type)
    assert back.config == lm.config
    chex.assert_trees_all_equal(back.params, lm.params)


def test_a_llama_penzai_converted_from_transformers_runs_in_jrome_with_its_logits():
    import torch
    from penzai.models.transformer.variants import llamalike_common

    torch_model = build_torch_model("llama")
    torch_model.config.rope_theta = torch_model.config.rope_parameters["rope_theta"]  # where penzai 0.2.5 reads it
    model = llamalike_common.llamalike_from_huggingface_model(torch_model)  # its Llama converter refuses tied heads
    lm = jpz.from_penzai(model)
    with torch.no_grad():
        expected = torch_model(torch.tensor(IDS)).logits.numpy()
    np.testing.assert_allclose(np.asarray(forward(lm, IDS).logits), expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(jpz.logits(model, IDS), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ["llama", "llama_one_kv_head", "llama_no_grouping", "gpt_neox"])
def test_a_model_penzai_built_and_initialised_runs_in_jrome_with_its_logits(family):
    import jax
    from penzai.models.transformer.variants import gpt_neox, llamalike_common

    if family.startswith("llama"):  # penzai names the head axes by the grouping: each case is another layout
        kv, multiplier = {"llama": (2, 2), "llama_one_kv_head": (1, 4), "llama_no_grouping": (4, 1)}[family]
        config = llamalike_common.LlamalikeTransformerConfig(
            num_kv_heads=kv, query_head_multiplier=multiplier, embedding_dim=32, projection_dim=8, mlp_hidden_dim=40,
            num_decoder_blocks=2, vocab_size=96, mlp_variant="swiglu", tie_embedder_and_logits=False,
            rope_wavelength=5000.0, rms_norm_eps=1e-5,
        )  # fmt: skip
        model = llamalike_common.build_llamalike_transformer(config, init_base_rng=jax.random.key(1))
    else:
        config = gpt_neox.GPTNeoXTransformerConfig(
            num_attention_heads=4, embedding_dim=32, projection_dim=8, mlp_hidden_dim=48, num_decoder_blocks=2,
            vocab_size=96, activation_fn="gelu_exact", rope_subset_size=4, rope_wavelength=10000.0,
            layernorm_epsilon=1e-5, parameter_dtype=np.float32, activation_dtype=np.float32,
        )  # fmt: skip
        model = gpt_neox.build_gpt_neox_transformer(config, init_base_rng=jax.random.key(1))
    lm = jpz.from_penzai(model)
    expected = jpz.logits(model, IDS)
    assert np.abs(expected).max() > 0.1  # weights large enough that a wrong layout shows
    np.testing.assert_allclose(np.asarray(forward(lm, IDS).logits), expected, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_smollm2_in_penzai_gives_jrome_logits_and_an_edit_lands_in_the_penzai_model(smollm2, eiffel_edit):
    ids = np.asarray(smollm2.tokenizer("The Eiffel Tower is located in the city of")["input_ids"])[None]
    model = jpz.to_penzai(smollm2)
    np.testing.assert_allclose(jpz.logits(model, ids), np.asarray(forward(smollm2, ids).logits), atol=1e-4, rtol=0)

    back = jpz.from_penzai(
        model, smollm2.tokenizer, max_positions=smollm2.config.max_positions, model_type=smollm2.config.model_type
    )
    assert back.config == smollm2.config
    chex.assert_trees_all_equal(back.params, smollm2.params)

    edited_lm, undo = eiffel_edit
    edited = jpz.update_penzai(model, edited_lm)
    np.testing.assert_allclose(jpz.logits(edited, ids), np.asarray(forward(edited_lm, ids).logits), atol=1e-4, rtol=0)
    before = {p.label: p.value for p in pz.unbind_params(model)[1]}
    after = {p.label: p.value for p in pz.unbind_params(edited)[1]}
    changed = [
        k for k in before if not np.array_equal(np.asarray(before[k].data_array), np.asarray(after[k].data_array))
    ]
    layer = undo.edits[0].layer
    assert changed == [f"transformer/block_{layer}/mlp/out_linear.weights"]
    chex.assert_trees_all_equal(jpz.from_penzai(edited).params, edited_lm.params)
    chex.assert_trees_all_equal(jpz.from_penzai(model).params, smollm2.params)  # the model given is unchanged


def test_what_penzai_has_no_variant_for_is_a_clear_error(tiny_dir):
    with pytest.raises(ValueError, match="penzai has no variant for the gpt2 family"):
        jpz.to_penzai(jrome.load(tiny_dir("gpt2")))
    with pytest.raises(ValueError, match=r"q/k/v, output or MLP biases.*to_penzai takes Llama-like"):
        jpz.to_penzai(jrome.load(tiny_dir("qwen2")))
    with pytest.raises(
        ValueError,
        match=r"penzai parameters of a Llama-like or GPT-NeoX transformer with unstacked blocks are expected",
    ):
        jpz.from_penzai(pz.nn.Sequential([pz.nn.Identity()]))


def test_penzai_parameters_by_label_load_with_a_transformers_config(tiny_dir):
    import torch
    from penzai.models.transformer.variants import llamalike_common

    torch_model = build_torch_model("llama")
    torch_model.config.rope_theta = torch_model.config.rope_parameters["rope_theta"]  # where penzai 0.2.5 reads it
    named = {p.label: p.value for p in pz.unbind_params(llamalike_common.llamalike_from_huggingface_model(torch_model))[1]}  # fmt: skip
    lm = jrome.load(named, config=torch_model.config)
    assert not lm.config.tied_head  # penzai's converter gives the head its own copy
    want = jrome.load(tiny_dir("llama"))
    chex.assert_trees_all_equal(lm.params["blocks"], want.params["blocks"])
    np.testing.assert_array_equal(lm.params["head"]["kernel"], want.params["embed"]["tokens"].T)
    with torch.no_grad():
        expected = torch_model(torch.tensor(IDS)).logits.numpy()
    np.testing.assert_allclose(np.asarray(forward(lm, IDS).logits), expected, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="penzai parameters jrome does not know: transformer/block_0/extra"):
        jrome.load(named | {"transformer/block_0/extra.weights": named["transformer/final_norm/scale.weights"]}, config=torch_model.config)  # fmt: skip
