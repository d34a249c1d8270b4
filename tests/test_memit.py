"""MEMIT and AlphaEdit: the same numbers as the originals' code (tests/golden, made by make_memit_alphaedit.py), many
facts in one batch edit spread over several layers, MEMIT's own templates and key averaging."""

from __future__ import annotations

import json
from pathlib import Path

import chex
import numpy as np
import pytest
from conftest import data_file, one_worker

from jrome.editing import MemitHparams, alphaedit, key_statistics, load_preset, memit
from jrome.editing.hparams import AlphaEditHparams
from jrome.editing.requests import Request
from jrome.editing.templates import MEMIT_STARTERS
from jrome.editing.undo import down_kernel
from jrome.evaluation import load_dataset
from jrome.evaluation.metrics import score_targets, token_scores

pytestmark = one_worker(__name__)  # its module-scoped fixtures are computed once

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="module")
def golden() -> dict:
    """The originals' inputs and settings (golden.json); their outputs are in the .npz files (`outputs`)."""
    return json.loads((GOLDEN / "golden.json").read_text())


def outputs(method: str) -> dict[str, np.ndarray]:
    with np.load(GOLDEN / f"{method}_smollm2.npz") as arrays:
        return {k: arrays[k] for k in arrays.files}


@pytest.fixture(scope="module")
def batch(smollm2, golden):
    """The golden MEMIT edit: records 0-9, the preset (layers 1-5), the golden's templates, C over 20,000 tokens."""
    cases = load_dataset(data_file("counterfact/counterfact-edit.json"))[:10]
    hp = load_preset("smollm2", "memit").override(context_templates=golden["templates"])
    stats = key_statistics(smollm2, (1, 2, 3, 4, 5), n_tokens=golden["n_tokens"], progress=False)
    new, undo = memit.edit(smollm2, [c.request for c in cases], hp, stats)
    return cases, new, undo, stats


def relative(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def check_nlls(lm, requests: list[dict]) -> np.ndarray:
    """[requests, 3, 2]: the mean NLL of each golden check pair (as the golden script computes it)."""
    pairs = [(p, a) for r in requests for p, *answers in r["checks"] for a in answers]
    log_probs, _ = token_scores(lm, [p for p, _ in pairs], [a for _, a in pairs])
    return np.array([-lp.mean() for lp in log_probs]).reshape(len(requests), 3, 2)


def test_memit_equals_the_original(smollm2, batch, golden):
    _, new, undo, _ = batch
    arrays = outputs("memit")
    assert relative(undo.edits[0].targets, arrays["z"]) < 1e-4
    for u in undo.edits:  # ΔW = (λC + KKᵀ)⁻¹K · R at each layer
        assert relative(u.left @ u.share, arrays[f"left{u.layer}"] @ arrays[f"right{u.layer}"]) < 1e-4, u.layer
    requests = golden["requests"][:10]
    np.testing.assert_allclose(check_nlls(smollm2, requests), arrays["nll_before"], atol=1e-4)
    np.testing.assert_allclose(check_nlls(new, requests), arrays["nll_after"], atol=1e-3)


def test_alphaedit_equals_the_original(smollm2, batch, golden):
    """Two AlphaEdit batches (records 0-9, then 10-13) at layers 3-5: P, each update, the cache of earlier keys, the
    NLLs after each. The first batch's targets z are the MEMIT fixture's (the same search: same layer, model, v*)."""
    _, _, undo, stats = batch
    arrays, hp = outputs("alphaedit"), AlphaEditHparams.from_dict(golden["alphaedit"]["hparams"])
    hp = hp.override(context_templates=golden["templates"])
    p = alphaedit.null_spaces(stats, hp)
    assert [round(np.trace(x)) for x in p] == list(arrays["p_rank"])
    probes = np.random.RandomState(0).randn(1536, 8)
    assert relative(p @ probes, arrays["p_probes"]) < 1e-4
    groups = memit.context_groups(smollm2, hp)
    first = [Request.parse(r) for r in golden["requests"][:10]]
    z = undo.edits[0].targets
    assert relative(z, arrays["z"][:10]) < 1e-4
    lm, cache = smollm2, alphaedit.empty_cache(p)
    for b, requests in enumerate((first, golden["requests"][10:14])):
        if b == 0:
            lm, step = memit.spread(lm, requests, z, hp, alphaedit.alpha_solve(hp, p, cache), groups)
            cache = cache + np.stack([u.keys.T @ u.keys for u in step.edits])
        else:
            lm, step, cache = alphaedit.edit(lm, requests, hp, projections=p, cache=cache, progress=False)
            assert relative(step.edits[0].targets, arrays["z"][10:]) < 1e-4
        for u in step.edits:
            assert relative(u.left @ u.share, arrays[f"left{b}_{u.layer}"] @ arrays[f"right{b}_{u.layer}"]) < 1e-4
        assert relative(cache @ probes, arrays[f"cache_probes{b}"]) < 1e-4
        np.testing.assert_allclose(check_nlls(lm, golden["requests"][:14]), arrays[f"nll_after{b}"], atol=1e-3)


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
    solve = memit.memit_solve(hp, stats)
    new, one = memit.spread(smollm2, [cases[0].request], z, hp, solve, memit.context_groups(smollm2, hp))
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
    with pytest.raises(ValueError, match="stats has no statistics for layers"):
        memit.edit(smollm2, [request], {"layers": [3, 4]}, stats={3: None})
