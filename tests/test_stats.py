"""Key statistics: second moments of the MLP keys over a corpus, cached on disk."""

from __future__ import annotations

from functools import partial

import jax
import numpy as np
import pytest
from conftest import WORDS, data_file

import jrome
import jrome.editing.stats as stats_module
from jrome.corpus import open_corpus
from jrome.editing import edit, key_statistics, read_layer_stats
from jrome.editing.published import layer_stats_name
from jrome.editing.windows import corpus_windows

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
    windows = corpus_windows(lm.tokenizer, open_corpus(corpus).pieces(), 200, 16)
    assert result[0].count == result[2].count == windows.size == 208
    for layer in (0, 2):
        ref = direct(lm, layer, windows)  # float32 sums of 208 products: compare relative to the largest entry
        np.testing.assert_allclose(result[layer].mom2, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())
        c = result[layer].covariance
        np.testing.assert_allclose(c, c.T)
        assert np.all(np.linalg.eigvalsh(c) > -1e-9)


def test_sample_mode_counts_every_real_token_of_each_record_once(tiny_lm, tmp_path):
    lm = tiny_lm("llama")
    records = ["the eiffel tower is located in paris", "a big old museum", "the river and the bridge " * 20, "rome"]
    corpus = tmp_path / "records.txt"
    corpus.write_text("\n\n".join(records) + "\n")
    result = key_statistics(lm, [0, 2], corpus, n_samples=10, batch_size=2, window=64, cache=False, progress=False)
    rows = [lm.tokenizer(r)["input_ids"][: lm.config.max_positions] for r in records]
    assert result[0].count == sum(map(len, rows)) == 7 + 4 + 64 + 1  # the long record is cut at the context
    for layer in (0, 2):
        ref = sum(direct(lm, layer, np.asarray([r])) for r in rows)  # each record alone: no padding at all
        np.testing.assert_allclose(result[layer].mom2, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())
    two = key_statistics(lm, 0, corpus, n_samples=2, cache=False, progress=False)[0]
    chosen = sorted(np.random.RandomState(1).permutation(4)[:2])  # a random subset, seed 1, as the original
    assert two.count == sum(len(rows[i]) for i in chosen)


def test_token_mode_reproduces_the_statistics_given_to_the_original(smollm2, golden_rome):
    """The golden C: 39,936 tokens of WikiText-2's validation text as one stream, 64-token windows."""
    stats = key_statistics(smollm2, 4, data_file("wikitext-2/valid.txt"), n_tokens=39_936, window=64, cache=False)
    c = golden_rome["arrays"]["C"]
    assert stats[4].count == 39_936
    assert np.linalg.norm(stats[4].covariance - c) / np.linalg.norm(c) < 1e-5


def test_the_originals_statistics_files_are_read_and_used(smollm2, tmp_path, golden_rome, golden_hparams):
    c = golden_rome["arrays"]["C"].astype(np.float64)
    name = layer_stats_name("llama", 4)
    assert name == "model.layers.4.mlp.down_proj_float32_mom2_100000.npz"
    assert layer_stats_name("gpt2", 17) == "transformer.h.17.mlp.c_proj_float32_mom2_100000.npz"
    path = tmp_path / name  # the original's layout: CombinedStat(mom2=SecondMoment()).state_dict() + sample_size
    np.savez(
        path, **{"mom2.mom2": c * 5000, "mom2.count": 5000, "mom2.constructor": "SecondMoment()", "sample_size": 100000}
    )
    stats = read_layer_stats(path)
    assert stats.layer == 4 and stats.count == 5000
    np.testing.assert_allclose(stats.covariance, c, rtol=1e-12)
    _, from_file = edit(smollm2, golden_rome["request"], golden_hparams.override(v_num_grad_steps=1), stats=path)
    _, from_array = edit(smollm2, golden_rome["request"], golden_hparams.override(v_num_grad_steps=1), stats=c)
    np.testing.assert_allclose(from_file.edits[0].u_hat, from_array.edits[0].u_hat, rtol=1e-9)
    bad = tmp_path / "transformer.h.1.mlp.c_proj_float32_mom2_100000.npz"
    np.savez(bad, mom2=c)
    with pytest.raises(ValueError, match="is not a layer_stats file"):
        read_layer_stats(bad)


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
    with pytest.raises(ValueError, match="n_tokens \\(0\\) and n_samples \\(None\\) must be positive"):
        key_statistics(lm, 1, corpus, n_tokens=0, progress=False)
    with pytest.raises(FileNotFoundError, match="no statistics file"):
        read_layer_stats(tmp_path / "missing.npz")


def test_an_early_stop_keeps_a_prefix_of_the_pass_once_the_probe_keys_settle(tiny_lm, tmp_path):
    lm = tiny_lm("llama")  # d_mlp 64: the first checkpoint is at 128 tokens
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(np.random.default_rng(0).choice(WORDS, 6000)))
    run = partial(key_statistics, lm, [0, 1], corpus, 4000, window=16, batch_size=4, cache=False, progress=False)
    full, early, never = run(), run(tolerance=0.15), run(tolerance=1e-9)
    assert full[0].count == 4000 and never[0].count == 4000
    assert 128 <= early[0].count < 4000 and early[0].count == early[1].count
    prefix = run.func(lm, [0, 1], corpus, early[0].count, window=16, batch_size=4, cache=False, progress=False)
    for layer in (0, 1):  # exactly the statistics of the tokens it read, which did settle
        np.testing.assert_array_equal(early[layer].mom2, prefix[layer].mom2)
        assert (
            np.abs(early[layer].covariance - full[layer].covariance).max() < 0.2 * np.abs(full[layer].covariance).max()
        )
    with pytest.raises(ValueError, match="tolerance must be a positive relative change"):
        run(tolerance=0.0)
