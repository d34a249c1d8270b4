"""The embedded SmolLM2-135M against transformers' own load of the same GGUF file."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from conftest import data_file, one_worker

import jrome
from jrome.generation import generate
from jrome.models.loading import embedded_path

pytestmark = one_worker(__name__)  # its module-scoped fixture is computed once

PROMPT = "The Eiffel Tower is located in the city of"


@pytest.fixture(scope="module")
def hf():
    """transformers' PyTorch model and tokenizer, read from the very same GGUF."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = embedded_path()
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def test_config_is_smollm2(smollm2):
    cfg = smollm2.config
    assert (cfg.family, cfg.n_layers, cfg.d_model, cfg.d_mlp) == ("llama", 30, 576, 1536)
    assert (cfg.n_heads, cfg.n_kv_heads, cfg.rope_theta, cfg.tied_head) == (9, 3, 100000.0, True)
    assert cfg.norm_eps == pytest.approx(1e-5)


def test_paris_probability_matches_transformers(smollm2, hf):
    import torch

    model, tok = hf
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    assert ids[0].tolist() == smollm2.tokenizer(PROMPT)["input_ids"]
    with torch.no_grad():
        ref = model(ids).logits[0, -1].softmax(-1).numpy()
    probs = np.asarray(jax.nn.softmax(jrome.forward(smollm2, ids.numpy(), logits_at="last").logits[0, -1]))
    paris = smollm2.tokenizer(" Paris")["input_ids"][0]
    assert int(probs.argmax()) == paris == int(ref.argmax())
    assert 0.65 < probs[paris] < 0.75
    assert abs(probs[paris] - ref[paris]) < 1e-3
    np.testing.assert_allclose(probs, ref, atol=1e-4)


def test_tokenizer_matches_transformers_on_the_known_facts(smollm2, hf):
    _, tok = hf
    facts = json.loads(data_file("known_1000.json").read_text())
    texts = [f["prompt"] for f in facts] + ["Hello, world! 12345 café — naïve", "  two\n\nlines\t<|im_end|>"]
    for text in texts:
        assert smollm2.tokenizer(text)["input_ids"] == tok(text)["input_ids"], text
    ids = smollm2.tokenizer(texts[-2])["input_ids"]
    assert smollm2.tokenizer.decode(ids) == tok.decode(ids) == texts[-2]


def test_greedy_generation_continues_with_paris(smollm2):
    (out,) = generate(smollm2, [PROMPT], 4)
    assert out.startswith(" Paris")
