"""ROME: the closed form, the v* search, undo, and a real edit of SmolLM2."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrome
from jrome.editing import RomeHparams, edit, key_statistics, load_preset
from jrome.editing.rome import Request, _check_request, optimise_v, rank_one_update, v_batch

TEMPLATES = ("{}", "The weather is nice today. {}", "I read it in a book. {}", "Because of that, {}")
EIFFEL = {"prompt": "{} is located in the city of", "subject": "The Eiffel Tower", "target_new": "Rome"}


def test_closed_form_maps_the_key_to_the_value_and_leaves_orthogonal_keys_alone():
    rng = np.random.default_rng(0)
    f, d = 64, 24
    w, bias = rng.normal(size=(f, d)), rng.normal(size=d)
    a = rng.normal(size=(f, 4 * f))
    c = a @ a.T / (4 * f)
    k, v = rng.normal(size=f), rng.normal(size=d)
    u = np.linalg.solve(c, k)
    lam, u_hat = rank_one_update(w, u, k, v, bias)
    w_new = w + np.outer(u_hat, lam)
    np.testing.assert_allclose(k @ w_new + bias, v, atol=1e-5 * np.abs(v).max())
    other = rng.normal(size=f)
    other -= (other @ u_hat) * u_hat
    np.testing.assert_allclose(other @ w_new, other @ w, atol=1e-9)
    assert not np.allclose(rng.normal(size=f) @ w_new, 0)


@pytest.fixture(scope="module")
def stats(smollm2):
    return key_statistics(smollm2, 4, n_tokens=40_000, progress=False)


@pytest.fixture(scope="module")
def edited(smollm2, stats):
    hp = load_preset("smollm2").override(mom2_n_tokens=40_000)
    return edit(smollm2, EIFFEL, hp, stats=stats)


def probs(lm, prompt):
    ids, mask = jrome.encode(lm.tokenizer, [prompt])
    return np.asarray(jax.nn.softmax(jrome.forward(lm, ids, mask, logits_at="last").logits[0, -1]))


def token(lm, text):
    return lm.tokenizer(text)["input_ids"][0]


def test_eiffel_tower_moves_to_rome_and_the_louvre_stays_in_paris(smollm2, edited):
    new, _ = edited
    rome, paris = token(smollm2, " Rome"), token(smollm2, " Paris")
    assert probs(smollm2, "The Eiffel Tower is located in the city of")[rome] < 0.05
    assert probs(new, "The Eiffel Tower is located in the city of")[rome] > 0.5
    assert probs(new, "The Eiffel Tower is in the heart of")[rome] > 0.5
    assert int(probs(new, "The Louvre is located in the city of").argmax()) == paris


def test_the_edit_writes_v_star_for_the_key(smollm2, edited):
    new, undo = edited
    (e,) = undo.edits
    kernel = np.asarray(new.params["blocks"]["mlp"]["down"]["kernel"][4], np.float64)
    old = np.asarray(e.old_kernel, np.float64)
    np.testing.assert_allclose(kernel - old, np.outer(e.u_hat, e.lam), atol=1e-6)
    assert np.linalg.matrix_rank(kernel - old, tol=1e-4) == 1
    assert e.losses[0] > e.losses[np.isfinite(e.losses)][-1]


def test_undo_is_bit_for_bit_and_the_input_is_never_changed(smollm2, edited):
    before = [np.array(x) for x in jax.tree.leaves(smollm2.params)]
    new, undo = edited
    for a, b in zip(before, jax.tree.leaves(smollm2.params), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))
    restored = undo(new)
    for a, b in zip(before, jax.tree.leaves(restored.params), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))
    assert not np.array_equal(np.asarray(new.params["blocks"]["mlp"]["down"]["kernel"]), before[0] * 0)


def test_a_second_edit_of_the_same_shapes_does_not_recompile(smollm2, stats):
    hp = load_preset("smollm2").override(context_templates=TEMPLATES, v_num_grad_steps=3)
    edit(smollm2, EIFFEL, hp, stats=stats)
    size = optimise_v._cache_size()
    new, undo = edit(smollm2, EIFFEL | {"target_new": "Tokyo"}, hp, stats=stats)
    assert optimise_v._cache_size() == size
    assert undo.edits[0].request.target_new == "Tokyo"


def test_a_prompt_with_the_subject_written_out_is_the_same_request():
    req = Request.parse(EIFFEL | {"prompt": "The Eiffel Tower is located in the city of"})
    assert req == Request.parse(EIFFEL)


def test_sequential_edits_and_r_rome(smollm2, stats):
    hp = load_preset("smollm2").override(context_templates=TEMPLATES, rrome=True)
    requests = [
        EIFFEL,
        {"prompt": "{} is located in the city of", "subject": "The Space Needle", "target_new": "London"},
    ]
    new, undo = edit(smollm2, requests, hp, stats=stats)
    assert len(undo.edits) == 2
    assert int(probs(new, "The Eiffel Tower is located in the city of").argmax()) == token(smollm2, " Rome")
    assert int(probs(new, "The Space Needle is located in the city of").argmax()) == token(smollm2, " London")
    first = undo.edits[0]  # r-ROME: the averaged key itself maps to v*
    kernel = np.asarray(first.old_kernel, np.float64) + np.outer(first.u_hat, first.lam)
    np.testing.assert_allclose(first.k_star @ kernel, first.v_star, rtol=1e-4, atol=1e-4)
    restored = undo(new)
    for a, b in zip(jax.tree.leaves(smollm2.params), jax.tree.leaves(restored.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_fast_v_search_equals_the_full_forward_version(tiny_lm, name):
    lm = tiny_lm(name)
    hp = RomeHparams(layer=1, context_templates=("{}", "a new {}", "the old big famous {}"), v_num_grad_steps=6)
    req = Request("{} is located in the city of", "the eiffel tower", "rome paris")
    b = v_batch(lm, req, hp.context_templates, _check_request(lm, req), "subject_last")
    args = (lm.config, lm.params, b.ids, b.mask, b.fact_cols, b.out_cols, b.target_ids, b.rows)
    fast = optimise_v(*args, layer=1, hp=hp, n_rewrite=b.n_rewrite, fast=True)
    ref = optimise_v(*args, layer=1, hp=hp, n_rewrite=b.n_rewrite, fast=False)
    np.testing.assert_allclose(np.asarray(fast[2]), np.asarray(ref[2]), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(fast[0]), np.asarray(ref[0]), rtol=1e-3, atol=1e-4)
    assert float(jnp.linalg.norm(fast[0])) > 0


# Bad input: each a clear error, and the model is left as it was.


@pytest.mark.parametrize(
    ("request_", "hp", "message"),
    [
        (
            EIFFEL | {"prompt": "The Eiffel Tower is in Paris", "subject": "The Louvre"},
            {},
            "'The Louvre' is not in the",
        ),
        (EIFFEL | {"prompt": "{} is as tall as {}"}, {}, "must contain '{}' exactly once"),
        (EIFFEL | {"target_new": ""}, {}, "the target is empty"),
        (EIFFEL, {"layer": 30}, "layer 30 is out of range: this model has layers 0..29"),
        (EIFFEL, {"context_templates": ["no placeholder"]}, "every context template needs a '{}'"),
        ({"prompt": "{} is in", "subject": "x"}, {}, "no 'target_new'"),
    ],
)
def test_bad_requests(smollm2, stats, request_, hp, message):
    before = np.asarray(smollm2.params["blocks"]["mlp"]["down"]["kernel"][4]).copy()
    with pytest.raises(ValueError, match=message):
        edit(smollm2, request_, hp | {"context_templates": hp.get("context_templates", TEMPLATES)}, stats=stats)
    np.testing.assert_array_equal(np.asarray(smollm2.params["blocks"]["mlp"]["down"]["kernel"][4]), before)


def test_non_finite_statistics(smollm2):
    c = np.eye(1536)
    c[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        edit(smollm2, EIFFEL, {"context_templates": TEMPLATES}, stats=c)
    with pytest.raises(ValueError, match="singular"):
        edit(smollm2, EIFFEL, {"context_templates": TEMPLATES}, stats=np.zeros((1536, 1536)))


def test_a_target_that_tokenises_to_nothing(tiny_lm):
    lm = tiny_lm("llama")
    with pytest.raises(ValueError, match="tokenises to nothing"):
        edit(lm, {"prompt": "{} is in", "subject": "the eiffel tower", "target_new": "  "}, {"layer": 1}, stats=None)


def test_a_model_without_a_preset_needs_a_layer(tiny_lm):
    with pytest.raises(ValueError, match="no ROME layer for .*pass hparams=\\{'layer': N\\}"):
        edit(tiny_lm("llama"), {"prompt": "{} is in", "subject": "the eiffel tower", "target_new": "rome"})
