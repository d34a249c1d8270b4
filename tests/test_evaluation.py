"""Evaluation: metrics on hand-made numbers, dataset formats, baselines, and the resumable runner on SmolLM2."""

from __future__ import annotations

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest

import jrome.evaluation.runner as runner
from jrome.editing.baselines import FTHparams, finetune
from jrome.evaluation import load_dataset, ngram_entropy, run_eval, score_targets, tfidf_similarity
from jrome.evaluation.datasets import parse_counterfact, parse_zsre
from jrome.evaluation.metrics import compare, target_totals

ORIGINAL = {
    "case_id": 7,
    "requested_rewrite": {
        "prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux",
        "target_new": {"str": "English", "id": "Q1860"}, "target_true": {"str": "French", "id": "Q150"},
    },
    "paraphrase_prompts": ["Danielle Darrieux spoke", "Danielle Darrieux's first language is"],
    "neighborhood_prompts": ["Michel Rocard is a native speaker of", "Jean Gabin's mother tongue is"],
    "attribute_prompts": ["J.R.R. Tolkien is a native speaker of"],
    "generation_prompts": ["Danielle Darrieux's mother tongue is"],
}  # fmt: skip


def test_target_log_probs_and_token_accuracy_on_hand_made_logits():
    logits = jnp.log(jnp.array([[[0.1, 0.6, 0.3], [0.5, 0.25, 0.25]], [[0.2, 0.2, 0.6], [0.9, 0.05, 0.05]]]))
    targets = jnp.array([[1, 2], [0, 0]])
    valid = jnp.array([[True, True], [True, False]])
    total, hits = target_totals(logits, targets, valid)
    np.testing.assert_allclose(np.asarray(total), [math.log(0.6) + math.log(0.25), math.log(0.2)], rtol=1e-6)
    assert np.asarray(hits).tolist() == [1, 0]


def test_scores_and_magnitudes_on_hand_made_log_probs():
    new, true = np.log([0.5, 0.1, 0.3]), np.log([0.2, 0.4, 0.3])
    score, magnitude = compare(new, true)
    assert score == pytest.approx(1 / 3) and magnitude == pytest.approx((0.3 - 0.3 + 0.0) / 3)


def test_fluency_and_consistency_on_hand_made_texts():
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert ngram_entropy("a b a b") == pytest.approx((2 / 3 * h2 + 4 / 3 * 1.0) / 2)
    assert ngram_entropy("a a a a a") == 0.0
    assert tfidf_similarity(["the tower in rome"], ["the tower in rome"]) == pytest.approx(1.0)
    assert tfidf_similarity(["paris france"], ["rome italy"]) == 0.0


def test_score_targets_matches_a_plain_forward(smollm2):
    import jax

    import jrome

    lp, acc = score_targets(smollm2, ["The Eiffel Tower is located in the city of"] * 2, ["Paris", "Rome"])
    ids, mask = jrome.encode(smollm2.tokenizer, ["The Eiffel Tower is located in the city of"])
    probs = jax.nn.softmax(jrome.forward(smollm2, ids, mask, logits_at="last").logits[0, -1])
    paris, rome = smollm2.tokenizer(" Paris")["input_ids"][0], smollm2.tokenizer(" Rome")["input_ids"][0]
    np.testing.assert_allclose(np.exp(lp), [probs[paris], probs[rome]], rtol=1e-4)
    assert acc.tolist() == [1.0, 0.0]


def test_both_counterfact_formats_and_zsre_parse_into_one_record_type():
    (case,) = parse_counterfact([ORIGINAL])
    assert case.request.text == "The mother tongue of Danielle Darrieux is" and case.target_true == "French"
    assert case.request.target_new == "English" and len(case.neighborhood_prompts) == case.neighborhood_answers.count(
        "French"
    )
    compact = load_dataset("counterfact")[0]
    assert (compact.request.subject, compact.target_true, compact.request.target_new) == (
        "Danielle Darrieux",
        "French",
        "English",
    )
    zsre = load_dataset("zsre")[0]
    assert (
        zsre.request.text == "What is the product made by UniFirst?" and zsre.request.target_new == "unmanned aircraft"
    )
    assert zsre.neighborhood_prompts[0].endswith("big lebowski?") and zsre.neighborhood_answers == ("Walter Sobchak",)


