"""Evaluation as the original computes it: metrics on hand-made numbers, words, TF-IDF on tiny files, dataset
formats, the fine-tuning baselines, each method's context, and the resumable runner on SmolLM2."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import data_file

import jrome
import jrome.evaluation.methods as methods
from jrome.editing.baselines import FTHparams, finetune, ft_hparams_for
from jrome.evaluation import load_dataset, ngram_entropy, run_eval, score_targets, word_tokenize
from jrome.evaluation.consistency import Vectorizer, load_references, tfidf_similarity
from jrome.evaluation.datasets import parse_counterfact, parse_zsre
from jrome.evaluation.fluency import generation_entropy
from jrome.evaluation.metrics import counterfact_case_scores, target_token_scores, zsre_case_scores, zsre_correct
from jrome.evaluation.summary import summarise
from jrome.generation import sample_to_length, tidy

ORIGINAL = {
    "case_id": 7,
    "requested_rewrite": {
        "prompt": "The mother tongue of {} is", "relation_id": "P103", "subject": "Danielle Darrieux",
        "target_new": {"str": "English", "id": "Q1860"}, "target_true": {"str": "French", "id": "Q150"},
    },
    "paraphrase_prompts": ["Danielle Darrieux spoke", "Danielle Darrieux's first language is"],
    "neighborhood_prompts": ["Michel Rocard is a native speaker of", "Jean Gabin's mother tongue is"],
    "attribute_prompts": ["J.R.R. Tolkien is a native speaker of"],
    "generation_prompts": ["Danielle Darrieux's mother tongue is", "Where Danielle Darrieux is from, people speak"],
}  # fmt: skip
ZSRE = {
    "subject": "UniFirst", "src": "What is the product made by UniFirst?", "rephrase": "What does UniFirst make?",
    "alt": "unmanned aircraft", "answers": ["uniform"], "loc": "nq question: who wrote the odyssey", "loc_ans": "Homer",
}  # fmt: skip
EIFFEL = {"prompt": "{} is located in the city of", "subject": "The Eiffel Tower", "target_new": "Rome"}


def test_target_token_scores_on_hand_made_logits():
    logits = jnp.log(jnp.array([[[0.1, 0.6, 0.3], [0.5, 0.25, 0.25]], [[0.2, 0.2, 0.6], [0.9, 0.05, 0.05]]]))
    log_probs, hits = target_token_scores(logits, jnp.array([[1, 2], [0, 0]]))
    np.testing.assert_allclose(np.asarray(log_probs), np.log([[0.6, 0.25], [0.2, 0.9]]), rtol=1e-6)
    assert np.asarray(hits).tolist() == [[True, False], [False, True]]


def test_counterfact_case_scores_follow_the_original_summarize():
    nlls = {
        "rewrite": [{"target_new": 0.5, "target_true": 1.0}],
        "paraphrase": [{"target_new": 2.0, "target_true": 1.0}, {"target_new": 1.0, "target_true": 1.0}],  # a tie fails
        "neighborhood": [{"target_new": 3.0, "target_true": 1.0}, {"target_new": 1.0, "target_true": 3.0}],
    }
    s = counterfact_case_scores(nlls)
    assert (s["efficacy_score"], s["paraphrase_score"], s["neighborhood_score"]) == (1.0, 0.0, 0.5)
    assert s["efficacy_magnitude"] == pytest.approx(math.exp(-0.5) - math.exp(-1.0))
    assert s["paraphrase_magnitude"] == pytest.approx((math.exp(-2.0) - math.exp(-1.0)) / 2)
    assert s["neighborhood_magnitude"] == pytest.approx(0.0, abs=1e-12)
    assert counterfact_case_scores({"rewrite": [{"target_new": 1.0, "target_true": 1.0}]}) == {
        "efficacy_score": 0.0, "efficacy_magnitude": 0.0,
    }  # fmt: skip


def test_zsre_case_scores_are_token_means():
    s = zsre_case_scores({"rewrite": [True, False, True, True], "paraphrase": [False, False], "neighborhood": [True]})
    assert s == {"edit_accuracy": 0.75, "paraphrase_accuracy": 0.0, "neighborhood_accuracy": 1.0}


def test_summary_means_intervals_and_harmonic_score():
    es, ps, ns = [1.0, 0.0, 1.0, 1.0], [0.5, 0.5, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0]
    records = [
        {"pre": {"efficacy_score": 0.0, "paraphrase_score": p, "neighborhood_score": n},
         "post": {"efficacy_score": e, "paraphrase_score": p, "neighborhood_score": n}, "seconds": {"edit": 1, "score": 2}}
        for e, p, n in zip(es, ps, ns, strict=True)
    ]  # fmt: skip
    summary = summarise(records, "counterfact")
    m = summary["metrics"]
    assert list(m) == ["S", "ES", "PS", "NS"]
    assert (m["ES"]["post"]["mean"], m["PS"]["post"]["mean"], m["NS"]["post"]["mean"]) == (0.75, 0.5, 0.75)
    assert m["PS"]["post"]["ci95"] == pytest.approx(1.96 * math.sqrt(((0.5 - 0.5) ** 2 * 2 + 0.25 + 0.25) / 3) / 2)
    assert m["S"]["post"]["mean"] == pytest.approx(3 / (1 / 0.75 + 1 / 0.5 + 1 / 0.75))
    assert m["S"]["pre"]["mean"] == 0.0  # an efficacy of 0 makes the harmonic mean 0
    zsre = [{"pre": {"edit_accuracy": 0.5, "paraphrase_accuracy": 0.25, "neighborhood_accuracy": 1.0},
             "post": {"edit_accuracy": 1.0, "paraphrase_accuracy": 0.5, "neighborhood_accuracy": 1.0},
             "seconds": {"edit": 1, "score": 2}}]  # fmt: skip
    z = summarise(zsre, "zsre")["metrics"]
    assert list(z) == ["S", "efficacy", "paraphrase", "specificity"]
    assert z["S"]["post"]["mean"] == pytest.approx(3 / (1 + 2 + 1)) and z["efficacy"]["post"]["ci95"] is None


def test_words_follow_nltk_treebank_rules():
    # Expected outputs are nltk.word_tokenize's (NLTK 3.6.5).
    assert word_tokenize('He said, "I can\'t go." Then he left...') == [
        "He", "said", ",", "``", "I", "ca", "n't", "go", ".", "''", "Then", "he", "left", "...",
    ]  # fmt: skip
    assert word_tokenize("Don't stop; it's 3:30pm & we're (almost) there -- right? Yes!") == [
        "Do", "n't", "stop", ";", "it", "'s", "3:30pm", "&", "we", "'re", "(", "almost", ")", "there", "--", "right",
        "?", "Yes", "!",
    ]  # fmt: skip
    assert word_tokenize("I wanna go. Gimme that, cannot.") == [
        "I", "wan", "na", "go", ".", "Gim", "me", "that", ",", "can", "not", ".",
    ]  # fmt: skip
    assert word_tokenize("Price: $5,000.00 for “Smart” [ref]") == [
        "Price", ":", "$", "5,000.00", "for", "“", "Smart", "”", "[", "ref", "]",
    ]  # fmt: skip


def test_sentences_end_at_periods_but_not_after_abbreviations_or_initials():
    assert word_tokenize("Hello world. It works. Done") == ["Hello", "world", ".", "It", "works", ".", "Done"]
    assert word_tokenize("Mr. Smith met J. Jones at 5 p.m. on Jan. 5.") == [
        "Mr.", "Smith", "met", "J.", "Jones", "at", "5", "p.m.", "on", "Jan.", "5", ".",
    ]  # fmt: skip


def test_ngram_entropy_in_bits_without_lowercasing():
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))  # bigrams (a b) x2, (b a) x1; trigrams: two, once each
    assert ngram_entropy("a b a b") == pytest.approx((2 / 3 * h2 + 4 / 3 * 1.0) / 2)
    assert ngram_entropy("x X x X") == pytest.approx((2 / 3 * h2 + 4 / 3 * 1.0) / 2)  # case matters
    assert ngram_entropy("a a a a a") == 0.0 and ngram_entropy("word") == 0.0
    assert generation_entropy(["a b a b", "a a a a a"]) == pytest.approx((2 / 3 * h2 + 4 / 3) / 4)
    assert tidy("A\n\nB<|endoftext|> C") == "A B C"


def write_tfidf_files(folder):
    """A tiny vocabulary and idf in the published format, and snippets for (P103, Q1860)."""
    (folder / "tfidf_vocab.json").write_text(json.dumps({"rome": 0, "italy": 1, "capital": 2, "city": 3}))
    np.save(folder / "idf.npy", np.array([1.0, 2.0, 1.5, 3.0]))
    samples = [{"name": "X", "text": "Italy's capital is Rome."}, {"name": "Y", "text": "A city in Italy"}]
    (folder / "attribute_snippets.json").write_text(json.dumps([{"relation_id": "P103", "target_id": "Q1860", "samples": samples}]))  # fmt: skip


def test_tfidf_consistency_on_tiny_published_format_files(tmp_path):
    write_tfidf_files(tmp_path)
    refs = load_references(tmp_path)
    # "Rome is the capital city." + "Rome!": rome 2, capital 1, city 1 -> tf-idf (2, 0, 1.5, 3)
    # snippets joined: rome 1, italy 2 ("Italy's" gives "italy"), capital 1, city 1 -> (1, 4, 1.5, 3)
    want = (2 * 1 + 1.5 * 1.5 + 3 * 3) / math.sqrt((4 + 2.25 + 9) * (1 + 16 + 2.25 + 9))
    assert refs.score(["Rome is the capital city.", "Rome!"], "P103", "Q1860") == pytest.approx(want, rel=1e-12)
    np.testing.assert_allclose(refs.vectorizer.transform("CITY city a"), [0, 0, 0, 1.0])
    assert math.isnan(tfidf_similarity("nothing known", "rome", refs.vectorizer))
    with pytest.raises(ValueError, match="no attribute snippets for relation 'P103' and object 'Q150'"):
        refs.score(["Rome"], "P103", "Q150")
    with pytest.raises(ValueError, match="vocabulary has columns up to 3 but idf has 2"):
        Vectorizer({"a": 3}, np.ones(2))
    (tmp_path / "idf.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"^idf.npy not in"):
        load_references(tmp_path)


def test_datasets_read_as_the_original_reads_them():
    (case,) = parse_counterfact([ORIGINAL])
    assert case.request.text == "The mother tongue of Danielle Darrieux is" and case.target_true == "French"
    assert case.neighborhood_answers == ("French", "French") and (case.relation_id, case.target_new_id) == (
        "P103",
        "Q1860",
    )
    compact = load_dataset("counterfact")[0]
    assert (compact.request.subject, compact.target_true, compact.request.target_new) == (
        "Danielle Darrieux",
        "French",
        "English",
    )
    assert compact.generation_prompts == () and compact.relation_id is None
    (z,) = parse_zsre([ZSRE])
    assert z.request.target_new == "uniform" and z.target_true is None  # the edit goes to answers[0], not alt
    assert z.neighborhood_prompts == ("nq question: who wrote the odyssey?",) and z.neighborhood_answers == ("Homer",)
    assert load_dataset("zsre")[0].request.text == "What is the product made by UniFirst?"


def test_score_targets_matches_a_plain_forward(smollm2):
    lp, acc = score_targets(smollm2, ["The Eiffel Tower is located in the city of"] * 2, ["Paris", "Rome"])
    ids, mask = jrome.encode(smollm2.tokenizer, ["The Eiffel Tower is located in the city of"])
    probs = jax.nn.softmax(jrome.forward(smollm2, ids, mask, logits_at="last").logits[0, -1])
    paris, rome = smollm2.tokenizer(" Paris")["input_ids"][0], smollm2.tokenizer(" Rome")["input_ids"][0]
    np.testing.assert_allclose(np.exp(lp), [probs[paris], probs[rome]], rtol=1e-4)
    assert acc.tolist() == [1.0, 0.0]


def test_zsre_accuracy_is_teacher_forced_argmax_per_token(smollm2):
    (case,) = parse_zsre([ZSRE | {"answers": ["unmanned aerial vehicles"]}])
    got = zsre_correct(smollm2, case)
    tok = smollm2.tokenizer
    for group, prompt, answer in [("rewrite", case.request.text, " unmanned aerial vehicles"),
                                  ("paraphrase", ZSRE["rephrase"], " unmanned aerial vehicles"),
                                  ("neighborhood", ZSRE["loc"] + "?", " Homer")]:  # fmt: skip
        p, a = tok(prompt)["input_ids"], tok(answer)["input_ids"]
        logits = np.asarray(jrome.forward(smollm2, np.asarray([p + a], np.int32)).logits[0])
        assert got[group] == [bool(logits[len(p) - 1 + j].argmax() == t) for j, t in enumerate(a)]
    assert len(got["rewrite"]) > 1


def test_generation_samples_top5_to_max_out_len_including_the_prompt(smollm2):
    prompts = ["The Eiffel Tower is", "In the morning, the old fisherman walked down to the"]
    rows = sample_to_length(smollm2, prompts, 20, seed=3)
    tok = smollm2.tokenizer
    for prompt, row in zip(prompts, rows, strict=True):
        p = tok(prompt)["input_ids"]
        assert len(row) == 20 and row[: len(p)] == p
        logits = np.asarray(jrome.forward(smollm2, np.asarray([row], np.int32)).logits[0])
        for pos in range(len(p), 20):  # each sampled token is among the 5 most likely
            assert (logits[pos - 1] > logits[pos - 1, row[pos]]).sum() < 5
    long = "one two three four five six seven eight nine ten eleven twelve"
    assert sample_to_length(smollm2, [long], 5) == [tok(long)["input_ids"]]


def test_ft_loss_reads_every_target_token_at_the_last_prompt_token(smollm2):
    request = {"prompt": "{} is located in the city of", "subject": "The Eiffel Tower", "target_new": "Buenos Aires"}
    _, losses = finetune(smollm2, request, FTHparams(layer=1, num_steps=1))
    tok = smollm2.tokenizer
    prompt, target = tok("The Eiffel Tower is located in the city of")["input_ids"], tok(" Buenos Aires")["input_ids"]
    logits = np.asarray(jrome.forward(smollm2, np.asarray([prompt], np.int32)).logits[0, -1], np.float64)
    log_probs = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
    assert len(target) > 1 and losses[0] == pytest.approx(-log_probs[target].mean(), rel=1e-4)


def test_ft_stops_at_the_first_loss_below_1e2_without_stepping(smollm2):
    ft, losses = finetune(smollm2, EIFFEL, FTHparams(layer=1, lr=5e-3))
    stop = int(np.argmax(losses < 1e-2))
    assert losses[stop] < 1e-2 and (losses[:stop] >= 1e-2).all() and np.isnan(losses[stop + 1 :]).all() and stop < 24
    (lp,), _ = score_targets(ft, ["The Eiffel Tower is located in the city of"], ["Rome"])
    assert -lp == pytest.approx(losses[stop], rel=1e-3)  # the weights the last loss was read at


def test_ft_tunes_kernel_and_bias_and_ft_l_keeps_both_within_the_bound(tiny_lm):
    lm = tiny_lm("gpt2")  # GPT-2's MLP output projection has a bias, which the original tunes too
    request = {"prompt": "{} is located in the city of", "subject": "the eiffel tower", "target_new": "rome"}
    down = lm.params["blocks"]["mlp"]["down"]
    for bound in (None, 1e-3):
        new, losses = finetune(lm, request, FTHparams(layer=1, lr=1e-2, norm_constraint=bound))
        new_down = new.params["blocks"]["mlp"]["down"]
        for name in ("kernel", "bias"):
            change = np.abs(np.asarray(new_down[name] - down[name]))
            assert change[1].max() > 0 and change[[0, 2]].max() == 0
            if bound is not None:
                assert change[1].max() <= bound + 1e-7
        assert losses[~np.isnan(losses)][-1] < losses[0]


def test_ft_presets_are_the_originals():
    def fields(name, family, method):
        hp = ft_hparams_for(name, family, method)
        return hp.layer, hp.num_steps, hp.lr, hp.weight_decay, hp.norm_constraint

    # hparams/FT/gpt2-xl_unconstr.json, gpt2-xl_constr.json, gpt2-large_constr.json, gpt2-medium_constr.json,
    # EleutherAI_gpt-j-6B_unconstr.json, EleutherAI_gpt-j-6B_constr.json
    assert fields("gpt2-xl", "gpt2", "ft") == (1, 25, 5e-4, 0.0, None)
    assert fields("openai-community/gpt2-xl", "gpt2", "ft-l") == (0, 25, 5e-4, 0.0, 5e-4)
    assert fields("gpt2-large", "gpt2", "ft-l") == (0, 25, 5e-4, 0.0, 1e-3)
    assert fields("gpt2-medium", "gpt2", "ft-l") == (0, 25, 5e-4, 0.0, 2e-3)
    assert fields("EleutherAI/gpt-j-6B", "gptj", "ft") == (21, 25, 5e-4, 0.0, None)
    assert fields("EleutherAI/gpt-j-6B", "gptj", "ft-l") == (0, 25, 5e-4, 0.0, 5e-5)
    assert fields("smollm2", "llama", "ft") == (1, 25, 5e-4, 0.0, None)  # chosen by analogy with gpt2-xl
    assert fields("smollm2", "llama", "ft-l") == (0, 25, 5e-4, 0.0, 5e-4)


def mean_from_file(path, when, field):
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return np.mean([r[when][field] for r in records])


TEMPLATES = ["{}", "I read it in a book. {}", "Because of that, {}"]  # explicit: test_rome covers generated ones
SMALL_ROME = {"mom2_n_tokens": 20_000, "context_templates": TEMPLATES}


@pytest.mark.parametrize("dataset", ["counterfact", "zsre"])
def test_rome_runner_end_to_end(smollm2, tmp_path, dataset):
    summary = run_eval(smollm2, "rome", dataset, 2, tmp_path, hparams=SMALL_ROME, progress=False)
    assert summary["n"] == 2 and (tmp_path / "summary.md").read_text().startswith("### rome on")
    saved = json.loads((tmp_path / "summary.json").read_text())
    efficacy, parts = ("ES", ("ES", "PS", "NS")) if dataset == "counterfact" else ("efficacy", ("efficacy", "paraphrase", "specificity"))  # fmt: skip
    field = {"ES": "efficacy_score", "efficacy": "edit_accuracy"}[efficacy]
    assert saved["metrics"][efficacy]["post"]["mean"] == pytest.approx(
        mean_from_file(tmp_path / "cases.jsonl", "post", field)
    )
    assert saved["metrics"][efficacy]["post"]["mean"] > saved["metrics"][efficacy]["pre"]["mean"]
    means = [saved["metrics"][c]["post"]["mean"] for c in parts]
    assert saved["metrics"]["S"]["post"]["mean"] == pytest.approx(
        0 if min(means) == 0 else 3 / sum(1 / x for x in means)
    )
    context = json.loads((tmp_path / "context.json").read_text())
    templates = context["hparams"]["context_templates"]
    assert templates == TEMPLATES and saved["hparams"]["context_templates"] == templates
    record = json.loads((tmp_path / "cases.jsonl").read_text().splitlines()[0])
    if dataset == "counterfact":
        assert set(record["post"]["nll"]) == {"rewrite", "paraphrase", "neighborhood"}
        assert saved["notes"] == ["GE and RS not computed: these records have no generation_prompts (the original CounterFact format has them)"]  # fmt: skip
    else:
        assert len(record["post"]["correct"]["rewrite"]) == len(smollm2.tokenizer(" uniform")["input_ids"])


def test_cases_scored_as_rows_of_shared_forwards_equal_each_edited_model_scored_alone(smollm2, eiffel_edit):
    from jrome.editing.undo import RankOne
    from jrome.evaluation.protocols import score_cases

    real = eiffel_edit[1].edits[0].rank_one  # Eiffel Tower -> Rome at layer 4
    rng = np.random.default_rng(0)
    other = RankOne(real.layers, rng.normal(size=real.u.shape) / 40, rng.normal(size=real.lam.shape) * 3)
    edits = [real, None, other]
    for dataset in ("counterfact", "zsre"):
        cases = load_dataset(dataset)[:3]
        together = score_cases(smollm2, cases, 0, 0, None, edits)
        alone = [score_cases(smollm2 if e is None else e.apply(smollm2), [c], 0, 0, None)[0] for c, e in zip(cases, edits, strict=True)]  # fmt: skip
        unedited = score_cases(smollm2, cases, 0, 0, None)
        if dataset == "counterfact":
            nlls = [[p[t] for g in ("rewrite", "paraphrase", "neighborhood") for p in s["nll"][g] for t in p] for s in (*together, *alone, *unedited)]  # fmt: skip
            together_nll, alone_nll, unedited_nll = nlls[:3], nlls[3:6], nlls[6:]
            for r in range(3):
                np.testing.assert_allclose(together_nll[r], alone_nll[r], atol=1e-4)
            assert max(abs(a - b) for a, b in zip(alone_nll[0], unedited_nll[0], strict=True)) > 0.1  # edits matter
            assert max(abs(a - b) for a, b in zip(alone_nll[2], unedited_nll[2], strict=True)) > 0.1
            assert alone_nll[1] == unedited_nll[1]
        else:
            assert [s["correct"] for s in together] == [s["correct"] for s in alone]
        for t, a in zip(together, alone, strict=True):  # the per-case scores computed from them
            assert {k: v for k, v in t.items() if k not in ("nll", "correct")} == pytest.approx(
                {k: v for k, v in a.items() if k not in ("nll", "correct")}, abs=1e-4
            )


def test_generation_metrics_of_original_format_records(smollm2, tmp_path, monkeypatch):
    (tmp_path / "cf.json").write_text(json.dumps([ORIGINAL]))
    monkeypatch.setenv("JROME_DATA_DIR", str(tmp_path))
    summary = run_eval(smollm2, "none", tmp_path / "cf.json", out=tmp_path / "a", max_out_len=24, progress=False)
    assert "GE" in summary["metrics"] and "RS" not in summary["metrics"]
    assert summary["notes"][0].startswith(f"RS not computed: attribute_snippets is not in {tmp_path} nor cached")
    (tmp_path / "tfidf_vocab.json").write_text(json.dumps({"tongue": 0, "speak": 1, "english": 2}))
    np.save(tmp_path / "idf.npy", np.ones(3))
    samples = [{"name": "X", "text": "English is the tongue they speak"}]
    (tmp_path / "attribute_snippets.json").write_text(json.dumps([{"relation_id": "P103", "target_id": "Q1860", "samples": samples}]))  # fmt: skip
    summary = run_eval(smollm2, "none", tmp_path / "cf.json", out=tmp_path / "b", max_out_len=24, progress=False)
    record = json.loads((tmp_path / "b" / "cases.jsonl").read_text())
    texts = record["pre"]["texts"]
    assert [t[: len(p)] for t, p in zip(texts, ORIGINAL["generation_prompts"], strict=True)] == ORIGINAL[
        "generation_prompts"
    ]
    assert summary["metrics"]["GE"]["pre"]["mean"] == pytest.approx(np.mean([ngram_entropy(t) for t in texts]))
    assert 0 < summary["metrics"]["RS"]["pre"]["mean"] <= 1 + 1e-12 and summary["notes"] == []  # prompts: tongue, speak


def test_each_method_prepares_only_its_own_context(smollm2, tmp_path, monkeypatch):
    def no_rome(*args, **kwargs):
        raise AssertionError("this method must not need ROME's templates or key statistics")

    monkeypatch.setattr(methods, "statistics_for", no_rome)
    monkeypatch.setattr(methods.rome, "context_templates", no_rome)
    for name, short in (("none", None), ("ft", {"num_steps": 2}), ("ft-l", None)):
        run_eval(smollm2, name, "counterfact", 1, tmp_path / name, hparams=short, max_out_len=0, progress=False)
    assert json.loads((tmp_path / "none" / "context.json").read_text())["hparams"] is None
    assert json.loads((tmp_path / "ft-l" / "context.json").read_text())["hparams"] == {
        "layer": 0, "num_steps": 25, "lr": 5e-4, "weight_decay": 0.0, "norm_constraint": 5e-4,
    }  # fmt: skip


def test_r_rome_and_memit_save_their_templates(smollm2, tmp_path):
    summary = run_eval(smollm2, "r-rome", "counterfact", 1, tmp_path / "r", hparams=SMALL_ROME, max_out_len=0, progress=False)  # fmt: skip
    assert summary["hparams"]["rrome"] is True and summary["metrics"]["ES"]["post"]["mean"] == 1.0
    short = {"mom2_n_tokens": 20_000, "v_num_grad_steps": 2}  # the templates are what this test reads
    summary = run_eval(smollm2, "memit", "counterfact", 1, tmp_path / "m", hparams=short, max_out_len=0, progress=False)  # fmt: skip
    templates = json.loads((tmp_path / "m" / "context.json").read_text())["hparams"]["context_templates"]
    assert templates[0] == "{}" and len(templates) == 6 and summary["hparams"]["context_templates"] == templates


def test_an_interrupted_run_resumes_without_redoing_finished_cases(smollm2, tmp_path, monkeypatch):
    short = {"num_steps": 2}
    run_eval(smollm2, "ft", "counterfact", 3, tmp_path, hparams=short, max_out_len=0, progress=False)
    lines = (tmp_path / "cases.jsonl").read_text().splitlines()
    (tmp_path / "cases.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:20])
    calls = []
    real = methods.METHODS["ft"]

    class Counting:
        name = "ft"
        prepare = real.prepare

        def edit_each(self, lm, cases, ctx):
            calls.extend(c.case_id for c in cases)
            return real.edit_each(lm, cases, ctx)

    monkeypatch.setitem(methods.METHODS, "ft", Counting())
    summary = run_eval(smollm2, "ft", "counterfact", 3, tmp_path, hparams=short, max_out_len=0, batch=2, progress=False)
    assert calls == [json.loads(lines[2])["case_id"]] and summary["n"] == 3
    kept = [json.loads(line)["case_id"] for line in (tmp_path / "cases.jsonl").read_text().splitlines()]
    assert kept == [json.loads(line)["case_id"] for line in lines]  # the first two kept, the cut one redone
    with pytest.raises(ValueError, match=r"was started with other hyperparameters than \{'layer': 3\}"):
        run_eval(smollm2, "ft", "counterfact", 3, tmp_path, hparams=short | {"layer": 3}, max_out_len=0, progress=False)
    with pytest.raises(ValueError, match="holds a run of 'ft' on 'smollm2', not 'ft-l' on 'smollm2'"):
        run_eval(smollm2, "ft-l", "counterfact", 3, tmp_path, max_out_len=0, progress=False)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"dataset": "zsre"},
            "dataset 'counterfact' there, 'zsre' now; dataset_file 'counterfact-edit.json' there, 'zsre_mend_train-1k.json' now",
        ),
        ({"max_out_len": 20}, "max_out_len 0 there, 20 now"),
        ({"seed": 1}, "seed 0 there, 1 now"),
    ],
)
def test_a_run_resumes_only_with_the_same_dataset_and_scoring(smollm2, tmp_path, change, message):
    run = {"method": "none", "dataset": "counterfact", "n": 1, "out": tmp_path, "max_out_len": 0, "seed": 0}
    run_eval(smollm2, **run, progress=False)
    before = (tmp_path / "cases.jsonl").read_text()
    with pytest.raises(ValueError, match=f"{tmp_path} holds a run with other settings \\({message}\\); to start"):
        run_eval(smollm2, **run | change, progress=False)
    assert (tmp_path / "cases.jsonl").read_text() == before


def test_the_file_scored_is_said_and_recorded_and_the_summary_is_strict_json(smollm2, tmp_path, capsys):
    run_eval(smollm2, "none", "zsre", 1, tmp_path, max_out_len=0)  # $JROME_DATA_DIR has no zsre_mend_eval.json
    fallback = data_file("zsre/zsre_mend_train-1k.json")
    assert f"dataset zsre: 1000 cases from {fallback}" in capsys.readouterr().out
    assert json.loads((tmp_path / "settings.json").read_text())["dataset_file"] == "zsre_mend_train-1k.json"

    def no_nan(word):
        raise AssertionError(f"summary.json holds {word}")

    summary = json.loads((tmp_path / "summary.json").read_text(), parse_constant=no_nan)
    assert summary["dataset_file"] == str(fallback) and summary["metrics"]["efficacy"]["pre"]["ci95"] is None


def test_bad_input(smollm2, tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'wikidata'; known datasets: counterfact, zsre"):
        run_eval(smollm2, "none", "wikidata", 1, progress=False)
    with pytest.raises(ValueError, match="unknown method 'memit2'; known methods: none, rome, r-rome, ft, ft-l, memit"):
        run_eval(smollm2, "memit2", "counterfact", 1, progress=False)
    with pytest.raises(ValueError, match=r"method 'none' takes no hyperparameters; got \['layer'\]"):
        run_eval(smollm2, "none", "counterfact", 1, hparams={"layer": 3}, progress=False)
    with pytest.raises(ValueError, match=r"unknown FT hyperparameters \['mom2_n_tokens'\]; known: layer, lr"):
        run_eval(smollm2, "ft", "counterfact", 1, hparams={"mom2_n_tokens": 5}, progress=False)
    with pytest.raises(ValueError, match="n=-1 is not a number of cases; accepted: n >= 1, or None for all"):
        run_eval(smollm2, "none", "counterfact", -1, progress=False)
    with pytest.raises(ValueError, match="max_out_len must be 0"):
        run_eval(smollm2, "none", "counterfact", 1, max_out_len=-1, progress=False)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "context.json").write_text(json.dumps({"method": "rome", "model": "smollm2", "rome": {}}))
    with pytest.raises(ValueError, match="is not a run context of this jrome"):
        run_eval(smollm2, "rome", "counterfact", 1, tmp_path / "old", progress=False)
    bad = dict(ORIGINAL, requested_rewrite={k: v for k, v in ORIGINAL["requested_rewrite"].items() if k != "subject"})
    (tmp_path / "bad.json").write_text(json.dumps([ORIGINAL, bad]))
    with pytest.raises(ValueError, match="record 1 is malformed: it has no field 'subject'"):
        run_eval(smollm2, "none", tmp_path / "bad.json", 1, progress=False)
    with pytest.raises(ValueError, match="record 0 is malformed: it has no field 'loc_ans'"):
        parse_zsre([{k: v for k, v in ZSRE.items() if k != "loc_ans"}])
    with pytest.raises(ValueError, match=r"record 0 is malformed: answers must be a non-empty list, got \[\]"):
        parse_zsre([ZSRE | {"answers": []}])
    with pytest.raises(ValueError, match="norm_constraint must be positive or None"):
        FTHparams(layer=0, norm_constraint=0.0)


def test_n_larger_than_the_dataset_runs_what_there_is(smollm2, tmp_path, capsys):
    (tmp_path / "two.json").write_text(json.dumps([ORIGINAL, dict(ORIGINAL, case_id=8)]))
    summary = run_eval(smollm2, "none", tmp_path / "two.json", 5, max_out_len=0, progress=False)
    assert summary["n"] == 2 and "n=5 is larger than the dataset (2 cases); running all 2" in capsys.readouterr().out


def test_pre_edit_scores_are_read_from_an_earlier_run_of_the_same_settings(smollm2, tmp_path, monkeypatch):
    from jrome.evaluation import protocols

    same = {"max_out_len": 0, "seed": 0, "progress": False}
    none = run_eval(smollm2, "none", "counterfact", 2, tmp_path / "none", **same)
    scored = []
    real = protocols.score_cases
    monkeypatch.setattr(
        protocols, "score_cases", lambda lm, cases, *a: scored.append(lm is smollm2) or real(lm, cases, *a)
    )
    ft = run_eval(smollm2, "ft", "counterfact", 2, tmp_path / "ft", hparams={"num_steps": 2}, pre_from=tmp_path / "none", **same)  # fmt: skip
    assert scored == [False, False]  # only the edited models were scored

    def pre(run: str) -> list:
        return [json.loads(line)["pre"] for line in (tmp_path / run / "cases.jsonl").read_text().splitlines()]

    assert pre("ft") == pre("none") and ft["metrics"]["ES"]["pre"] == none["metrics"]["ES"]["pre"]
    assert "pre-edit scores of 2 cases read from" in ft["notes"][-1]
    with pytest.raises(ValueError, match="scored with other settings \\(max_out_len 0 there, 10 now\\)"):
        run_eval(smollm2, "ft", "counterfact", 2, tmp_path / "ft2", pre_from=tmp_path / "none", max_out_len=10)
