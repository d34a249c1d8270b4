"""Fig. 2 / Fig. 3 averages over known facts: the original's pooling on a hand-made table, a real run, resuming."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import data_file, one_worker

import jrome.tracing.dataset as dataset
from jrome.data import load_known
from jrome.tracing.dataset import summarise, token_categories, trace_dataset

pytestmark = one_worker(__name__)  # its module-scoped fixture is computed once


def test_token_categories():
    # 9 tokens, subject 2..5: first 2, middle 3-4, last 5, first subsequent 6, further 7, last token 8
    assert token_categories(9, (2, 6)) == [[2], [3, 4], [5], [6], [7], [8]]
    # a one-token subject right before the last token: it is first and last subject token, and the last
    # token is also the first subsequent token (the original always counts one)
    assert token_categories(4, (2, 3)) == [[2], [], [2], [3], [], [3]]
    # a subject that ends the prompt has no first subsequent token
    assert token_categories(3, (1, 3)) == [[1], [], [2], [], [], [2]]


def record(scores, span, low, high):
    return {"correct": True, "scores": {"hidden": scores}, "subject_range": list(span), "low": low, "high": high}


def test_averages_pool_tokens_and_subtract_the_mean_low_score_as_the_original_does():
    # Two layers. The row before fact A's subject (9, 9) must not count anywhere; fact C is not answered.
    a = record([[9, 9], [0.1, 0.2], [0.3, 0.4], [0.5, 0.6], [0.7, 0.8]], (1, 4), low=0.1, high=0.9)
    b = record([[0.2, 0.2], [0.4, 0.0], [0.1, 0.1], [0.2, 0.2], [0.3, 0.3], [0.6, 0.2], [0.5, 0.7]], (0, 1), 0.0, 0.6)
    c = {"correct": False}
    d = record([[0.3, 0.1], [0.2, 0.2], [0.6, 0.0], [0.1, 0.3], [0.2, 0.2], [0.9, 0.5]], (0, 4), low=0.2, high=0.9)
    summary = summarise([a, b, c, d], ["hidden"], n_layers=2, noise=0.1)
    assert (summary.n_facts, summary.n_correct) == (4, 3)
    low = (0.1 + 0.0 + 0.2) / 3  # the mean corrupted score over the answered facts, subtracted from each mean
    assert summary.low == pytest.approx(low) and summary.ate == pytest.approx((0.9 + 0.6 + 0.9) / 3 - low)
    expected = [
        [(0.1 + 0.2 + 0.3) / 3, (0.2 + 0.2 + 0.1) / 3],  # first subject token: A1, B0, D0
        [(0.3 + 0.2 + 0.6) / 3, (0.4 + 0.2 + 0.0) / 3],  # middle: A2, D1, D2 pooled row by row (D counts twice)
        [(0.5 + 0.2 + 0.1) / 3, (0.6 + 0.2 + 0.3) / 3],  # last subject token: A3, B0 (one-token subject), D3
        [(0.7 + 0.4 + 0.2) / 3, (0.8 + 0.0 + 0.2) / 3],  # first subsequent: A4 (also A's last token), B1, D4
        [(0.1 + 0.2 + 0.3 + 0.6) / 4, (0.1 + 0.2 + 0.3 + 0.2) / 4],  # further tokens: B2..B5 pooled row by row
        [(0.7 + 0.5 + 0.9) / 3, (0.8 + 0.7 + 0.5) / 3],  # last token: A4, B6, D5
    ]
    np.testing.assert_allclose(summary.aie["hidden"], np.asarray(expected) - low, atol=1e-12)
    assert summary.counts["hidden"] == [3, 3, 3, 3, 4, 3]
    assert summary.std["hidden"][4, 0] == pytest.approx(np.sqrt((0.2**2 + 0.1**2 + 0 + 0.3**2) / 4))


def test_with_no_fact_answered_the_summary_says_so_in_valid_json():
    summary = summarise([{"correct": False}], ["hidden", "severed_mlp"], n_layers=2, noise=0.1)
    assert summary.n_correct == 0 and np.isnan(summary.aie["severed_mlp"]).all() and np.isnan(summary.ate)
    d = json.loads(json.dumps(summary.to_dict(), allow_nan=False))
    assert d["note"] == dataset.NO_CORRECT and d["ate"] is None and d["aie"]["hidden"][0] == [None, None]


@pytest.fixture(scope="module")
def facts():
    known = load_known(data_file("known_1000.json"))
    # SmolLM2 misses known fact 0 and answers 53 (subject tokens 0..3 of 7) and 21 (3..4 of 6: the subject
    # ends right before the last token, which is then also the first subsequent token)
    return [known[i] for i in (0, 53, 21)]


@pytest.fixture(scope="module")
def first_run(smollm2, facts, tmp_path_factory):
    out = tmp_path_factory.mktemp("trace_dataset")
    return out, trace_dataset(smollm2, facts, ("hidden",), samples=2, sever="mlp", out=out, progress=False)


def test_a_real_run_traces_the_answered_facts_and_averages_them(first_run):
    out, summary = first_run
    assert (summary.n_facts, summary.n_correct) == (3, 2) and summary.kinds == ("hidden", "severed_mlp")
    records = [json.loads(line) for line in (out / "facts.jsonl").read_text().splitlines()]  # as batches finish
    records.sort(key=lambda r: r["index"])
    assert [r["index"] for r in records] == [0, 1, 2] and [r["correct"] for r in records] == [False, True, True]
    correct = [r for r in records if r["correct"]]
    assert [r["answer"] for r in correct] == [" Paris", " Rome"]
    for name in summary.kinds:
        assert summary.aie[name].shape == (6, 30) and not np.isnan(summary.aie[name]).any()
        assert summary.counts[name] == [2, 2, 2, 2, 1, 2]  # middle: 2 tokens of fact 53; further: 1 of fact 53
        # restoring the last token's final state gives the clean score, severed or not: AIE = ATE
        assert summary.aie[name][5, -1] == pytest.approx(summary.ate, abs=1e-5)
    np.testing.assert_allclose(summary.aie["severed_mlp"][:, -1], summary.aie["hidden"][:, -1], atol=1e-5)
    assert summary.ate == pytest.approx(np.mean([r["high"] - r["low"] for r in correct]))
    np.testing.assert_allclose(np.asarray(correct[1]["scores"]["hidden"])[:3], correct[1]["low"], atol=1e-6)
    saved = json.loads((out / "summary.json").read_text())
    assert saved["n_correct"] == 2 and np.allclose(saved["aie"]["severed_mlp"], summary.aie["severed_mlp"])
    assert json.loads((out / "settings.json").read_text()) == {
        "model": "smollm2", "noise_scale": summary.noise_scale, "samples": 2, "window": 10, "seed": 1,
        "kinds": ["hidden"], "sever": ["mlp"],
    }  # fmt: skip
    assert np.allclose(np.load(out / "summary.npz")["aie_hidden"], summary.aie["hidden"])
    for plot in ("average_effects", "severed_effects"):
        assert (out / f"{plot}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / f"{plot}.pdf").read_bytes()[:5] == b"%PDF-"


def test_an_interrupted_run_resumes_without_redoing_finished_facts(smollm2, facts, first_run, tmp_path, monkeypatch):
    out, summary = first_run
    shutil.copy(out / "settings.json", tmp_path / "settings.json")
    lines = sorted((out / "facts.jsonl").read_text().splitlines(), key=lambda line: json.loads(line)["index"])
    (tmp_path / "facts.jsonl").write_text("\n".join([*lines[:2], lines[0], lines[2][: len(lines[2]) // 2]]))
    calls = []
    real_restore = dataset.restore_many

    def counting_restore(lm, runs, kind, **kwargs):
        calls.append(([r.prompt for r in runs], kind, kwargs["sever"]))
        return real_restore(lm, runs, kind, **kwargs)

    monkeypatch.setattr(dataset, "restore_many", counting_restore)
    resumed = trace_dataset(smollm2, facts, ("hidden",), samples=2, sever="mlp", out=tmp_path, progress=False)
    assert calls == [([facts[2]["prompt"]], "hidden", None), ([facts[2]["prompt"]], "hidden", "mlp")]
    np.testing.assert_allclose(resumed.aie["severed_mlp"], summary.aie["severed_mlp"])
    again = [json.loads(line)["index"] for line in (tmp_path / "facts.jsonl").read_text().splitlines()]
    assert sorted(again) == [0, 1, 2]  # each fact once, the cut line gone


def test_resuming_with_other_settings_or_facts_is_refused(smollm2, facts, first_run, tmp_path):
    out, _ = first_run
    with pytest.raises(ValueError, match=r"other settings \(samples 2 there, 3 now; sever \['mlp'\] there, \[\] now\)"):
        trace_dataset(smollm2, facts, ("hidden",), samples=3, out=out, progress=False)
    with pytest.raises(ValueError, match="to start fresh, use a new folder or delete"):
        trace_dataset(smollm2, facts, ("hidden",), samples=2, sever="mlp", seed=2, out=out, progress=False)
    with pytest.raises(ValueError, match="has fact 0 as 'Vinson Massif is located in the continent of', but the facts"):
        trace_dataset(smollm2, facts[::-1], ("hidden",), samples=2, sever="mlp", out=out, progress=False)
    shutil.copy(out / "facts.jsonl", tmp_path / "facts.jsonl")
    with pytest.raises(ValueError, match="facts.jsonl but no settings.json"):
        trace_dataset(smollm2, facts, ("hidden",), samples=2, sever="mlp", out=tmp_path, progress=False)


def test_a_run_where_no_fact_is_answered(smollm2, facts, tmp_path):
    summary = trace_dataset(smollm2, facts[:1], ("hidden",), samples=2, out=tmp_path, progress=False)
    assert summary.n_correct == 0
    text = (tmp_path / "summary.json").read_text()
    saved = json.loads(text)
    assert saved["note"] == dataset.NO_CORRECT and saved["ate"] is None and "NaN" not in text


def test_bad_facts_kinds_and_sever(smollm2):
    with pytest.raises(ValueError, match="fact 0 has no field 'attribute'"):
        trace_dataset(smollm2, [{"prompt": "x", "subject": "x"}], ("hidden",), progress=False)
    with pytest.raises(ValueError, match="each must be one of hidden, mlp, attn"):
        trace_dataset(smollm2, [], ("neurons",), progress=False)
    with pytest.raises(ValueError, match="sever='neurons'; accepted: 'mlp', 'attn', or both"):
        trace_dataset(smollm2, [], ("hidden",), sever="neurons", progress=False)
