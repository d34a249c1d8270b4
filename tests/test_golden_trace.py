"""Causal tracing against the original code's own numbers (../shared/golden, see its README)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import golden_file

from jrome.tracing import corrupt_and_clean, restore


@pytest.mark.slow
def test_trace_equals_the_original_on_smollm2(smollm2):
    golden = json.loads(golden_file("trace_smollm2_eiffel.json").read_text())
    samples, (start, end) = golden["samples"], golden["subject_range"]
    noise = 0.3516329750418663 * np.random.RandomState(1).randn(samples, end - start, smollm2.config.d_model)
    runs = corrupt_and_clean(smollm2, golden["prompt"], golden["subject"], samples=samples, noise=noise)
    assert list(runs.subject_range) == golden["subject_range"]
    assert smollm2.tokenizer.decode([runs.answer_id]) == golden["answer"]
    assert runs.high_score == pytest.approx(golden["high_score"], abs=1e-4)
    # a float scale draws the same array by default (RandomState(1)), so "s3" traces are the original's
    seeded = corrupt_and_clean(smollm2, golden["prompt"], golden["subject"], samples=samples, noise=0.3516329750418663)
    np.testing.assert_array_equal(np.asarray(seeded.view("embed_add")), np.asarray(runs.view("embed_add")))
    for kind, want in golden["kinds"].items():  # hidden, mlp and attn from the same clean and corrupted runs
        result = restore(smollm2, runs, kind, window=golden["window"])
        assert result.tokens == golden["tokens"]
        assert result.low_score == pytest.approx(want["low_score"], abs=1e-4), kind
        np.testing.assert_allclose(result.scores, np.asarray(want["scores"]), rtol=0, atol=1e-4, err_msg=kind)
