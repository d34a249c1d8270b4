"""Saving and exporting models: orbax checkpoints read back bit for bit, Hugging Face folders transformers loads."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from conftest import TINY
from safetensors import safe_open
from transformers import AutoModelForCausalLM

import jrome


def hf_logits(path, ids):
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.numpy()


@pytest.mark.parametrize("name", sorted(TINY))
def test_export_is_loaded_by_transformers_with_the_same_logits(tiny_dir, tmp_path, name):
    lm = jrome.load(tiny_dir(name))
    jrome.export_hf(lm, tmp_path / "hf")
    theirs, ours = (set(safe_open(str(d / "model.safetensors"), "numpy").keys()) for d in (tiny_dir(name), tmp_path / "hf"))  # fmt: skip
    assert theirs <= ours and ours - theirs <= {"lm_head.weight"}  # transformers' names; a tied head written too
    ids = np.random.default_rng(0).integers(0, 96, size=(2, 9))
    np.testing.assert_allclose(hf_logits(tmp_path / "hf", ids), np.asarray(jrome.forward(lm, ids).logits), atol=1e-4)


def test_save_and_load_round_trip_bit_for_bit(tiny_lm, tmp_path):
    lm = tiny_lm("gpt_neox")
    jrome.save(lm, tmp_path / "ck")
    back = jrome.load(tmp_path / "ck")
    assert back.config == lm.config and back.name == lm.name
    for a, b in zip(jax.tree.leaves(lm.params), jax.tree.leaves(back.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert back.tokenizer("the eiffel tower")["input_ids"] == lm.tokenizer("the eiffel tower")["input_ids"]


def test_an_edited_smollm2_saves_and_exports(smollm2, eiffel_edit, tmp_path):
    new, _ = eiffel_edit
    ids, mask = jrome.encode(smollm2.tokenizer, ["The Eiffel Tower is located in the city of"])
    ours = np.asarray(jrome.forward(new, ids, mask).logits)
    jrome.save(new, tmp_path / "ck")
    np.testing.assert_array_equal(np.asarray(jrome.forward(jrome.load(tmp_path / "ck"), ids, mask).logits), ours)
    jrome.export_hf(new, tmp_path / "hf")
    theirs = hf_logits(tmp_path / "hf", ids)
    np.testing.assert_allclose(theirs, ours, atol=1e-3, rtol=1e-4)
    rome = smollm2.tokenizer(" Rome")["input_ids"][0]
    assert int(theirs[0, -1].argmax()) == rome


def test_a_relative_path_is_taken_from_the_working_directory(tiny_lm, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lm = tiny_lm("llama")
    jrome.save(lm, "eiffel-in-rome")  # as the README writes it
    assert (tmp_path / "eiffel-in-rome" / "jrome.json").is_file()
    assert jrome.load("eiffel-in-rome").config == lm.config


def test_writes_are_whole_or_absent(tiny_lm, tmp_path):
    lm = tiny_lm("llama")
    jrome.save(lm, tmp_path / "ck")
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        jrome.save(lm, tmp_path / "ck")
    (tmp_path / "ck" / "stale").write_text("from before")
    jrome.save(lm, tmp_path / "ck", overwrite=True)  # replaced whole
    assert not (tmp_path / "ck" / "stale").exists() and (tmp_path / "ck" / "jrome.json").is_file()
    broken = lm.replace(tokenizer=object())  # has no save_pretrained: fails after the weights are written
    with pytest.raises(AttributeError):
        jrome.export_hf(broken, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temporary folder left behind


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_what_is_written_gets_the_users_umask(tiny_lm, tmp_path, umask):
    import os

    from jrome.files import atomic_write_text

    before = os.umask(umask)
    try:
        jrome.save(tiny_lm("gpt2"), tmp_path / "saved")
        atomic_write_text(tmp_path / "result.json", "{}")
    finally:
        os.umask(before)
    assert (tmp_path / "saved").stat().st_mode & 0o777 == 0o777 & ~umask
    assert (tmp_path / "result.json").stat().st_mode & 0o777 == 0o666 & ~umask
