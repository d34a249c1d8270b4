"""Sequential editing as a fold over an editor state (ROME, MEMIT, AlphaEdit), on a tiny model: no hidden state, one
compiled program per batch shape, exact resumption from a saved state; and AlphaEdit's algebra."""

from __future__ import annotations

import json

import chex
import numpy as np
import pytest

from jrome.compilation import CompileLog
from jrome.editing import alphaedit
from jrome.editing.hparams import AlphaEditHparams, MemitHparams, RomeHparams
from jrome.editing.sequential import AlphaEditor, MemitEditor, RomeEditor, fold, load_state, save_state
from jrome.editing.solver import KeyStats
from jrome.editing.undo import down_kernel

# Two batches of one shape: the same prompt, three-word subjects and one-word targets (the tiny vocabulary's words).
FIRST = [("the eiffel tower", "rome"), ("the space needle", "paris")]
SECOND = [("the old bridge", "seattle"), ("the big river", "france")]
V = {"v_num_grad_steps": 3, "context_templates": ("{}", "a new {}")}


def batch(pairs):
    return [{"prompt": "{} is located in", "subject": s, "target_new": t} for s, t in pairs]


@pytest.fixture(scope="module")
def stats():
    """Key statistics of the tiny llama's MLP keys (width 64) from random keys: any positive definite C will do."""
    rng = np.random.default_rng(0)
    out = {}
    for layer in (0, 1, 2):
        keys = rng.normal(size=(64, 400)) * np.linspace(0.05, 2.0, 64)[:, None]
        out[layer] = KeyStats(layer, keys @ keys.T, 400, "random")
    return out


def editors(stats):
    alpha = AlphaEditHparams(layers=(0, 1), nullspace_threshold=0.5, L2=1.0, **V)
    return {
        "rome": RomeEditor(RomeHparams(layer=1, **V), stats[1]),
        "memit": MemitEditor(MemitHparams(layers=(0, 1), mom2_update_weight=10.0, **V), stats),
        "alphaedit": AlphaEditor(alpha, alphaedit.null_spaces(stats, alpha)),
    }


@pytest.mark.parametrize("method", ["rome", "memit", "alphaedit"])
def test_a_stream_is_a_fold_that_compiles_once_and_leaks_into_no_other_stream(tiny_lm, stats, method):
    lm = tiny_lm("llama")
    editor = editors(stats)[method]
    start = editor.start(lm)
    alone, _ = editor.step(start, batch(SECOND))  # the second batch on the unedited model
    first, _ = editor.step(start, batch(FIRST))
    with CompileLog() as compiled:
        second, undo = editor.step(first, batch(SECOND))
    assert compiled.counts() == {}  # the second batch of one shape reuses every program of the first
    assert second.edits == 4 and first.edits == 2
    again, _ = editor.step(start, batch(SECOND))  # after a whole stream, the unedited start is still the start
    chex.assert_trees_all_equal(again.lm.params, alone.lm.params)
    chex.assert_trees_all_equal(start.lm.params, lm.params)
    chex.assert_trees_all_equal(fold(editor, start, [batch(FIRST), batch(SECOND)]).lm.params, second.lm.params)
    assert not np.allclose(down_kernel(second.lm.params), down_kernel(alone.lm.params))
    chex.assert_trees_all_equal(undo(second.lm).params, first.lm.params)


def test_a_saved_state_resumes_the_stream_exactly(tiny_lm, stats, tmp_path):
    lm = tiny_lm("llama")
    editor = editors(stats)["alphaedit"]
    first, _ = editor.step(editor.start(lm), batch(FIRST))
    save_state(tmp_path / "state.npz", first, editor.start(lm))
    loaded = load_state(tmp_path / "state.npz", editor.start(lm))
    chex.assert_trees_all_equal(loaded.lm.params, first.lm.params)
    np.testing.assert_array_equal(loaded.carry, first.carry)
    assert loaded.edits == 2
    chex.assert_trees_all_equal(editor.step(loaded, batch(SECOND))[0].lm.params, editor.step(first, batch(SECOND))[0].lm.params)  # fmt: skip
    with pytest.raises(ValueError, match="holds the state of another model or method"):
        load_state(tmp_path / "state.npz", editors(stats)["memit"].start(lm))


