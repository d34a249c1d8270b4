"""MEMIT: many facts in one batch edit, spread over several layers, with MEMIT's own templates and key averaging."""

from __future__ import annotations

import chex
import numpy as np
import pytest
from conftest import data_file, one_worker

from jrome.editing import MemitHparams, key_statistics, load_preset, memit
from jrome.editing.templates import MEMIT_STARTERS
from jrome.editing.undo import down_kernel
from jrome.evaluation import load_dataset
from jrome.evaluation.metrics import score_targets

pytestmark = one_worker(__name__)  # its module-scoped fixture is computed once


@pytest.fixture(scope="module")
def batch(smollm2):
    cases = load_dataset(data_file("counterfact/counterfact-edit.json"))[:10]
    hp = load_preset("smollm2", "memit")
    stats = key_statistics(smollm2, hp.layers, n_tokens=20_000, progress=False)  # the preset's 100 000 take minutes
    new, undo = memit.edit(smollm2, [c.request for c in cases], hp, stats)
    return cases, new, undo, stats


def success(lm, cases, prompts, answers):
    """Share of prompts after which answers[0] (the new objects) is more likely than answers[1]."""
    a = score_targets(lm, prompts, answers[0])[0]
    b = score_targets(lm, prompts, answers[1])[0]
    return float(np.mean(a > b))


def test_ten_facts_in_one_batch_take_their_new_objects(smollm2, batch):
    cases, new, *_ = batch
    prompts = [c.request.text for c in cases]
    answers = ([c.request.target_new for c in cases], [c.target_true for c in cases])
    assert success(smollm2, cases, prompts, answers) <= 0.3
    assert success(new, cases, prompts, answers) >= 0.9


def test_neighbours_keep_their_answers(smollm2, batch):
    cases, new, *_ = batch
    prompts = [p for c in cases for p in c.neighborhood_prompts]
    answers = ([a for c in cases for a in c.neighborhood_answers], [c.request.target_new for c in cases])
    assert success(new, cases, prompts, answers) >= success(smollm2, cases, prompts, answers) - 0.1


def test_every_edited_layer_changes_and_nothing_else_and_undo_is_exact(smollm2, batch):
    _, new, undo, _ = batch
    kernels, base = down_kernel(new.params), down_kernel(smollm2.params)
    changed = [layer for layer in range(30) if not np.array_equal(np.asarray(kernels[layer]), np.asarray(base[layer]))]
    assert changed == list(load_preset("smollm2", "memit").layers) == [u.layer for u in undo.edits]
    assert undo.edits[0].losses.shape[:1] == (10,) and undo.edits[0].losses.shape[2] == 4  # every fact's v* search
    chex.assert_trees_all_equal(undo(new).params, smollm2.params)


def test_a_one_fact_edit_is_rank_one_per_layer_and_its_factors_give_the_same_model(smollm2, batch):
    cases, _, undo, stats = batch
    hp = load_preset("smollm2", "memit")
    z = undo.edits[0].targets[:1]  # the first fact's target from the batch's search: spread it alone
    new, one = memit.spread(smollm2, [cases[0].request], z, hp, stats, memit.context_groups(smollm2, hp))
    factors = memit.rank_one(one)
    assert factors.layers == hp.layers and factors.u.shape == (5, 1536) and factors.lam.shape == (5, 576)
    rebuilt = down_kernel(factors.apply(smollm2).params)
    for layer in range(30):
        expected = np.asarray(down_kernel(new.params)[layer])
        np.testing.assert_allclose(np.asarray(rebuilt[layer]), expected, rtol=0, atol=1e-6 * np.abs(expected).max())
    assert np.abs(np.asarray(down_kernel(new.params)[1] - down_kernel(smollm2.params)[1])).max() > 1e-4
    with pytest.raises(ValueError, match="an edit of N facts has rank N"):
        memit.rank_one(undo)


def test_memit_groups_are_the_originals(smollm2):
    groups = memit.context_groups(smollm2, load_preset("smollm2", "memit"))
    assert groups[0] == ("{}",) and len(groups[1]) == 5
    assert all(t.startswith(starter) for t, starter in zip(groups[1], MEMIT_STARTERS, strict=True)), groups[1]
    assert all(t.endswith(". {}") for t in groups[1])


def test_bad_input(smollm2):
    request = {"prompt": "{} is located in", "subject": "The Eiffel Tower", "target_new": "Rome"}
    with pytest.raises(ValueError, match="layers must be distinct and increasing"):
        MemitHparams(layers=(3, 2))
    with pytest.raises(ValueError, match=r"layers \[40\] are out of range"):
        memit.edit(smollm2, [request], {"layers": [3, 40]})
    with pytest.raises(ValueError, match="repeat a subject"):
        memit.edit(smollm2, [request, request | {"target_new": "London"}], {"context_templates": ["{}", "A. {}"]})
    with pytest.raises(ValueError, match="stats has no statistics for layers"):
        memit.edit(smollm2, [request], {"layers": [3, 4]}, stats={3: None})
