"""ROME: the same numbers as the original code (the golden edit), the closed form's defining properties, undo,
the v* search's two implementations, context templates, and bad input."""

from __future__ import annotations

from types import SimpleNamespace

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrome
from jrome.compilation import CompileLog
from jrome.editing import RomeHparams, edit, rome
from jrome.editing.keys import grouped_keys, template_keys
from jrome.editing.requests import Request, target_ids
from jrome.editing.rome import rank_one_update
from jrome.editing.templates import rome_templates, start_text, template_groups
from jrome.editing.undo import down_kernel
from jrome.editing.vsearch import EARLY_STOP, LOSS_COLUMNS, Settings, adam_search, search, v_batch
from jrome.generation import sample_to_length
from jrome.tokens import fact_index

EIFFEL = {"prompt": "{} is located in the city of", "subject": "The Eiffel Tower", "target_new": "Rome"}
TEMPLATES = ("{}", "The weather is nice today. {}", "I read it in a book. {}")


def probs(lm, prompt):
    ids, mask = jrome.encode(lm.tokenizer, [prompt])
    return np.asarray(jax.nn.softmax(jrome.forward(lm, ids, mask, logits_at="last").logits[0, -1]))


def token(lm, text):
    return lm.tokenizer(text)["input_ids"][0]


def without_down(params):
    """The parameter tree without the MLP output projections (the leaf an edit may change)."""
    mlp = {k: v for k, v in params["blocks"]["mlp"].items() if k != "down"}
    return params | {"blocks": params["blocks"] | {"mlp": mlp}}


# The golden edit: what the original code computed for Eiffel Tower → Rome on SmolLM2 at layer 4.


def test_left_vector_equals_the_originals(eiffel_edit, golden_rome):
    (e,) = eiffel_edit[1].edits
    u = golden_rome["arrays"]["u"]
    assert np.linalg.norm(e.u_hat - u) / np.linalg.norm(u) < 1e-4


def test_right_vector_equals_the_originals(eiffel_edit, golden_rome):
    (e,) = eiffel_edit[1].edits
    v = golden_rome["arrays"]["v"]
    assert np.linalg.norm(e.lam - v) / np.linalg.norm(v) < 1e-3


def test_every_loss_term_at_every_step_prints_as_the_originals(eiffel_edit, golden_rome):
    (e,) = eiffel_edit[1].edits
    printed = [[step[c] for c in LOSS_COLUMNS] for step in golden_rome["losses_printed_3dp"]]
    ours = np.round(e.losses.astype(np.float64), 3)[: len(printed)]
    np.testing.assert_array_equal(ours, np.asarray(printed))
    assert np.isnan(e.losses[len(printed) :]).all()  # the same number of steps: the early stop agrees too


def test_probabilities_before_and_after_equal_the_originals(smollm2, eiffel_edit, golden_rome):
    new, _ = eiffel_edit
    rome, paris = token(smollm2, " Rome"), token(smollm2, " Paris")
    for model, rows in ((smollm2, golden_rome["probs_before"]), (new, golden_rome["probs_after"])):
        for prompt, p_rome, p_paris in rows:
            p = probs(model, prompt)
            assert p[rome] == pytest.approx(p_rome, abs=2e-3) and p[paris] == pytest.approx(p_paris, abs=2e-3), prompt


# What the closed form promises, checked on the real edit.


def test_the_edited_kernel_maps_the_key_to_v_star_and_orthogonal_keys_as_before(eiffel_edit):
    new, undo = eiffel_edit
    (e,) = undo.edits
    kernel = np.asarray(down_kernel(new.params)[e.layer], np.float64)
    old = np.asarray(e.old_kernel, np.float64)
    np.testing.assert_allclose(e.k @ kernel, e.v_star, rtol=1e-4, atol=1e-4 * np.abs(e.v_star).max())
    assert np.linalg.norm(e.k @ old - e.v_star) > 100 * np.linalg.norm(e.k @ kernel - e.v_star)
    rng = np.random.default_rng(0)
    others = rng.normal(size=(4, kernel.shape[0]))
    others -= np.outer(others @ e.u_hat, e.u_hat)
    np.testing.assert_allclose(others @ kernel, others @ old, atol=1e-4)


