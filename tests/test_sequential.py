"""Sequential editing as a fold over an editor state (ROME, MEMIT, AlphaEdit), on a tiny model: no hidden state, one
compiled program per batch shape, exact resumption from a saved state; and AlphaEdit's algebra."""

from __future__ import annotations

import chex
import jax
import numpy as np
import pytest

from jrome.editing import alphaedit
from jrome.editing.hparams import AlphaEditHparams, MemitHparams, RomeHparams
from jrome.editing.sequential import AlphaEditor, MemitEditor, RomeEditor, fold, load_state, save_state
from jrome.editing.stats import KeyStats
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


class Compiles:
    """Counts the programs JAX lowers (each new shape or function) while it is active."""

    EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"

    def __enter__(self):
        self.count = 0
        jax.monitoring.register_event_duration_secs_listener(self.listen)
        return self

    def listen(self, event: str, *_, **__) -> None:
        self.count += event == self.EVENT

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self.listen)


@pytest.mark.parametrize("method", ["rome", "memit", "alphaedit"])
def test_a_stream_is_a_fold_that_compiles_once_and_leaks_into_no_other_stream(tiny_lm, stats, method):
    lm = tiny_lm("llama")
    editor = editors(stats)[method]
    start = editor.start(lm)
    alone, _ = editor.step(start, batch(SECOND))  # the second batch on the unedited model
    first, _ = editor.step(start, batch(FIRST))
    with Compiles() as compiled:
        second, undo = editor.step(first, batch(SECOND))
    assert compiled.count == 0  # the second batch of one shape reuses every program of the first
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
    save_state(tmp_path / "state.npz", first)
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
