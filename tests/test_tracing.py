"""Causal tracing: the packed program against one full forward per restoration, and the paper's findings."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

import jrome
from jrome import Interventions, Patch
from jrome.tracing import corrupt_and_clean, restore, trace
from jrome.tracing.reference import reference_scores

VARIANTS = [("hidden", None), ("mlp", None), ("attn", None), ("hidden", "mlp"), ("hidden", "attn")]
TINY_PROMPT, TINY_SUBJECT = "a famous old museum the eiffel tower is located in the city of", "the eiffel tower"


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "llama"])
def test_packed_trace_equals_a_loop_of_full_forwards_on_tiny_models(tiny_lm, family):
    lm = tiny_lm(family)
    runs = corrupt_and_clean(lm, TINY_PROMPT, TINY_SUBJECT, samples=3, noise=1.0)
    assert runs.span == (4, 7)  # the subject does not start the prompt, so earlier tokens are skipped
    for kind, sever in VARIANTS:
        ref = reference_scores(lm, runs, kind, window=2, sever=sever)
        for chunk in (1, 2):
            fast = restore(lm, runs, kind, window=2, sever=sever, chunk=chunk)
            np.testing.assert_allclose(fast.scores, ref, atol=1e-5, err_msg=f"{kind} sever={sever} chunk={chunk}")
        assert np.ptp(ref[runs.span[0] :]) > 1e-3, (kind, sever)  # the grid is not flat: restorations matter
        np.testing.assert_allclose(ref[: runs.span[0]], runs.low, atol=1e-6)  # tokens before the subject: no effect


@pytest.fixture(scope="module")
def eiffel(smollm2):
    return corrupt_and_clean(smollm2, "The Eiffel Tower is in", "Eiffel Tower", samples=3, noise="s3")


@pytest.mark.parametrize(("kind", "sever"), VARIANTS)
def test_packed_trace_equals_a_loop_of_full_forwards_on_smollm2(smollm2, eiffel, kind, sever):
    fast = restore(smollm2, eiffel, kind, sever=sever)
    ref = reference_scores(smollm2, eiffel, kind, sever=sever)
    np.testing.assert_allclose(fast.scores, ref, atol=1e-5)
    assert fast.scores.shape == (6, 30)


def test_restoring_the_subject_and_what_follows_at_layer_0_gives_the_clean_score(smollm2, eiffel):
    start = eiffel.span[0]
    n = len(eiffel.ids)
    resid = eiffel.clean["inputs"][1]  # the residual after layer 0
    patch = Patch(layer=jnp.zeros(n - start, jnp.int32), token=jnp.arange(start, n), value=resid[start:])
    out = jrome.forward(
        smollm2,
        np.repeat(eiffel.ids[None], eiffel.samples, 0),
        interventions=Interventions(embed_add=eiffel.embed_add, resid=patch),
        logits_at="last",
    )
    p = np.asarray(jnp.exp(out.logits[:, -1, eiffel.answer_id] - jax_logsumexp(out.logits[:, -1])))
    np.testing.assert_allclose(p, eiffel.high, atol=1e-5)


def jax_logsumexp(x):
    import jax

    return jax.nn.logsumexp(x, axis=-1)


def test_restoring_the_final_state_of_the_last_token_gives_the_clean_score(smollm2, eiffel):
    result = restore(smollm2, eiffel, "hidden")
    assert result.scores[-1, -1] == pytest.approx(result.high_score, abs=1e-5)
    assert result.scores[:-1, -1] == pytest.approx(np.full(5, result.low_score), abs=1e-5)


def test_same_seed_same_scores_and_an_explicit_noise_array_reproduces_it(smollm2):
    prompt, subject = "The Eiffel Tower is in", "Eiffel Tower"
    a = trace(smollm2, prompt, subject, samples=2, seed=7)
    b = trace(smollm2, prompt, subject, samples=2, seed=7)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert not np.array_equal(a.scores, trace(smollm2, prompt, subject, samples=2, seed=8).scores)
    runs = corrupt_and_clean(smollm2, prompt, subject, samples=2, seed=7)
    noise = np.asarray(runs.embed_add)[:, runs.span[0] : runs.span[1]]
    c = trace(smollm2, prompt, subject, samples=2, noise=noise)
    np.testing.assert_array_equal(a.scores, c.scores)


def test_uniform_and_replace_noise(smollm2):
    prompt, subject = "The Eiffel Tower is in", "Eiffel Tower"
    runs = corrupt_and_clean(smollm2, prompt, subject, samples=2, noise=0.5, uniform=True)
    added = np.asarray(runs.embed_add)[:, 1:4]
    assert 0.4 < np.abs(added).max() <= 0.5 and np.abs(np.asarray(runs.embed_add)[:, 4:]).max() == 0
    replaced = corrupt_and_clean(smollm2, prompt, subject, samples=2, noise=0.5, replace=True)
    subject_inputs = np.asarray(replaced.corrupt["inputs"][0][:, 1:4])
    plain = corrupt_and_clean(smollm2, prompt, subject, samples=2, noise=0.5)
    np.testing.assert_allclose(subject_inputs, np.asarray(plain.embed_add)[:, 1:4], atol=1e-6)


def test_eiffel_tower_shows_the_early_and_the_late_site(smollm2):
    """Fig. 1: a subject token is decisive in the lower layers; the last token only in the upper ones."""
    result = trace(smollm2, "The Eiffel Tower is located in the city of", "The Eiffel Tower", samples=10)
    assert result.answer == " Paris"
    low, high, half = result.low_score, result.high_score, result.scores.shape[1] // 2
    start, end = result.subject_range
    assert result.scores[start:end, :half].max() > low + 0.3 * (high - low)
    last = result.scores[-1]
    assert last[:half].max() < low + 0.1 * (high - low)
    assert last[half:].max() > low + 0.5 * (high - low)


def test_result_serialises_to_json(smollm2):
    result = trace(smollm2, "The Eiffel Tower is in", "Eiffel Tower", samples=2)
    d = json.loads(json.dumps(result.to_dict()))
    assert d["tokens"][1:4] == [" E", "iffel", " Tower"] and d["subject_range"] == [1, 4]
    assert np.array(d["scores"]).shape == (6, 30) and d["kind"] == "hidden" and d["answer"] == result.answer


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"subject": "The Louvre"}, "not in the prompt"),
        ({"subject": ""}, "subject is empty"),
        ({"window": 0, "kind": "mlp"}, "window must be a positive integer"),
        ({"samples": 0}, "samples must be a positive integer"),
        ({"noise": np.zeros((2, 2, 576))}, r"noise array has shape \(2, 2, 576\); it must be .* \(3, 3, 576\)"),
        ({"kind": "neurons"}, "kind='neurons'; accepted: hidden, mlp, attn"),
        ({"kind": "mlp", "sever": "mlp"}, "sever applies to hidden-state traces only"),
        ({"noise": "x3"}, "noise='x3'; accepted"),
        ({"answer": ""}, "tokenises to nothing"),
    ],
)
def test_bad_input_is_a_clear_error(smollm2, kwargs, message):
    args = {"prompt": "The Eiffel Tower is in", "subject": "Eiffel Tower", "samples": 3} | kwargs
    with pytest.raises(ValueError, match=message):
        trace(smollm2, **args)


def test_a_prompt_longer_than_the_context_is_an_error(tiny_lm):
    lm = tiny_lm("gpt2")
    with pytest.raises(ValueError, match="more than the model's context of 64"):
        trace(lm, " ".join(["the"] * 70) + " eiffel tower", "eiffel tower", samples=1, noise=1.0)