def test_the_edit_changes_one_layer_of_one_leaf_and_undo_restores_it_bit_for_bit(smollm2, eiffel_edit):
    new, undo = eiffel_edit
    (e,) = undo.edits
    before, after = down_kernel(smollm2.params), down_kernel(new.params)
    changed = [layer for layer in range(before.shape[0]) if not np.array_equal(before[layer], after[layer])]
    assert changed == [e.layer]
    chex.assert_trees_all_equal(without_down(new.params), without_down(smollm2.params))
    chex.assert_trees_all_equal(undo(new).params, smollm2.params)


def test_closed_form_on_random_numbers():
    rng = np.random.default_rng(0)
    f, d = 64, 24
    w, bias = rng.normal(size=(f, d)), rng.normal(size=d)
    a = rng.normal(size=(f, 4 * f))
    c = a @ a.T / (4 * f)
    k, v = rng.normal(size=f), rng.normal(size=d)
    lam, u_hat = rank_one_update(w, np.linalg.solve(c, k), k, v, bias)
    w_new = w + np.outer(u_hat, lam)
    np.testing.assert_allclose(k @ w_new + bias, v, atol=1e-9)
    other = rng.normal(size=f)
    other -= (other @ u_hat) * u_hat
    np.testing.assert_allclose(other @ w_new, other @ w, atol=1e-9)
    with pytest.raises(ValueError, match="orthogonal"):
        rank_one_update(w, np.eye(f)[0], np.eye(f)[1], v)


def test_a_second_edit_of_the_same_shapes_does_not_recompile(smollm2, golden_rome, golden_hparams):
    stats, hp = golden_rome["arrays"]["C"], golden_hparams.override(v_num_grad_steps=2)
    edit(smollm2, EIFFEL, hp, stats=stats, progress=False)  # compiled here, or found from earlier tests
    with CompileLog() as log:
        _, undo = edit(smollm2, EIFFEL | {"target_new": "London"}, hp, stats=stats, progress=False)
    assert "jit(optimise_v)" not in log.counts(), log.counts()
    assert undo.edits[0].request.target_new == "London"


def test_targets_of_three_and_four_tokens_share_one_search_program(tiny_lm):
    lm = tiny_lm("llama")
    hp = RomeHparams(layer=1, v_num_grad_steps=2, context_templates=("{}",))
    four = Request("{} is in", "the eiffel tower", "the city of rome")  # prompts of one width: only N differs
    three = Request("{} is in", "the eiffel tower", "the city rome")
    assert [len(target_ids(lm, r)) for r in (four, three)] == [4, 3]
    batch = v_batch(lm, [three], ("{}",), [target_ids(lm, three)], "subject_last")
    assert batch.out_cols.shape[1] == 4 and batch.target_mask.sum(axis=1).tolist() == [3.0, 0.0]
    search(lm, [four], ("{}",), [target_ids(lm, four)], 1, hp)
    with CompileLog() as log:
        search(lm, [three], ("{}",), [target_ids(lm, three)], 1, hp)
    assert "jit(optimise_v)" not in log.counts(), log.counts()


def test_edit_each_and_apply_give_the_same_edit_and_an_exact_undo(smollm2, eiffel_edit, golden_rome, golden_hparams):
    requests = [
        EIFFEL,
        {"prompt": "{} is located in the city of", "subject": "The Space Needle", "target_new": "London"},
    ]
    first, second = rome.edit_each(smollm2, requests, golden_hparams, stats=golden_rome["arrays"]["C"], progress=False)
    edited, undo = rome.apply(smollm2, first)
    # the same request as the shared edit, here searched beside another: equal to float32 rounding
    np.testing.assert_allclose(first.v_star, eiffel_edit[1].edits[0].v_star, rtol=1e-4, atol=1e-4)
    assert int(probs(edited, "The Eiffel Tower is located in the city of").argmax()) == token(smollm2, " Rome")
    chex.assert_trees_all_equal(undo(edited).params, smollm2.params)
    both, undo_both = rome.apply(edited, second)  # the second edit lands on top of the first; undo goes back one
    assert int(probs(both, "The Space Needle is located in the city of").argmax()) == token(smollm2, " London")
    chex.assert_trees_all_equal(undo_both(both).params, edited.params)