def test_fine_tuning_raises_the_target_and_ft_l_keeps_the_change_bounded(smollm2):
    request = {"prompt": "{} is located in the city of", "subject": "The Eiffel Tower", "target_new": "Rome"}
    before = score_targets(smollm2, ["The Eiffel Tower is located in the city of"], ["Rome"])[0][0]
    ft, losses = finetune(smollm2, request, FTHparams(layer=4))
    assert (
        losses[-1] < losses[0]
        and score_targets(ft, ["The Eiffel Tower is located in the city of"], ["Rome"])[0][0] > before
    )
    ftl, _ = finetune(smollm2, request, FTHparams(layer=4, linf_bound=5e-4))
    change = np.asarray(
        ftl.params["blocks"]["mlp"]["down"]["kernel"][4] - smollm2.params["blocks"]["mlp"]["down"]["kernel"][4]
    )
    assert 0 < np.abs(change).max() <= 5e-4 + 1e-7


def mean_from_file(path, when, metric):
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return np.mean([r[when][metric] for r in records])


@pytest.mark.parametrize("dataset", ["counterfact", "zsre"])
def test_rome_runner_end_to_end(smollm2, tmp_path, dataset):
    summary = run_eval(
        smollm2, "rome", dataset, 3, tmp_path, hparams={"mom2_n_tokens": 20_000}, generation_tokens=10, progress=False
    )
    assert summary["n"] == 3 and (tmp_path / "summary.md").read_text().startswith("### rome on")
    saved = json.loads((tmp_path / "summary.json").read_text())
    for metric, values in saved["metrics"].items():
        for when, m in values.items():
            assert m["mean"] == pytest.approx(mean_from_file(tmp_path / "cases.jsonl", when, metric))
    first = "efficacy_score" if dataset == "counterfact" else "edit_accuracy"
    assert saved["metrics"][first]["post"]["mean"] > saved["metrics"][first]["pre"]["mean"]
    assert json.loads((tmp_path / "context.json").read_text())["rome"]["context_templates"][0] == "{}"


def test_an_interrupted_run_resumes_without_redoing_finished_cases(smollm2, tmp_path, monkeypatch):
    run_eval(smollm2, "ft", "counterfact", 3, tmp_path, generation_tokens=0, progress=False)
    lines = (tmp_path / "cases.jsonl").read_text().splitlines()
    (tmp_path / "cases.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:20])
    calls = []
    real = runner.METHODS["ft"]
    monkeypatch.setitem(runner.METHODS, "ft", lambda lm, case, ctx: calls.append(case.case_id) or real(lm, case, ctx))
    summary = run_eval(smollm2, "ft", "counterfact", 3, tmp_path, generation_tokens=0, progress=False)
    assert calls == [json.loads(lines[2])["case_id"]] and summary["n"] == 3


def test_bad_input(smollm2, tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'wikidata'; known datasets: counterfact, zsre"):
        run_eval(smollm2, "none", "wikidata", 1, progress=False)
    with pytest.raises(ValueError, match="unknown method 'memit2'; known methods: none, rome, ft, ft-l, memit"):
        run_eval(smollm2, "memit2", "counterfact", 1, progress=False)
    bad = dict(ORIGINAL, requested_rewrite={k: v for k, v in ORIGINAL["requested_rewrite"].items() if k != "subject"})
    (tmp_path / "bad.json").write_text(json.dumps([ORIGINAL, bad]))
    with pytest.raises(ValueError, match="record 1 is malformed: it has no field 'subject'"):
        run_eval(smollm2, "none", tmp_path / "bad.json", 1, progress=False)
    with pytest.raises(ValueError, match="record 0 is malformed: it has no field 'loc_ans'"):
        parse_zsre([{"subject": "a", "src": "a?", "alt": "b", "answers": ["c"], "rephrase": "a", "loc": "q"}])


def test_n_larger_than_the_dataset_runs_what_there_is(smollm2, tmp_path, capsys):
    (tmp_path / "two.json").write_text(json.dumps([ORIGINAL, dict(ORIGINAL, case_id=8)]))
    summary = run_eval(smollm2, "none", tmp_path / "two.json", 5, generation_tokens=0, progress=False)
    assert summary["n"] == 2 and "n=5 is larger than the dataset (2 cases); running all 2" in capsys.readouterr().out
