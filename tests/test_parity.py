"""The forward pass against transformers' own PyTorch models: same checkpoint, same numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY, build_torch_model

import jrome


def torch_run(model, ids, mask=None, positions=None):
    """Logits and each decoder layer's output from the PyTorch model (hooks are fine on the reference side)."""
    layers = model.base_model.h if hasattr(model.base_model, "h") else model.base_model.layers
    outputs = []
    handles = [
        layer.register_forward_hook(lambda _m, _i, out: outputs.append(out[0] if isinstance(out, tuple) else out))
        for layer in layers
    ]
    kwargs = {}
    if mask is not None:
        kwargs["attention_mask"] = torch.tensor(mask)
    if positions is not None:
        kwargs["position_ids"] = torch.tensor(positions)
    with torch.no_grad():
        logits = model(torch.tensor(ids), **kwargs).logits.numpy()
    for h in handles:
        h.remove()
    return logits, np.stack([o.numpy() for o in outputs])


@pytest.mark.parametrize("name", sorted(TINY))
def test_logits_and_every_layer_match_transformers(name, tiny_dir, rng):
    lm = jrome.load(tiny_dir(name))
    ids = rng.integers(0, 96, size=(2, 12))
    out = jrome.forward(lm, ids, interventions=jrome.Interventions(capture=("resid",)))
    ref_logits, ref_layers = torch_run(build_torch_model(name), ids)
    assert np.abs(ref_logits).max() > 1.0  # the tiny model is not trivially near zero
    np.testing.assert_allclose(np.asarray(out.logits), ref_logits, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(out.captured["resid"]), ref_layers, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(TINY))
def test_left_padding_matches_transformers_and_unpadded_rows(name, tiny_dir, rng):
    lm = jrome.load(tiny_dir(name))
    lengths = [12, 7]
    ids = np.ones((2, 12), np.int64)
    mask = np.zeros((2, 12), np.int64)
    rows = [rng.integers(2, 96, size=n) for n in lengths]
    for i, row in enumerate(rows):
        ids[i, 12 - len(row) :] = row
        mask[i, 12 - len(row) :] = 1
    positions = np.maximum(mask.cumsum(-1) - 1, 0)
    iv = jrome.Interventions(capture=("resid",))
    out = jrome.forward(lm, ids, mask, iv)
    ref_logits, ref_layers = torch_run(build_torch_model(name), ids, mask, positions)
    for i, row in enumerate(rows):
        real = slice(12 - len(row), 12)
        np.testing.assert_allclose(np.asarray(out.logits[i, real]), ref_logits[i, real], atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(
            np.asarray(out.captured["resid"][:, i, real]), ref_layers[:, i, real], atol=1e-4, rtol=1e-4
        )
        alone = jrome.forward(lm, row[None])
        np.testing.assert_allclose(np.asarray(out.logits[i, real]), np.asarray(alone.logits[0]), atol=1e-4, rtol=1e-4)


def test_right_padding_gives_the_same_logits_at_real_tokens(tiny_dir, rng):
    lm = jrome.load(tiny_dir("llama"))
    row = rng.integers(2, 96, size=6)
    ids = np.ones((1, 10), np.int64)
    ids[0, :6] = row
    mask = (np.arange(10) < 6).astype(np.int64)[None]
    padded = jrome.forward(lm, ids, mask, logits_at="last")
    alone = jrome.forward(lm, row[None], logits_at="last")
    np.testing.assert_allclose(np.asarray(padded.logits), np.asarray(alone.logits), atol=1e-5)