def test_sequential_edits_and_r_rome(smollm2, golden_rome, golden_hparams):
    hp = golden_hparams.override(rrome=True)
    requests = [
        EIFFEL,
        {"prompt": "{} is located in the city of", "subject": "The Space Needle", "target_new": "London"},
    ]
    new, undo = edit(smollm2, requests, hp, stats=golden_rome["arrays"]["C"])
    assert len(undo.edits) == 2
    assert int(probs(new, "The Eiffel Tower is located in the city of").argmax()) == token(smollm2, " Rome")
    assert int(probs(new, "The Space Needle is located in the city of").argmax()) == token(smollm2, " London")
    first = undo.edits[0]  # r-ROME: the averaged key itself maps to v*
    np.testing.assert_allclose(first.k, first.k_star)
    kernel = np.asarray(first.old_kernel, np.float64) + np.outer(first.u_hat, first.lam)
    np.testing.assert_allclose(first.k_star @ kernel, first.v_star, rtol=1e-4, atol=1e-4)
    chex.assert_trees_all_equal(undo(new).params, smollm2.params)


# The v* search: the fast program against the straightforward one, at ROME's site (the MLP output) and MEMIT's (the
# residual after the layer), on a tiny model of every family (the two sites differ most on Gemma 2 and 3, whose MLP
# output passes a norm before it joins the residual). One compiled search serves both sites.

