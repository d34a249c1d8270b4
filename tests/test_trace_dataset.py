"""Fig. 2 averages over known facts: which facts count, token categories, resuming, and the files written."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import data_file

import jrome.tracing.dataset as dataset
from jrome.data import load_known
from jrome.tracing.dataset import token_categories, trace_dataset


def test_token_categories():
    # 9 tokens, subject at 2..5: first 2, middle 3-4, last 5, first subsequent 6, further 7, last token 8
    assert token_categories(9, (2, 6)) == [[2], [3, 4], [5], [6], [7], [8]]
    # a one-token subject right before the last token: no middle, no first subsequent, no further tokens
    assert token_categories(4, (2, 3)) == [[2], [], [2], [], [], [3]]


@pytest.fixture(scope="module")
def facts():
    return load_known(data_file("known_1000.json"))[:8]  # SmolLM2 answers 2 of these (indices 6 and 7)


@pytest.fixture(scope="module")
def first_run(smollm2, facts, tmp_path_factory):
    out = tmp_path_factory.mktemp("trace_dataset")
    return out, trace_dataset(smollm2, facts, ("hidden", "mlp"), samples=2, out=out, progress=False)


def test_only_correctly_answered_facts_are_traced_and_averaged(first_run):
    out, summary = first_run
    assert (summary.n_facts, summary.n_correct) == (8, 2)
    records = [json.loads(line) for line in (out / "facts.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records if r["correct"]] == [6, 7]
    for kind in ("hidden", "mlp"):
        expected = np.zeros((6, 30))
        counts = np.zeros(6)
        for r in (r for r in records if r["correct"]):
            ie = np.asarray(r["scores"][kind]) - r["low"]
            for c, tokens in enumerate(token_categories(len(ie), tuple(r["subject_range"]))):
                if tokens:
                    expected[c] += ie[tokens].mean(axis=0)
                    counts[c] += 1
        np.testing.assert_allclose(summary.aie[kind], expected / np.maximum(counts, 1)[:, None])
    assert summary.ate == pytest.approx(np.mean([r["high"] - r["low"] for r in records if r["correct"]]))
    saved = json.loads((out / "summary.json").read_text())
    assert saved["n_correct"] == 2 and np.allclose(saved["aie"]["hidden"], summary.aie["hidden"])
    assert np.allclose(np.load(out / "summary.npz")["aie_mlp"], summary.aie["mlp"])
    assert (out / "average_effects.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "average_effects.pdf").read_bytes()[:5] == b"%PDF-"


def test_an_interrupted_run_resumes_without_redoing_finished_facts(smollm2, facts, first_run, tmp_path, monkeypatch):
    out, summary = first_run
    lines = (out / "facts.jsonl").read_text().splitlines()
    (tmp_path / "facts.jsonl").write_text("\n".join(lines[:7]) + "\n" + lines[7][: len(lines[7]) // 2])
    calls = []
    real_restore = dataset.restore

    def counting_restore(lm, runs, kind, **kwargs):
        calls.append((runs.prompt, kind))
        return real_restore(lm, runs, kind, **kwargs)

    monkeypatch.setattr(dataset, "restore", counting_restore)
    resumed = trace_dataset(smollm2, facts, ("hidden", "mlp"), samples=2, out=tmp_path, progress=False)
    assert calls == [(facts[7]["prompt"], "hidden"), (facts[7]["prompt"], "mlp")]
    np.testing.assert_allclose(resumed.aie["hidden"], summary.aie["hidden"])


def test_bad_facts_and_kinds(smollm2):
    with pytest.raises(ValueError, match="fact 0 has no field 'attribute'"):
        trace_dataset(smollm2, [{"prompt": "x", "subject": "x"}], ("hidden",), progress=False)
    with pytest.raises(ValueError, match="each must be one of hidden, mlp, attn"):
        trace_dataset(smollm2, [], ("neurons",), progress=False)
