"""MEMIT (Meng et al., *Mass-Editing Memory in a Transformer*, 2023): many facts at once, over several layers.

For each fact, ROME's v* search (on the residual) finds the hidden state z at the last of the edited layers
that makes the model say the new object. Then, layer by layer from the lowest, the remaining change
z − h is spread over the layers left, and each layer's MLP output projection gets the least-squares update
that maps the facts' keys K to their share R while disturbing the corpus keys as little as possible:

    ΔW = (λ C + K Kᵀ)⁻¹ K Rᵀ        (C = E[k kᵀ] over a corpus, λ = mom2_update_weight)

Keys and current states are recomputed after each layer's update, since the update changes what the layers
above see. Like ROME, the edit is a pure function of the parameters and comes with an exact Undo.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ..interventions import Interventions
from ..models.config import ModelConfig
from ..models.forward import forward_tokens
from ..models.lm import LM
from ..tokens import encode, subject_range
from .hparams import MemitHparams, hparams_for
from .rome import Request, Undo, _with_kernel, context_templates, optimise_v, parse_requests, template_keys, v_batch
from .stats import KeyStats, key_statistics


@partial(jax.jit, static_argnums=(0, 4))
def _resid_at(
    cfg: ModelConfig, params: dict, ids: jax.Array, mask: jax.Array, layer: int, cols: jax.Array
) -> jax.Array:
    """[B, D]: the residual after `layer` at one column per row."""
    out = forward_tokens(cfg, params, ids, mask, Interventions(capture=("resid",)), cols[:, None])
    return out.captured["resid"][layer][jnp.arange(ids.shape[0]), cols]


def current_states(lm: LM, reqs: Sequence[Request], layer: int, fact_token: str) -> np.ndarray:
    """[N, D]: each request's residual after `layer` at its fact token, in the bare prompt."""
    texts = [r.text for r in reqs]
    ids, mask = encode(lm.tokenizer, texts, multiple_of=8)
    cols = []
    for i, (text, req) in enumerate(zip(texts, reqs, strict=True)):
        start, end = subject_range(lm.tokenizer, text, req.subject)
        n = int(mask[i].sum())
        cols.append(ids.shape[1] - n + {"subject_last": end - 1, "subject_first": start, "last": n - 1}[fact_token])
    return np.asarray(_resid_at(lm.config, lm.params, ids, mask, layer, jnp.asarray(cols)), np.float64)


@dataclasses.dataclass(frozen=True)
class MemitUpdate:
    """MEMIT's change to one layer, and the exact weights it replaced (for undo)."""

    layer: int
    requests: tuple[Request, ...]
    delta: np.ndarray  # [F, D] added to the layer's output kernel
    keys: np.ndarray  # [N, F] template-averaged keys at this layer when it was updated
    targets: np.ndarray  # [N, D] the residual targets z at the last edited layer
    losses: np.ndarray  # [N, steps] the v* objective of each fact
    old_kernel: jax.Array
    seconds: float


def _resolve(lm: LM, hparams: MemitHparams | dict | None) -> MemitHparams:
    if isinstance(hparams, MemitHparams):
        hp = hparams
    else:
        hp = hparams_for(lm.name, lm.config.family, "memit")
        if hparams:
            hp = hp.override(**hparams)
    if hp.layers is None:
        raise ValueError(
            f"no MEMIT layers for {lm.name or lm.config.family!r}: pass hparams={{'layers': [...]}}, a few consecutive "
            "layers ending where a causal trace of the last subject token's MLP output peaks"
        )
    bad = [layer for layer in hp.layers if not 0 <= layer < lm.config.n_layers]
    if bad:
        raise ValueError(f"layers {bad} are out of range: this model has layers 0..{lm.config.n_layers - 1}")
    return hp


def edit(
    lm: LM,
    requests: Request | dict | Sequence[Request | dict],
    hparams: MemitHparams | dict | None = None,
    stats: dict[int, KeyStats] | None = None,
    *,
    seed: int = 0,
) -> tuple[LM, Undo]:
    """Apply MEMIT to all requests together; return the edited LM and an Undo. `lm` itself is not changed.

    stats: {layer: KeyStats} for every edited layer (default: computed in one pass and cached on disk).
    """
    reqs, targets = parse_requests(lm, requests, "MEMIT")
    hp = _resolve(lm, hparams)
    subjects = [r.subject for r in reqs]
    if len(set(subjects)) < len(subjects):
        raise ValueError("MEMIT edits each subject once per batch; these requests repeat a subject")
    if stats is None:
        stats = key_statistics(lm, hp.layers, hp.mom2_corpus, hp.mom2_n_tokens, progress=False)
    missing = [layer for layer in hp.layers if layer not in stats]
    if missing:
        raise ValueError(f"stats has no statistics for layers {missing}")
    start = time.perf_counter()
    search = hp.search()
    templates = context_templates(lm, search, seed)
    z_layer = hp.layers[-1]
    zs, losses = [], []
    for req, target_ids in zip(reqs, targets, strict=True):
        b = v_batch(lm, req, templates, target_ids, hp.fact_token)
        delta, z_init, loss = optimise_v(
            lm.config, lm.params, b.ids, b.mask, b.fact_cols, b.out_cols, b.target_ids, b.rows,
            layer=z_layer, hp=search, n_rewrite=b.n_rewrite, site="resid",
        )  # fmt: skip
        zs.append(np.asarray(z_init, np.float64) + np.asarray(delta, np.float64))
        losses.append(np.asarray(loss))
    z = np.stack(zs)
    current, edits = lm, []
    for i, layer in enumerate(hp.layers):
        keys = np.stack([template_keys(current, r, templates, layer, hp.fact_token).mean(axis=0) for r in reqs])
        share = (z - current_states(current, reqs, z_layer, hp.fact_token)) / (len(hp.layers) - i)
        c = stats[layer].covariance
        delta_w = np.linalg.solve(hp.mom2_update_weight * c + keys.T @ keys, keys.T) @ share  # [F, D]
        down = current.params["blocks"]["mlp"]["down"]
        old = down["kernel"][layer]
        kernel = down["kernel"].at[layer].add(jnp.asarray(delta_w, down["kernel"].dtype))
        current = current.replace(params=_with_kernel(current.params, kernel))
        edits.append(
            MemitUpdate(layer, tuple(reqs), delta_w, keys, z, np.stack(losses), old, time.perf_counter() - start)
        )
    return current, Undo(tuple(edits))