FAMILIES = ["gpt2", "gptj", "gpt_neox", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3"]


@pytest.mark.parametrize("site", ["mlp", "resid"])
@pytest.mark.parametrize("name", FAMILIES)
def test_fast_v_search_equals_the_full_forward_version(tiny_lm, name, site):
    lm = tiny_lm(name)
    layer = lm.config.n_layers - 2  # not the last: its output at the subject cannot reach the target tokens
    hp = RomeHparams(layer=layer, context_templates=("{}", "a new {}", "the old big famous {}"), v_num_grad_steps=6)
    req = Request("{} is located in the city of", "the eiffel tower", "rome paris")
    fast = search(lm, [req], hp.context_templates, [target_ids(lm, req)], layer, hp, site=site, fast=True)
    ref = search(lm, [req], hp.context_templates, [target_ids(lm, req)], layer, hp, site=site, fast=False)
    np.testing.assert_allclose(fast[2], ref[2], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(fast[0], ref[0], rtol=1e-3, atol=1e-4)
    assert np.linalg.norm(fast[0]) > 0 and np.isfinite(fast[2][0, :, 0]).all()
    assert fast[2][0, -1, 1] < fast[2][0, 0, 1] - 1e-2  # the search learns: the target's NLL falls


BATCH = [  # prompts, subjects and targets of different lengths, so rows, fact columns and target tokens differ
    Request("{} is located in the city of", "the eiffel tower", "rome paris"),
    Request("{} speaks", "the louvre", "french"),
    Request("the capital of {} is", "italy", "the big old river"),
]


@pytest.mark.parametrize("fast", [True, False])
def test_a_batched_v_search_equals_each_request_searched_alone(tiny_lm, fast):
    """K requests in one program give each request's own search (the rows of the others do not leak in)."""
    lm = tiny_lm("llama")
    hp = RomeHparams(layer=1, context_templates=("{}", "a new {}"), v_num_grad_steps=8, v_lr=2.0)
    ids = [target_ids(lm, r) for r in BATCH]
    together = search(lm, BATCH, hp.context_templates, ids, 1, hp, fast=fast)
    alone = [search(lm, [r], hp.context_templates, [i], 1, hp, fast=fast) for r, i in zip(BATCH, ids, strict=True)]
    for k, one in enumerate(alone):
        np.testing.assert_allclose(together[1][k], one[1][0], rtol=1e-4, atol=1e-5)  # v_init (float32, other shapes)
        np.testing.assert_array_equal(np.isnan(together[2][k]), np.isnan(one[2][0]))  # the same step stops it
        np.testing.assert_allclose(together[2][k], one[2][0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(together[0][k], one[0][0], rtol=1e-3, atol=1e-4)
    split = search(lm, BATCH, hp.context_templates, ids, 1, hp, fast=fast, per_program=2)  # programs of 2 and 1
    np.testing.assert_allclose(split[0], together[0], rtol=1e-3, atol=1e-4)


def test_each_request_of_a_batch_stops_and_is_clamped_on_its_own():
    """adam_search on a small synthetic problem (logits linear in δ): request 0 is easy and stops early, request 1
    runs every step against the clamp; together they equal each searched alone, and NaN marks steps after a stop."""
    rng = np.random.default_rng(0)
    k, d, v, n = 2, 6, 5, 2
    scale = np.array([8.0, 0.3])[:, None, None, None]  # request 0's logits move fast with δ
    weights = jnp.asarray(scale * rng.normal(size=(k, n, v, d)), jnp.float32)
    base = jnp.asarray(rng.normal(size=(k, n, v)), jnp.float32)
    v_init = jnp.asarray(rng.normal(size=(k, d)), jnp.float32)
    hp = Settings(steps=10, lr=0.5, weight_decay=0.01, clamp_norm_factor=2.0, kl_factor=0.0625)

    def problem(rows: list[int]):
        """Rows: one rewriting row and one KL row per request of `rows`."""
        owner = np.repeat(np.arange(len(rows)), 2)
        rewriting = np.tile([True, False], len(rows))
        of = np.arange(len(rows))[:, None] == owner[None]
        batch = SimpleNamespace(  # the fields of a VBatch the objective reads
            targets=jnp.asarray(np.tile([[1, 3]], (2 * len(rows), 1)), jnp.int32),
            target_mask=jnp.asarray(np.outer(rewriting, [1.0, 1.0]), jnp.float32),
            nll_weight=jnp.asarray(of & rewriting, jnp.float32),
            kl_weight=jnp.asarray(of & ~rewriting, jnp.float32),
        )

        def log_probs(delta):
            logits = jnp.einsum("knvd,kd->knv", weights[jnp.array(rows)], delta) + base[jnp.array(rows)]
            rows_logits = jnp.repeat(logits, 2, axis=0)  # the KL reads a much flatter softmax of the same logits
            return jax.nn.log_softmax(rows_logits, axis=-1), jax.nn.log_softmax(rows_logits[:, 0] / 20, axis=-1)

        return adam_search(log_probs, v_init[jnp.array(rows)], batch, hp)

    together = problem([0, 1])
    for r in (0, 1):
        alone = problem([r])
        np.testing.assert_allclose(together[0][r], alone[0][0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(together[1][r], alone[1][0], rtol=1e-5, atol=1e-6)
    ran = np.isfinite(np.asarray(together[1][:, :, 0])).sum(axis=1)
    assert ran[0] < hp.steps and ran[1] == hp.steps, ran
    assert together[1][0, ran[0] - 1, 0] < EARLY_STOP  # the step that stopped it is recorded
    norms = np.linalg.norm(np.asarray(together[0]), axis=-1)
    np.testing.assert_allclose(norms[1], hp.clamp_norm_factor * np.linalg.norm(v_init[1]), rtol=1e-5)


def test_memit_style_search_reads_the_nll_from_an_earlier_layer(tiny_lm):
    lm = tiny_lm("llama")
    hp = RomeHparams(layer=0, context_templates=("{}", "a new {}"), v_num_grad_steps=4)
    req = Request("{} is located in the city of", "the eiffel tower", "rome")
    ids = [target_ids(lm, req)]
    at_1 = search(lm, [req], hp.context_templates, ids, 0, hp, site="resid", nll_layer=1)
    ref = search(lm, [req], hp.context_templates, ids, 0, hp, site="resid", nll_layer=1, fast=False)
    last = search(lm, [req], hp.context_templates, ids, 0, hp, site="resid")
    np.testing.assert_allclose(at_1[2], ref[2], rtol=1e-4, atol=1e-6)
    assert not np.allclose(at_1[2][0, :, 1], last[2][0, :, 1])  # another layer's NLL is another number
    with pytest.raises(ValueError, match="site='key'; accepted: mlp, resid"):
        search(lm, [req], hp.context_templates, ids, 0, hp, site="key")


# Where the key is read: the subject's placeholder, not the first place the subject's words appear.


def test_the_fact_token_is_found_at_the_placeholder(tiny_lm):
    tok = tiny_lm("llama").tokenizer
    assert fact_index(tok, "the eiffel tower is big and {} is located in", "the eiffel tower", "subject_last") == 8
    assert fact_index(tok, "the eiffel tower is big and {} is located in", "the eiffel tower", "subject_first") == 6
    assert fact_index(tok, "{} is located in", "the eiffel tower", "last") == 5
    lm = tiny_lm("llama")
    req = Request("{} is located in", "the eiffel tower", "rome")
    batch = v_batch(lm, [req], ("{}", "the eiffel tower is big and {}"), [target_ids(lm, req)], "subject_last")
    width = batch.ids.shape[1]
    lengths = batch.mask.sum(axis=1)
    assert list(batch.fact_cols - (width - lengths)) == [2, 8, 2]  # the last row is the KL prompt "{} is a"


# Context templates as the originals make them.


def test_rome_templates_are_sampled_from_the_start_token_with_the_originals_length(smollm2):
    assert start_text(smollm2.tokenizer) == "<|endoftext|>"  # one token in SmolLM2's vocabulary, as in GPT-2
    rows = sample_to_length(smollm2, ["<|endoftext|>"] * 3, 5, seed=0)
    assert all(len(r) == 5 and r[0] == 0 for r in rows)  # the start token counts toward the length
    templates = rome_templates(smollm2, ((5, 3), (10, 2)), seed=0)
    assert len(templates) == 6 and templates[0] == "{}"
    assert all(t.endswith(". {}") and t.count("{") == 1 and "<|" not in t for t in templates[1:])
    assert rome_templates(smollm2, ((5, 3), (10, 2)), seed=0) is templates  # cached per model
    assert rome_templates(smollm2, ((5, 3), (10, 2)), seed=1) != templates  # seeded


def test_memit_keys_average_within_each_group_then_over_groups(tiny_lm):
    lm = tiny_lm("llama")
    req = Request("{} is located in", "the eiffel tower", "rome")
    groups = template_groups(("{}", "a new {}", "the old {}", "big {}"))
    assert groups == (("{}",), ("a new {}", "the old {}", "big {}"))
    keys = template_keys(lm, req, ("{}", "a new {}", "the old {}", "big {}"), 1, "subject_last")
    np.testing.assert_allclose(grouped_keys(lm, [req], groups, 1, "subject_last")[0], (keys[0] + keys[1:].mean(0)) / 2)


# Bad input: each a clear error before any work, and the model is left as it was.


@pytest.mark.parametrize(
    ("request_", "hp", "message"),
    [
        (EIFFEL | {"prompt": "The Eiffel Tower is in Paris", "subject": "The Louvre"}, {}, "'The Louvre' is not in"),
        (EIFFEL | {"prompt": "{} is as tall as {}"}, {}, "must contain '{}' exactly once"),
        (EIFFEL | {"target_new": ""}, {}, "the target '' is empty"),
        (EIFFEL | {"target_new": "   "}, {}, "the target '   ' is empty"),
        (EIFFEL, {"layer": 30}, "layer 30 is out of range: this model has layers 0..29"),
        (EIFFEL, {"context_templates": ["no placeholder"]}, "every context template needs one '{}'"),
        ({"prompt": "{} is in", "subject": "x"}, {}, "no 'target_new'"),
    ],
)
def test_bad_requests(smollm2, request_, hp, message):
    before = np.asarray(down_kernel(smollm2.params)[4]).copy()
    with pytest.raises(ValueError, match=message):
        edit(smollm2, request_, {"context_templates": TEMPLATES} | hp, stats=np.eye(1536))
    np.testing.assert_array_equal(np.asarray(down_kernel(smollm2.params)[4]), before)


def test_non_finite_or_singular_statistics(smollm2):
    c = np.eye(1536)
    c[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        edit(smollm2, EIFFEL, {"context_templates": TEMPLATES}, stats=c)
    with pytest.raises(ValueError, match="singular"):
        edit(smollm2, EIFFEL, {"context_templates": TEMPLATES}, stats=np.zeros((1536, 1536)))
    with pytest.raises(ValueError, match=r"shape \(4, 4\); this layer's keys need \(1536, 1536\)"):
        edit(smollm2, EIFFEL, {"context_templates": TEMPLATES}, stats=np.eye(4))


def test_a_model_without_a_preset_needs_a_layer(tiny_lm):
    with pytest.raises(ValueError, match="no ROME layer for .*pass hparams=\\{'layer': N\\}"):
        edit(tiny_lm("llama"), {"prompt": "{} is in", "subject": "the eiffel tower", "target_new": "rome"})


def test_a_prompt_with_the_subject_written_out_is_the_same_request():
    assert Request.parse(EIFFEL | {"prompt": "The Eiffel Tower is located in the city of"}) == Request.parse(EIFFEL)


@pytest.mark.slow
def test_an_edit_says_what_its_slow_steps_do_unless_asked_not_to(smollm2, capsys):
    request = {"prompt": "{} is located in the city of", "subject": "The Eiffel Tower", "target_new": "Rome"}
    small = {
        "mom2_n_tokens": 1000,
        "mom2_regularize": 1e-3,
        "context_template_length_params": [[5, 2]],
        "v_num_grad_steps": 2,
    }
    edit(smollm2, request, small, seed=7)
    said = capsys.readouterr().err
    assert "key statistics, layer 4 (cached for next time)" in said
    assert "sampling 2 ROME context templates from the model" in said and "ROME v* search at layer 4" in said
    rome_templates(smollm2, [[5, 2]], seed=8, progress=False)  # new templates
    templates = rome_templates(smollm2, [[5, 2]], seed=7)
    edit(smollm2, request, small | {"mom2_n_tokens": 900, "context_templates": templates}, progress=False)  # new C
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("target", "message"),
    [(["Rome"], r"target_new must be text such as 'Rome' .*got \['Rome'\]"), (None, "target_new must be text")],
)
def test_a_target_that_is_not_text_is_named(target, message):
    with pytest.raises(ValueError, match=message):
        Request.parse(EIFFEL | {"target_new": target})


def test_a_counterfact_record_is_a_request_and_a_trailing_space_is_refused():
    record = {
        "case_id": 0,
        "requested_rewrite": {"prompt": "{} is located in the city of", "subject": "The Eiffel Tower",
                              "target_new": {"str": "Rome", "id": "Q220"}, "target_true": {"str": "Paris"}},
        "paraphrase_prompts": ["The Eiffel Tower is in the heart of"],
    }  # fmt: skip
    assert Request.parse(record) == Request.parse(EIFFEL)
    with pytest.raises(ValueError, match="ends with whitespace"):
        Request.parse(EIFFEL | {"prompt": "{} is located in the city of "})
    with pytest.warns(UserWarning, match="subject 'the tower' occurs 2 times"):
        assert Request.parse({"prompt": "the tower by the tower is in", "subject": "the tower", "target_new": "x"}).prompt == "{} by the tower is in"  # fmt: skip


def test_undo_refuses_a_model_edited_again_since_or_of_another_dtype(tiny_lm):
    lm = tiny_lm("llama")
    hp = RomeHparams(layer=1, context_templates=("{}", "a new {}"), v_num_grad_steps=3, mom2_adjustment=False)
    first = {"prompt": "{} is located in the city of", "subject": "the eiffel tower", "target_new": "rome"}
    a, undo_a = edit(lm, first, hp, progress=False)
    ab, undo_b = edit(a, first | {"subject": "the louvre", "target_new": "seattle"}, hp, progress=False)
    with pytest.raises(ValueError, match="layer 1 is not what this edit produced .* undo the later edits first"):
        undo_a(ab)
    with pytest.raises(ValueError, match="layer 1 is not what this edit produced"):
        undo_a(lm)  # never edited
    back = undo_a(undo_b(ab))  # newest first: exact
    chex.assert_trees_all_equal(back.params, lm.params)
    half = a.replace(params=jax.tree.map(lambda x: x.astype(jnp.bfloat16), a.params))
    with pytest.raises(ValueError, match="this undo holds float32 weights; the model's are bfloat16"):
        undo_a(half)


def bos_tokenizer():
    """The tiny word-level tokenizer with a start token it adds itself, as Llama's does."""
    from conftest import WORDS
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<pad>": 1, "<s>": 2} | {w: i + 3 for i, w in enumerate(WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", bos_token="<s>")


def test_a_tokenizer_that_adds_its_start_token_gets_one(tiny_dir):
    lm = jrome.load(tiny_dir("llama"), tokenizer=bos_tokenizer())
    assert start_text(lm.tokenizer) == "<s>" and lm.tokenizer("<s>")["input_ids"] == [2, 2]  # what went wrong
    ids, _ = jrome.encode(lm.tokenizer, ["<s>", "the tower"])
    assert ids[0, -1] == 2 and ids[0, -2] != 2 and list(ids[1, -3:]) == [2, 3, 5]  # one start token each
    assert all(len(row) == 5 and row[0] == 2 and 2 not in row[1:] for row in sample_to_length(lm, ["<s>"] * 3, 5))
    templates = rome_templates(lm, ((5, 3),), seed=3)
    assert len(templates) == 4 and not any("<s>" in t for t in templates), templates
    prompt = lm.tokenizer(templates[1].format("the eiffel tower is in"))["input_ids"]
    assert prompt[0] == 2 and 2 not in prompt[1:]  # the v* and key prompts begin with one start token
