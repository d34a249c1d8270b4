"""Interventions as data: replacing, adding, capturing, batching with vmap, and differentiating through them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrome
from jrome import Interventions, Patch


@pytest.fixture(scope="module")
def lm(tiny_dir):
    return jrome.load(tiny_dir("llama"))


@pytest.fixture(scope="module")
def ids():
    return np.random.default_rng(1).integers(0, 96, size=(2, 9))


def clean(lm, ids):
    return jrome.forward(lm, ids, interventions=Interventions(capture=("resid", "mlp", "attn", "mlp_key")))


@pytest.mark.parametrize("site", ["resid", "mlp", "attn"])
def test_replacing_a_state_with_its_own_value_changes_nothing(lm, ids, site):
    base = clean(lm, ids)
    layer, token = 1, 4
    value = base.captured[site][layer, :, token]  # [B, D]: a value per row
    patch = Patch(layer=jnp.array([layer]), token=jnp.array([token]), value=value[None])
    out = jrome.forward(lm, ids, interventions=Interventions(**{site: patch}))
    np.testing.assert_array_equal(np.asarray(out.logits), np.asarray(base.logits))


@pytest.mark.parametrize("site", ["resid", "mlp", "attn"])
def test_a_replacement_leaves_earlier_tokens_untouched_and_changes_later_ones(lm, ids, site):
    base = clean(lm, ids)
    layer, token = 1, 4
    value = jnp.full((lm.config.d_model,), 3.0)
    iv = Interventions(**{site: Patch.at(layer, token, value)}, capture=("resid",))
    out = jrome.forward(lm, ids, interventions=iv)
    np.testing.assert_array_equal(np.asarray(out.logits[:, :token]), np.asarray(base.logits[:, :token]))
    np.testing.assert_array_equal(
        np.asarray(out.captured["resid"][:, :, :token]), np.asarray(base.captured["resid"][:, :, :token])
    )
    np.testing.assert_array_equal(np.asarray(out.captured["resid"][:layer]), np.asarray(base.captured["resid"][:layer]))
    assert np.abs(np.asarray(out.logits[:, token:] - base.logits[:, token:])).min(axis=-1).max() > 0
    if site == "resid":
        np.testing.assert_array_equal(np.asarray(out.captured["resid"][layer, :, token]), np.full((2, 48), 3.0))


def test_vmap_over_interventions_equals_a_loop(lm, ids):
    base = clean(lm, ids)
    layers = jnp.array([0, 1, 2, 1, 0])
    tokens = jnp.array([3, 5, 8, 0, 6])
    values = jnp.asarray(np.random.default_rng(2).normal(size=(5, lm.config.d_model)), jnp.float32)

    def run(layer, token, value):
        patch = Patch(layer=layer[None], token=token[None], value=value[None])
        return jrome.forward(lm, ids, interventions=Interventions(resid=patch)).logits

    batched = jax.jit(jax.vmap(run))(layers, tokens, values)
    for i in range(5):
        np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(run(layers[i], tokens[i], values[i])), atol=1e-5)
    assert not np.allclose(np.asarray(batched[0]), np.asarray(base.logits))


def test_gradients_flow_through_an_additive_mlp_intervention(lm, ids):
    layer, token, target = 1, 5, 7

    def logp(delta):
        iv = Interventions(mlp_add=Patch.at(layer, token, delta))
        logits = jrome.forward(lm, ids[:1], interventions=iv, logits_at="last").logits[0, -1]
        return jax.nn.log_softmax(logits)[target]

    delta = jnp.zeros(lm.config.d_model)
    grad = jax.grad(logp)(delta)
    assert float(jnp.linalg.norm(grad)) > 1e-3
    direction = grad / jnp.linalg.norm(grad)
    eps = 1e-2
    numeric = (logp(delta + eps * direction) - logp(delta - eps * direction)) / (2 * eps)
    np.testing.assert_allclose(float(numeric), float(jnp.vdot(grad, direction)), rtol=1e-2)


@pytest.mark.parametrize(("site", "read"), [("mlp_add", "mlp"), ("resid_add", "resid")])
def test_additive_interventions_add_to_their_site(lm, ids, site, read):
    """mlp_add adds to the MLP output (ROME's v* site), resid_add to the residual after the layer (MEMIT's)."""
    base = clean(lm, ids)
    delta = jnp.linspace(-1, 1, lm.config.d_model)
    out = jrome.forward(lm, ids, interventions=Interventions(**{site: Patch.at(2, 3, delta)}, capture=(read,)))
    np.testing.assert_allclose(
        np.asarray(out.captured[read][2, :, 3]), np.asarray(base.captured[read][2, :, 3] + delta), atol=1e-6
    )
    np.testing.assert_array_equal(np.asarray(out.captured[read][:2]), np.asarray(base.captured[read][:2]))


def test_embedding_noise_only_reaches_later_tokens(lm, ids):
    base = clean(lm, ids)
    noise = np.zeros((9, lm.config.d_model), np.float32)
    noise[5] = 2.0
    out = jrome.forward(lm, ids, interventions=Interventions(embed_add=jnp.asarray(noise)))
    np.testing.assert_array_equal(np.asarray(out.logits[:, :5]), np.asarray(base.logits[:, :5]))
    assert not np.allclose(np.asarray(out.logits[:, 5:]), np.asarray(base.logits[:, 5:]))
    zero = jrome.forward(lm, ids, interventions=Interventions(embed_add=jnp.zeros((2, 9, lm.config.d_model))))
    np.testing.assert_array_equal(np.asarray(zero.logits), np.asarray(base.logits))


def test_per_row_tokens_and_values(lm, ids):
    """A write with a column per row ([K, B] tokens, [K, B, D] values) equals separate runs per row."""
    values = jnp.asarray(np.random.default_rng(3).normal(size=(1, 2, lm.config.d_model)), jnp.float32)
    patch = Patch(layer=jnp.array([2]), token=jnp.array([[3, 6]]), value=values)
    both = jrome.forward(lm, ids, interventions=Interventions(mlp=patch)).logits
    for row, col in enumerate([3, 6]):
        alone = jrome.forward(lm, ids[row : row + 1], interventions=Interventions(mlp=Patch.at(2, col, values[0, row])))
        np.testing.assert_allclose(np.asarray(both[row]), np.asarray(alone.logits[0]), atol=1e-5)


def test_captures_are_consistent_with_the_weights(lm, ids):
    """The captured MLP key is the input to the output projection: key @ W_down is the captured MLP output."""
    out = clean(lm, ids)
    cfg = lm.config
    assert out.captured["resid"].shape == (cfg.n_layers, 2, 9, cfg.d_model)
    assert out.captured["mlp_key"].shape == (cfg.n_layers, 2, 9, cfg.d_mlp)
    down = lm.params["blocks"]["mlp"]["down"]["kernel"]
    np.testing.assert_allclose(
        np.asarray(jnp.einsum("lbtf,lfd->lbtd", out.captured["mlp_key"], down, precision="highest")),
        np.asarray(out.captured["mlp"]),
        atol=1e-4,
    )


def test_switched_off_writes_do_nothing(lm, ids):
    base = clean(lm, ids)
    patch = Patch(layer=jnp.array([-1, -1]), token=jnp.array([2, 3]), value=jnp.ones((2, lm.config.d_model)))
    out = jrome.forward(lm, ids, interventions=Interventions(resid=patch, mlp_add=patch))
    np.testing.assert_array_equal(np.asarray(out.logits), np.asarray(base.logits))


def test_bad_interventions_are_clear_errors():
    with pytest.raises(ValueError, match="accepted: resid"):
        Interventions(capture=("hidden",))
    with pytest.raises(ValueError, match="one layer, token and value per write"):
        Patch.at([1, 2], [3], jnp.ones((2, 4)))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_row_edits_run_each_row_on_its_own_edited_weights(tiny_dir, family):
    from jrome.editing.undo import RankOne, row_edits

    model = jrome.load(tiny_dir(family))
    rng = np.random.default_rng(3)
    f, d = model.config.d_mlp, model.config.d_model
    one = RankOne((1,), rng.normal(size=(1, f)), rng.normal(size=(1, d)))
    two = RankOne((0, 1), rng.normal(size=(2, f)), rng.normal(size=(2, d)))
    tokens = rng.integers(0, 96, size=(3, 9))
    for edits in ([one, None, one], [two, two, None]):
        rows = jrome.forward(model, tokens, interventions=Interventions(row_edits=row_edits(edits))).logits
        for r, e in enumerate(edits):
            alone = jrome.forward(model if e is None else e.apply(model), tokens[r : r + 1]).logits[0]
            np.testing.assert_allclose(rows[r], alone, atol=2e-5, rtol=1e-5)
        assert np.abs(rows[0] - jrome.forward(model, tokens[:1]).logits[0]).max() > 1e-2  # the edit matters
    with pytest.raises(ValueError, match=r"same layers; got \(1,\) and \[\(0, 1\)\]"):
        row_edits([one, two])
    with pytest.raises(ValueError, match="needs an edit, or `like`"):
        row_edits([None, None])
