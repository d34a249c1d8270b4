"""jrome.prediction.next_tokens: each prompt's next-token prediction as a plain forward of that prompt alone reads
it, for any number and mix of lengths (rows padded and chunked inside), and bad prompts refused before any work."""

from __future__ import annotations

import numpy as np
import pytest

import jrome
from jrome.prediction import next_tokens

WORDS = [
    "the",
    "big",
    "old",
    "famous",
    "museum",
    "of",
    "the",
    "city",
    "of",
    "paris",
    "is",
    "in",
    "france",
    "and",
    "the",
    "river",
]


def alone(lm, prompt: str) -> np.ndarray:
    """p(next token) after the prompt, from jrome.forward on that prompt by itself (float64 softmax)."""
    ids, mask = jrome.encode(lm.tokenizer, [prompt])
    logits = np.asarray(jrome.forward(lm, ids, mask, logits_at="last").logits[0, -1], np.float64)
    e = np.exp(logits - logits.max())
    return e / e.sum()


def test_next_tokens_equal_each_prompt_alone_for_many_prompts_of_many_lengths(tiny_lm):
    lm = tiny_lm("llama")
    prompts = [" ".join(WORDS[: 1 + (5 * i) % 16]) for i in range(37)]  # 37: two chunks of 32 rows and odd sizes
    asked = [3, 7, 11]
    found = next_tokens(lm, prompts, k=3, tokens=asked, per_call=32)
    for i, prompt in enumerate(prompts):
        p = alone(lm, prompt)
        order = np.argsort(-p, kind="stable")[:3]
        np.testing.assert_array_equal(found.top[i], order)
        np.testing.assert_allclose(found.p_top[i], p[order], atol=1e-5)
        np.testing.assert_allclose(found.p[i], p[asked], atol=1e-5)


def test_prompts_the_model_cannot_read_are_refused_in_one_line(tiny_lm):
    lm = tiny_lm("gpt2")
    context = lm.config.max_positions
    with pytest.raises(ValueError, match=f"exceed the model's context of {context} positions"):
        next_tokens(lm, ["the city", " ".join(["paris"] * (context + 10))])
    with pytest.raises(ValueError, match="tokenises to nothing"):
        next_tokens(lm, ["the city", ""])
