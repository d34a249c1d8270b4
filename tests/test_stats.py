"""Key statistics: second moments of the MLP keys over a corpus, cached on disk."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import jrome
import jrome.editing.stats as stats_module
from jrome.editing import key_statistics

CORPUS = "the eiffel tower is located in paris\nthe big old museum and the river\n" * 40


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS)
    return path


def direct(lm, layer, windows):
    """Σ k kᵀ from an ordinary forward that captures the keys of every layer."""
    out = jrome.forward(lm, windows, interventions=jrome.Interventions(capture=("mlp_key",)))
    keys = np.asarray(out.captured["mlp_key"][layer], np.float64).reshape(-1, lm.config.d_mlp)
    return keys.T @ keys


def test_statistics_equal_a_direct_computation_for_several_layers_in_one_pass(tiny_lm, corpus):
    lm = tiny_lm("llama")
    result = key_statistics(lm, [0, 2], corpus, n_tokens=200, window=16, batch_size=4, cache=False, progress=False)
    windows = stats_module.corpus_windows(lm.tokenizer, [corpus], 200, 16)
    assert result[0].count == result[2].count == windows.size == 208
    for layer in (0, 2):
        ref = direct(lm, layer, windows)  # float32 sums of 208 products: compare relative to the largest entry
        np.testing.assert_allclose(result[layer].mom2, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())
        c = result[layer].covariance
        np.testing.assert_allclose(c, c.T)
        assert np.all(np.linalg.eigvalsh(c) > -1e-9)


def test_results_are_cached_and_reused(tiny_lm, corpus, monkeypatch):
    lm = tiny_lm("llama")
    first = key_statistics(lm, 1, corpus, n_tokens=100, window=16, progress=False)
    calls = []
    monkeypatch.setattr(stats_module, "_moments", lambda *a: calls.append(1))
    again = key_statistics(lm, 1, corpus, n_tokens=100, window=16, progress=False)
    assert calls == [] and np.array_equal(again[1].mom2, first[1].mom2) and again[1].count == first[1].count


def test_an_edit_elsewhere_does_not_invalidate_the_cache_but_an_edit_below_does(tiny_lm, corpus):
    lm = tiny_lm("llama")
    key_statistics(lm, 1, corpus, n_tokens=100, window=16, progress=False)
    kernel = lm.params["blocks"]["mlp"]["down"]["kernel"]
    at_layer = lm.replace(params=jax.tree.map(lambda x: x, lm.params))
    at_layer.params["blocks"]["mlp"]["down"]["kernel"] = kernel.at[1].add(1.0)
    assert stats_module._fingerprint(at_layer, 1) == stats_module._fingerprint(lm, 1)
    below = lm.replace(params=jax.tree.map(lambda x: x, lm.params))
    below.params["blocks"]["mlp"]["down"]["kernel"] = kernel.at[0].add(1.0)
    assert stats_module._fingerprint(below, 1) != stats_module._fingerprint(lm, 1)


def test_a_short_corpus_gives_what_it_has(tiny_lm, corpus):
    result = key_statistics(tiny_lm("llama"), 0, corpus, n_tokens=10**6, window=16, cache=False, progress=False)
    assert result[0].count == len(CORPUS.split()) // 16 * 16


def test_bad_arguments(tiny_lm, corpus, tmp_path):
    lm = tiny_lm("llama")
    with pytest.raises(ValueError, match=r"out of range: this model has layers 0..2"):
        key_statistics(lm, [1, 3], corpus, progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        key_statistics(lm, 1, tmp_path / "nothing.txt", progress=False)
    with pytest.raises(ValueError, match="n_tokens must be positive"):
        key_statistics(lm, 1, corpus, n_tokens=0, progress=False)