def test_alphaedit_updates_lie_in_the_null_space_and_keep_earlier_keys(tiny_lm, stats):
    lm = tiny_lm("llama")
    editor = editors(stats)["alphaedit"]
    p = editor.projections
    for i, layer in enumerate(editor.hparams.layers):  # P projects onto C's eigenvectors below the threshold
        values, vectors = np.linalg.eigh(stats[layer].covariance)
        np.testing.assert_allclose(p[i] @ p[i], p[i], atol=1e-12)
        np.testing.assert_allclose(p[i] @ vectors[:, values >= 0.5], 0, atol=1e-12)
        assert 0 < np.trace(p[i]) < 64
    first, undo = editor.step(editor.start(lm), batch(FIRST))
    for i, u in enumerate(undo.edits):
        a = p[i] @ u.keys.T @ u.keys + editor.hparams.L2 * np.eye(64)  # the authors' solve with no earlier keys
        np.testing.assert_allclose(a @ u.left, p[i] @ u.keys.T, atol=1e-9)
        np.testing.assert_allclose(first.carry[i], u.keys.T @ u.keys)  # the cache holds this batch's keys
    second, undo = editor.step(first, batch(SECOND))
    for i, u in enumerate(undo.edits):
        a = p[i] @ (u.keys.T @ u.keys + first.carry[i]) + editor.hparams.L2 * np.eye(64)
        np.testing.assert_allclose(a @ u.left, p[i] @ u.keys.T, atol=1e-9)
    with pytest.raises(ValueError, match="nullspace_threshold 0.0001 is below every eigenvalue of layer 0's C"):
        alphaedit.null_spaces(stats, editor.hparams.override(nullspace_threshold=1e-4))
    with pytest.raises(ValueError, match="unknown AlphaEdit hyperparameters"):
        editor.hparams.override(lam=1.0)


def test_memit_edits_two_prompts_of_one_subject_as_two_keys(tiny_lm, stats):
    """As the original does: a repeated subject is not refused; each request is a column of K, read from its own
    prompt (the same key where the subject comes first in both: the words after it do not reach its last token)."""
    lm = tiny_lm("llama")
    same = [
        {"prompt": "{} is located in", "subject": "the eiffel tower", "target_new": "rome"},
        {"prompt": "the famous {} is in", "subject": "the eiffel tower", "target_new": "italy"},
    ]
    editor = editors(stats)["memit"]
    _, undo = editor.step(editor.start(lm), same)
    keys = undo.edits[0].keys
    assert keys.shape == (2, 64) and not np.allclose(keys[0], keys[1])


SUBJECTS = [("the eiffel tower", "rome", "paris"), ("the space needle", "paris", "seattle"),
            ("the old bridge", "seattle", "rome"), ("the big river", "france", "italy")]  # fmt: skip
RECORDS = [
    {"case_id": i, "prompt": f"{s} is located in", "subject": s, "target_new": new, "ground_truth": true,
     "rephrase_prompt": f"the famous {s} is in", "locality_prompt": "the louvre is located in",
     "locality_ground_truth": "paris"}
    for i, (s, new, true) in enumerate(SUBJECTS)
]  # fmt: skip
MEMIT_SMALL = {"layers": [0, 1], "mom2_n_tokens": 2_000, "mom2_update_weight": 10.0, **V}


