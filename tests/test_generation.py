"""Decoding with a KV cache against the plain forward, on a tiny model with a real tokenizer."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import jrome
from jrome.generation import ROUNDS_UP_TO, generate, generate_ids, kth_largest


def naive_greedy(lm, ids, mask, steps):
    """One full forward per new token, no cache."""
    out = []
    for _ in range(steps):
        nxt = np.asarray(jrome.forward(lm, ids, mask, logits_at="last").logits[:, -1].argmax(-1))
        out.append(nxt)
        ids = np.concatenate([ids, nxt[:, None]], 1)
        mask = np.concatenate([mask, np.ones_like(nxt)[:, None]], 1)
    return np.stack(out, 1)


@pytest.mark.parametrize("name", ["gpt2", "gptj", "gpt_neox", "llama"])
def test_cached_greedy_decoding_equals_full_forwards(tiny_dir, name):
    lm = jrome.load(tiny_dir(name))
    rng = np.random.default_rng(0)
    ids = rng.integers(2, 96, size=(2, 7)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, :3] = 0  # a left-padded row
    fast = np.asarray(generate_ids(lm.config, lm.params, ids, mask, 6, 0.0, None, None, jax.random.key(0)))
    np.testing.assert_array_equal(fast, naive_greedy(lm, ids, mask, 6))


def test_sampling_is_seeded_and_respects_top_k(smollm2):
    prompts = ["The", "Because"]
    a = generate(smollm2, prompts, 8, temperature=1.0, top_k=5, seed=3)
    assert a == generate(smollm2, prompts, 8, temperature=1.0, top_k=5, seed=3)
    assert a != generate(smollm2, prompts, 8, temperature=1.0, top_k=5, seed=4)
    ids, mask = jrome.encode(smollm2.tokenizer, prompts)
    first = np.asarray(generate_ids(smollm2.config, smollm2.params, ids, mask, 1, 1.0, 1, None, jax.random.key(9)))
    greedy = np.asarray(generate_ids(smollm2.config, smollm2.params, ids, mask, 1, 0.0, None, None, jax.random.key(9)))
    np.testing.assert_array_equal(first, greedy)  # top_k=1 sampling is greedy


@pytest.mark.parametrize("k", [1, 2, 5, ROUNDS_UP_TO])
def test_kth_largest_is_the_last_of_top_k_with_ties_counted(k):
    x = np.random.default_rng(k).integers(0, 6, (3, 4, 50)).astype(np.float32)  # many repeated values
    want = -np.sort(-x, axis=-1)[..., k - 1 : k]
    np.testing.assert_array_equal(np.asarray(jax.jit(kth_largest, static_argnums=1)(x, k)), want)


def test_every_sampled_token_is_among_the_top_k(smollm2):
    prompts = ["The capital of France is", "My favourite food is"] * 4
    ids, mask = jrome.encode(smollm2.tokenizer, prompts)
    logits = np.asarray(jrome.forward(smollm2, ids, mask, logits_at="last").logits[:, -1])
    top3 = np.argsort(-logits, axis=-1)[:, :3]
    for seed in range(4):
        first = np.asarray(
            generate_ids(smollm2.config, smollm2.params, ids, mask, 1, 1.0, 3, None, jax.random.key(seed))
        )
        assert all(t in row for t, row in zip(first[:, 0], top3, strict=True))


def test_generation_rejects_bad_arguments(smollm2):
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(smollm2, ["x"], 0)
    with pytest.raises(ValueError, match="temperature"):
        generate(smollm2, ["x"], 3, temperature=-1)
    with pytest.raises(ValueError, match="top_k"):
        generate(smollm2, ["x"], 3, temperature=1, top_k=0)
    with pytest.raises(ValueError, match="exceed the context"):
        generate(smollm2, ["x"], 9000)
