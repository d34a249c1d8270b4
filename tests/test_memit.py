"""MEMIT: many facts in one batch edit, spread over several layers."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jrome.editing import MemitHparams, key_statistics, load_preset, memit
from jrome.evaluation import load_dataset
from jrome.evaluation.metrics import counterfact_scores, score_targets

TEMPLATES = ("{}", "I read it in a book. {}", "Because of that, {}")


@pytest.fixture(scope="module")
def batch(smollm2):
    cases = load_dataset("counterfact")[:10]
    hp = load_preset("smollm2", "memit").override(context_templates=TEMPLATES)
    stats = key_statistics(smollm2, hp.layers, n_tokens=20_000, progress=False)
    new, undo = memit.edit(smollm2, [c.request for c in cases], hp, stats)
    return cases, new, undo


def test_ten_facts_in_one_batch(smollm2, batch):
    cases, new, _ = batch
    before = [counterfact_scores(smollm2, c) for c in cases]
    after = [counterfact_scores(new, c) for c in cases]
    assert np.mean([a["efficacy_score"] for a in after]) >= 0.8
    for b, a in zip(before, after, strict=True):  # every edited fact moved towards its new object
        assert a["efficacy_magnitude"] > b["efficacy_magnitude"]


def test_a_fact_outside_the_batch_keeps_its_answer(smollm2, batch):
    cases, new, _ = batch
    prompt = ["The Eiffel Tower is located in the city of"]
    (before,), _ = score_targets(smollm2, prompt, ["Paris"])
    (after,), (still_top,) = score_targets(new, prompt, ["Paris"])
    assert still_top == 1.0
    edited = ([c.request.text for c in cases], [c.request.target_new for c in cases])
    gain = np.exp(score_targets(new, *edited)[0]) - np.exp(score_targets(smollm2, *edited)[0])
    assert abs(np.exp(after) - np.exp(before)) < 0.1 * gain.mean()  # the edits moved their facts 10x more


def test_every_layer_changes_and_undo_restores_them_exactly(smollm2, batch):
    _, new, undo = batch
    kernels = new.params["blocks"]["mlp"]["down"]["kernel"]
    base = smollm2.params["blocks"]["mlp"]["down"]["kernel"]
    changed = [layer for layer in range(30) if not np.array_equal(np.asarray(kernels[layer]), np.asarray(base[layer]))]
    assert changed == [1, 2, 3, 4] == [u.layer for u in undo.edits]
    for a, b in zip(jax.tree.leaves(undo(new).params), jax.tree.leaves(smollm2.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bad_input(smollm2):
    request = {"prompt": "{} is located in", "subject": "The Eiffel Tower", "target_new": "Rome"}
    with pytest.raises(ValueError, match="layers must be distinct and increasing"):
        MemitHparams(layers=(3, 2))
    with pytest.raises(ValueError, match=r"layers \[40\] are out of range"):
        memit.edit(smollm2, [request], {"layers": [3, 40]})
    with pytest.raises(ValueError, match="repeat a subject"):
        memit.edit(smollm2, [request, request | {"target_new": "London"}], {"context_templates": TEMPLATES})