def test_memits_batch_protocol_and_a_sequential_run_with_its_curve_and_resume(tiny_lm, tmp_path, monkeypatch):
    """num_edits=2: each chunk's cases scored on the model that chunk edited, from the unedited one; sequential: every
    case on the model both chunks edited one after the other, a checkpoint after each, and an exact resume."""
    from jrome.evaluation import load_dataset, methods, run_eval
    from jrome.evaluation.lifelong import at_once_point, plot_runs
    from jrome.evaluation.protocols import score_cases

    lm = tiny_lm("llama")
    (tmp_path / "cf.json").write_text(json.dumps(RECORDS))
    cases = load_dataset(tmp_path / "cf.json")
    common = {"hparams": MEMIT_SMALL, "max_out_len": 0, "ppl_tokens": 256, "progress": False}
    run_eval(lm, "memit", tmp_path / "cf.json", out=tmp_path / "chunks", num_edits=2, **common)
    editor = methods.METHODS["memit"].prepare(lm, tmp_path / "chunks", MEMIT_SMALL, seed=0, progress=False)

    def read(name: str) -> list[dict]:
        return [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]

    records = read("chunks/cases.jsonl")
    for first in (0, 2):
        alone = editor.step(editor.start(lm), [c.request for c in cases[first : first + 2]])[0].lm
        assert [r["post"] for r in records[first : first + 2]] == score_cases(
            alone, cases[first : first + 2], 0, 0, None
        )
        assert records[first]["chunk"] == [first, first + 1]
    assert len(read("chunks/chunks.jsonl")) == 2 and sorted(p.name for p in (tmp_path / "chunks/targets").iterdir()) == ["0.npz", "2.npz"]  # fmt: skip

    summary = run_eval(lm, "memit", tmp_path / "cf.json", out=tmp_path / "seq", num_edits=2, sequential=True, **common)
    both = editor.step(editor.step(editor.start(lm), [c.request for c in cases[:2]])[0], [c.request for c in cases[2:]])[0].lm  # fmt: skip
    assert [r["post"] for r in read("seq/cases.jsonl")] == score_cases(both, cases, 0, 0, None)
    assert [p["edits"] for p in summary["curve"]] == [0, 2, 4] and summary["protocol"] == {"num_edits": 2, "sequential": True}  # fmt: skip
    assert summary["curve"][0]["perplexity"] > 1 and len(summary["curve"][2]["kernel_norms"]) == lm.config.n_layers
    assert "| 4 |" in (tmp_path / "seq/summary.md").read_text()

    curve = (tmp_path / "seq/curve.jsonl").read_text().splitlines()  # interrupted before the last checkpoint
    (tmp_path / "seq/curve.jsonl").write_text("\n".join(curve[:2]) + "\n")
    (tmp_path / "seq/cases.jsonl").unlink()
    monkeypatch.setattr(type(editor), "step", lambda *a, **k: pytest.fail("a finished chunk was edited again"))
    again = run_eval(lm, "memit", tmp_path / "cf.json", out=tmp_path / "seq", num_edits=2, sequential=True, **common)
    assert again["curve"][2] == summary["curve"][2] | {"seconds_score": again["curve"][2]["seconds_score"]}
    with pytest.raises(ValueError, match="holds a run with .*'num_edits': 2, 'sequential': True.*, not .*'num_edits': 2, 'sequential': False"):  # fmt: skip
        run_eval(lm, "memit", tmp_path / "cf.json", out=tmp_path / "seq", num_edits=2, **common)
    point = at_once_point(tmp_path / "chunks")
    assert point["edits"] == 2 and point["ES"] == np.mean([r["post"]["efficacy_score"] for r in records])
    plot_runs({"sequential": tmp_path / "seq"}, {"2 at once": tmp_path / "chunks"}, tmp_path / "l.png")
    assert (tmp_path / "l.png").stat().st_size > 1000


def test_every_chunk_has_a_health_point_and_every_curve_every_th_is_scored(tiny_lm, tmp_path):
    """Scoring the edits so far grows with them; perplexity and kernel norms do not, so they follow every chunk."""
    from jrome.evaluation import load_dataset, methods, run_eval
    from jrome.evaluation.health import heldout_windows, kernel_norms, perplexity

    lm = tiny_lm("llama")
    (tmp_path / "cf.json").write_text(json.dumps(RECORDS))
    summary = run_eval(lm, "memit", tmp_path / "cf.json", out=tmp_path / "seq", hparams=MEMIT_SMALL, max_out_len=0,
                       ppl_tokens=256, num_edits=1, sequential=True, curve_every=3, progress=False)  # fmt: skip
    curve = summary["curve"]
    assert [p["edits"] for p in curve] == [0, 1, 2, 3, 4]
    assert [bool(p["metrics"]) for p in curve] == [False, False, False, True, True]
    editor = methods.METHODS["memit"].prepare(lm, tmp_path / "seq", MEMIT_SMALL, seed=0, progress=False)
    cases = load_dataset(tmp_path / "cf.json")
    two = editor.step(editor.step(editor.start(lm), [cases[0].request])[0], [cases[1].request])[0].lm
    assert curve[2]["perplexity"] == perplexity(two, heldout_windows(lm, 256)) != curve[0]["perplexity"]
    assert curve[2]["kernel_norms"] == kernel_norms(two)
    assert "| 2 | – | – | – |" in (tmp_path / "seq/summary.md").read_text()


def test_protocol_bad_input(tiny_lm, tmp_path):
    from jrome.evaluation import run_eval

    (tmp_path / "cf.json").write_text(json.dumps(RECORDS))
    lm = tiny_lm("llama")
    with pytest.raises(ValueError, match="method 'ft' edits one case at a time; num_edits > 1 and sequential take rome, r-rome, memit, alphaedit"):  # fmt: skip
        run_eval(lm, "ft", tmp_path / "cf.json", num_edits=2, progress=False)
    with pytest.raises(ValueError, match="num_edits=0 is not a number of cases; accepted: num_edits >= 1"):
        run_eval(lm, "memit", tmp_path / "cf.json", num_edits=0, progress=False)
    with pytest.raises(ValueError, match="curve_every=0 is not a number of chunks"):
        run_eval(lm, "memit", tmp_path / "cf.json", sequential=True, curve_every=0, progress=False)
    with pytest.raises(ValueError, match="targets_from reads the targets of cases edited from the unedited model"):
        run_eval(lm, "memit", tmp_path / "cf.json", sequential=True, num_edits=2, targets_from=tmp_path, progress=False)
