"""Causal tracing: the packed program against one full forward per restoration, the original's noise, and Fig. 1."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import data_file, one_worker

import jrome
from jrome import Interventions, Patch
from jrome.tracing import corrupt_and_clean, noise_scale, noise_std, restore, trace
from jrome.tracing.reference import reference_scores, restoration_prob

pytestmark = one_worker(__name__)  # its module-scoped fixture is computed once

VARIANTS = [("hidden", None), ("mlp", None), ("attn", None), ("hidden", "mlp"), ("hidden", "attn")]
TINY_PROMPT, TINY_SUBJECT = "a famous old museum the eiffel tower is located in the city of", "the eiffel tower"


@pytest.mark.parametrize(
    ("family", "chunks"),
    [("gpt2", (1,)), ("gpt_neox", (1,)), ("llama", (1, 2)), ("mistral", (1,)), ("qwen2", (1,)), ("qwen3", (1,)),
     ("gemma", (1,)), ("gemma2", (1,)),
     ("gemma3", (1,))],
)  # fmt: skip
def test_packed_trace_equals_a_loop_of_full_forwards_on_tiny_models(tiny_lm, family, chunks):
    lm = tiny_lm(family)
    runs = corrupt_and_clean(lm, TINY_PROMPT, TINY_SUBJECT, samples=3, noise=1.0)
    assert runs.subject_range == (4, 7)  # the subject does not start the prompt, so earlier tokens are skipped
    for kind, sever in VARIANTS:
        ref = reference_scores(lm, runs, kind, window=2, sever=sever)
        for chunk in chunks:  # 1: one lane at a time (the CPU default); 2: lanes vmapped in pairs
            fast = restore(lm, runs, kind, window=2, sever=sever, chunk=chunk)
            np.testing.assert_allclose(fast.scores, ref, atol=1e-5, err_msg=f"{kind} sever={sever} chunk={chunk}")
        assert np.ptp(ref[runs.subject_range[0] :]) > 1e-3, (kind, sever)  # the grid is not flat: restorations matter
        np.testing.assert_allclose(
            ref[: runs.subject_range[0]], runs.low_score, atol=1e-6
        )  # tokens before the subject: no effect


def test_token_range_restores_only_the_tokens_asked_for(tiny_lm):
    lm = tiny_lm("llama")
    runs = corrupt_and_clean(lm, TINY_PROMPT, TINY_SUBJECT, samples=3, noise=1.0)
    some = restore(lm, runs, "hidden", sever="mlp", token_range=[9, 2, 5, 9])
    assert some.token_range == [2, 5, 9]
    for token in (2, 5, 9):  # token 2 is before the subject: its restorations change nothing
        want = [restoration_prob(lm, runs, "hidden", token, layer, sever="mlp") for layer in range(3)]
        np.testing.assert_allclose(some.scores[token], want, atol=1e-5)
    assert np.isnan(np.delete(some.scores, [2, 5, 9], axis=0)).all()
    last = restore(lm, runs, "hidden", token_range="subject_last")
    assert last.token_range == [6] and not np.isnan(last.scores[6]).any()
    assert np.isnan(np.delete(last.scores, 6, axis=0)).all()
    d = json.loads(json.dumps(last.to_dict(), allow_nan=False))  # NaN (not restored) is null
    assert d["scores"][0] == [None] * 3 and None not in d["scores"][6] and d["token_range"] == [6]


def test_replace_sets_the_subject_token_embeddings_to_the_noise_and_keeps_positions(tiny_lm):
    lm = tiny_lm("gpt2")  # learned position embeddings, added after the token embeddings
    runs = corrupt_and_clean(lm, TINY_PROMPT, TINY_SUBJECT, samples=2, noise=0.5, seed=3, replace=True)
    start, end = runs.subject_range
    noise = (0.5 * np.random.RandomState(3).randn(2, end - start, lm.config.d_model)).astype(np.float32)
    positions = np.asarray(lm.params["embed"]["positions"])[start:end]
    corrupted = np.asarray(runs.view("corrupt_inputs")[0])  # [samples, T, D], the input of layer 0
    np.testing.assert_allclose(corrupted[:, start:end], noise + positions, atol=1e-6)
    np.testing.assert_allclose(
        corrupted[:, :start], np.asarray(runs.view("clean_inputs")[0])[None, :start].repeat(2, 0)
    )


def test_noise_is_numpys_randomstate_draw_as_in_the_original(tiny_lm):
    lm = tiny_lm("llama")
    start, end = 4, 7
    runs = corrupt_and_clean(lm, TINY_PROMPT, TINY_SUBJECT, samples=3, noise=0.5)  # seed 1 by default
    want = (0.5 * np.random.RandomState(1).randn(3, end - start, lm.config.d_model)).astype(np.float32)
    added = np.asarray(runs.view("embed_add"))
    np.testing.assert_array_equal(added[:, start:end], want)
    assert not added[:, :start].any() and not added[:, end:].any()
    uniform = corrupt_and_clean(lm, TINY_PROMPT, TINY_SUBJECT, samples=3, noise=0.5, seed=7, uniform=True)
    want = (0.5 * np.random.RandomState(7).uniform(-1, 1, (3, end - start, lm.config.d_model))).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(uniform.view("embed_add"))[:, start:end], want)
    explicit = corrupt_and_clean(lm, TINY_PROMPT, TINY_SUBJECT, samples=3, noise=want)
    assert explicit.low_score == uniform.low_score and explicit.noise_scale == pytest.approx(float(np.std(want)))


def test_noise_scale_parses_s_factor_once_for_trace_and_datasets(smollm2):
    subjects = [r["subject"] for r in json.loads(data_file("known_1000.json").read_text())]
    ids = np.concatenate([smollm2.tokenizer(s)["input_ids"] for s in subjects])
    sigma = np.std(np.asarray(smollm2.params["embed"]["tokens"], np.float64)[ids], ddof=1)
    assert noise_std(smollm2) == pytest.approx(sigma, rel=1e-9)  # all of known_1000's subjects, ddof 1
    assert noise_scale(smollm2, "s3") == pytest.approx(3 * sigma, rel=1e-9)
    assert noise_scale(smollm2, "s") == pytest.approx(sigma, rel=1e-9)
    few = ["The Eiffel Tower", "Paris"]
    assert noise_scale(smollm2, "s0.5", few) == pytest.approx(0.5 * noise_std(smollm2, few))
    assert noise_scale(smollm2, 0.25) == 0.25
    for bad in ("x3", "s3x", "s-1", "3"):
        with pytest.raises(ValueError, match=f"noise='{bad}'; accepted"):
            noise_scale(smollm2, bad)


@pytest.fixture(scope="module")
def eiffel(smollm2):
    prompt, subject = "The Eiffel Tower is located in the city of", "The Eiffel Tower"
    return corrupt_and_clean(smollm2, prompt, subject, samples=3, noise="s3")


@pytest.fixture(scope="module")
def eiffel_hidden(smollm2, eiffel):
    return restore(smollm2, eiffel, "hidden")


def test_severed_trace_of_the_last_subject_token_equals_full_forwards_on_smollm2(smollm2, eiffel):
    fast = restore(smollm2, eiffel, "hidden", sever="mlp", token_range="subject_last")
    last = eiffel.subject_range[1] - 1
    ref = [restoration_prob(smollm2, eiffel, "hidden", last, layer, sever="mlp") for layer in range(30)]
    np.testing.assert_allclose(fast.scores[last], ref, atol=1e-5)
    assert fast.scores.shape == (10, 30) and np.isnan(np.delete(fast.scores, last, axis=0)).all()


def test_restoring_the_subject_and_what_follows_at_layer_0_gives_the_clean_score(smollm2, eiffel):
    start = eiffel.subject_range[0]
    n = len(eiffel.ids)
    resid = eiffel.view("clean_inputs")[1]  # the residual after layer 0
    patch = Patch(layer=jnp.zeros(n - start, jnp.int32), token=jnp.arange(start, n), value=resid[start:])
    out = jrome.forward(
        smollm2,
        np.repeat(eiffel.ids[None], eiffel.samples, 0),
        interventions=Interventions(embed_add=eiffel.view("embed_add"), resid=patch),
        logits_at="last",
    )
    logits = out.logits[:, -1]
    p = np.asarray(jnp.exp(logits[:, eiffel.answer_id] - jax.nn.logsumexp(logits, axis=-1)))
    np.testing.assert_allclose(p, eiffel.high_score, atol=1e-5)


def test_restoring_the_final_state_of_the_last_token_gives_the_clean_score(eiffel_hidden):
    result = eiffel_hidden
    assert result.scores[-1, -1] == pytest.approx(result.high_score, abs=1e-5)
    assert result.scores[:-1, -1] == pytest.approx(np.full(9, result.low_score), abs=1e-5)


def test_eiffel_tower_shows_the_early_and_the_late_site(eiffel_hidden):
    """Fig. 1: a subject token is decisive in the lower layers; the last token only in the upper ones."""
    result = eiffel_hidden
    assert result.answer == " Paris"
    low, high, half = result.low_score, result.high_score, result.scores.shape[1] // 2
    start, end = result.subject_range
    assert result.scores[start:end, :half].max() > low + 0.3 * (high - low)
    last = result.scores[-1]
    assert last[:half].max() < low + 0.1 * (high - low)
    assert last[half:].max() > low + 0.5 * (high - low)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"subject": "The Louvre"}, "not in the prompt"),
        ({"subject": ""}, "subject is empty"),
        ({"window": 0, "kind": "mlp"}, "window must be a positive integer"),
        ({"samples": 0}, "samples must be a positive integer"),
        ({"noise": np.zeros((2, 2, 576))}, r"noise array has shape \(2, 2, 576\); it must be .* \(3, 3, 576\)"),
        ({"kind": "neurons"}, "kind='neurons'; accepted: hidden, mlp, attn, all"),
        ({"noise": -1.0}, r"noise=-1.0; accepted: .* \(a scale is positive\)"),
        ({"prompt": "The Eiffel Tower is in "}, "ends with whitespace"),
        ({"kind": "mlp", "sever": "mlp"}, "sever applies to hidden-state traces only"),
        ({"noise": "x3"}, "noise='x3'; accepted"),
        ({"answer": ""}, "the answer '' is empty"),
        ({"answer": "  "}, "the answer '  ' is empty"),
        ({"token_range": "subject_first"}, "token_range='subject_first'; accepted"),
        ({"token_range": [2, 6]}, r"token_range \[2, 6\]: give token indices in \[0, 6\)"),
        ({"token_range": []}, "at least one"),
    ],
)
def test_bad_input_is_a_clear_error(smollm2, kwargs, message):
    args = {"prompt": "The Eiffel Tower is in", "subject": "Eiffel Tower", "samples": 3, "noise": 0.1} | kwargs
    with pytest.raises(ValueError, match=message):
        trace(smollm2, **args)


def test_an_answer_without_its_leading_space_is_scored_as_a_target_is(smollm2):
    prompt, subject = "The Eiffel Tower is located in the city of", "The Eiffel Tower"
    paris = smollm2.tokenizer(" Paris", add_special_tokens=False)["input_ids"][0]
    assert paris != smollm2.tokenizer("Paris", add_special_tokens=False)["input_ids"][0]
    for answer in ("Paris", " Paris", paris):
        runs = corrupt_and_clean(smollm2, prompt, subject, samples=2, noise=0.1, answer=answer)
        assert runs.answer_id == paris and runs.high_score > 0.5


def test_a_prompt_longer_than_the_context_is_an_error(tiny_lm):
    lm = tiny_lm("gpt2")
    with pytest.raises(ValueError, match="more than the model's context of 64"):
        trace(lm, " ".join(["the"] * 70) + " eiffel tower", "eiffel tower", samples=1, noise=1.0)


def test_a_trace_says_what_it_traces_unless_asked_not_to(tiny_lm, capsys):
    lm = tiny_lm("gpt2")
    capsys.readouterr()  # building the tiny checkpoint may print
    args = dict(prompt="the eiffel tower is located in the city of", subject="eiffel tower", samples=2, noise=0.1)
    loud = trace(lm, kind="mlp", **args)
    assert capsys.readouterr().err == "causal trace (mlp): 9 tokens x 3 layers restored, 2 noise samples each, in one compiled program\n"  # fmt: skip
    quiet = trace(lm, kind="mlp", progress=False, **args)
    assert capsys.readouterr().err == "" and np.array_equal(loud.scores, quiet.scores)


def test_all_kinds_from_one_pair_of_runs_and_known_1000_fetched_on_first_use(tiny_lm, tmp_path, monkeypatch):
    from hub import Mirror

    lm = tiny_lm("llama")
    prompt, subject = "the eiffel tower is located in the city of", "the eiffel tower"
    monkeypatch.setenv("JROME_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("JROME_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="jrome is offline \\(JROME_OFFLINE=1\\); get it with: jrome data fetch known_1000$"):  # fmt: skip
        trace(lm, prompt, subject, kind="all")
    mirror = Mirror(tmp_path / "served").start()
    try:
        mirror.serve("dsets/known_1000.json", data_file("known_1000.json").read_bytes())
        monkeypatch.setenv("JROME_DATA_URL", mirror.url)
        results = trace(lm, prompt, subject, kind="all", samples=2, download=True, progress=False)  # asked: fetched
    finally:
        mirror.stop()
    assert sorted(results) == ["attn", "hidden", "mlp"] and len(mirror.requests) == 1
    for kind, result in results.items():
        alone = trace(lm, prompt, subject, kind=kind, samples=2, progress=False)  # known_1000 now cached
        np.testing.assert_array_equal(result.scores, alone.scores)
        assert result.noise_scale == alone.noise_scale > 0


BF16_BOUND = 0.05  # |p bfloat16 - p float32| per restoration: above the largest measured (0.041, BENCHMARKS.md)


def test_a_bfloat16_trace_stays_within_its_documented_bound_of_float32(eiffel, eiffel_hidden):
    """bfloat16 parameters (float32 norms, attention scores and logits): the same noise and answer give scores within
    BF16_BOUND of float32's, and not equal to them (so the bfloat16 path is the one measured)."""
    bf16 = jrome.load("smollm2", dtype="bfloat16")
    noise = np.asarray(eiffel.view("embed_add"))[:, slice(*eiffel.subject_range)]
    runs = corrupt_and_clean(bf16, eiffel.prompt, eiffel.subject, samples=3, noise=noise, answer=eiffel.answer_id)
    assert runs.arrays.clean_inputs.dtype == jnp.bfloat16
    assert abs(runs.high_score - eiffel.high_score) < BF16_BOUND and abs(runs.low_score - eiffel.low_score) < BF16_BOUND
    scores = restore(bf16, runs, "hidden").scores
    diff = np.abs(scores - eiffel_hidden.scores)
    assert diff.max() < BF16_BOUND and diff.max() > 1e-4, diff.max()
