"""AlphaEdit (Fang et al., *AlphaEdit: Null-Space Constrained Knowledge Editing*, ICLR 2025; jianghoucheng/AlphaEdit):
MEMIT whose every update lies in the null space of the knowledge to keep, for edits that arrive batch after batch.

The targets z and the layer-by-layer spread are MEMIT's (`memit.targets`, `memit.spread`); the left factor is not:

    P  = U₀ U₀ᵀ,  U₀ the eigenvectors of C = E[k kᵀ] whose eigenvalue is below nullspace_threshold
    ΔW = (P (K Kᵀ + K_p K_pᵀ) + L2·I)⁻¹ P K Rᵀ

with K the batch's keys and K_p K_pᵀ the sum over every earlier batch's keys (`cache`, one [F, F] per edited layer),
so a new batch leaves both the corpus's keys (through P) and the earlier edits in place. P is made once, from the
unedited model's C; after each batch the cache adds that batch's keys at each layer, as the authors' code does (it
reads them again from the edited model, where they are the same: an update at a layer changes neither its own keys
nor those below). The authors solve in float32, jrome in float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..models.lm import LM
from . import memit
from .hparams import AlphaEditHparams
from .requests import Request
from .solver import KeyStats
from .undo import Undo


def projection(c: np.ndarray, threshold: float) -> np.ndarray:
    """[F, F]: the projector onto the eigenvectors of C with eigenvalue below `threshold` (float64)."""
    values, vectors = np.linalg.eigh(np.asarray(c, np.float64))
    small = vectors[:, values < threshold]
    return small @ small.T


def null_spaces(stats: dict[int, KeyStats], hp: AlphaEditHparams) -> np.ndarray:
    """[layers, F, F]: each edited layer's null-space projector; a threshold below every eigenvalue is an error."""
    out = []
    for layer in hp.layers:
        c = stats[layer].covariance
        smallest = float(np.linalg.eigvalsh(c)[0])
        if smallest >= hp.nullspace_threshold:
            raise ValueError(
                f"nullspace_threshold {hp.nullspace_threshold:g} is below every eigenvalue of layer {layer}'s C (the "
                f"smallest is {smallest:.3g}), so its null space is empty; raise it"
            )
        out.append(projection(c, hp.nullspace_threshold))
    return np.stack(out)


def empty_cache(projections: np.ndarray) -> np.ndarray:
    """The keys of no earlier batch: zeros shaped like the projectors."""
    return np.zeros_like(projections)


def alpha_solve(hp: AlphaEditHparams, projections: np.ndarray, cache: np.ndarray) -> memit.Solve:
    """AlphaEdit's left factor at the i-th edited layer: (P (Kᵀ K + cache) + L2·I)⁻¹ P Kᵀ (keys as rows here)."""

    def solve(i: int, keys: np.ndarray) -> np.ndarray:
        p = projections[i]
        a = p @ (keys.T @ keys + cache[i]) + hp.L2 * np.eye(p.shape[0])
        return np.linalg.solve(a, p @ keys.T)

    return solve


def edit(
    lm: LM,
    requests: Request | dict | Sequence[Request | dict],
    hparams: AlphaEditHparams | dict | None = None,
    stats: dict[int, KeyStats] | None = None,
    *,
    projections: np.ndarray | None = None,
    cache: np.ndarray | None = None,
    z: np.ndarray | None = None,
    seed: int = 0,
    progress: bool = True,
) -> tuple[LM, Undo, np.ndarray]:
    """Apply AlphaEdit to all requests together: (edited LM, Undo, the cache with this batch's keys added).

    projections: [layers, F, F] from `null_spaces(stats, hp)` (default: made from stats, which are then computed
    if not given); cache: the previous call's (default: no earlier batch); z: known targets, as for `memit.edit`.
    `lm` itself is not changed.
    """
    reqs, target_ids, hp, groups = memit.prepared(lm, requests, hparams, "AlphaEdit", seed, progress)
    if projections is None:
        projections = null_spaces(memit.layer_stats(lm, hp, stats, progress), hp)
    cache = empty_cache(projections) if cache is None else cache
    z, losses = memit.known_or_searched(lm, reqs, target_ids, hp, groups, z, progress)
    new, undo = memit.spread(lm, reqs, z, hp, alpha_solve(hp, projections, cache), groups, losses)
    return new, undo, cache + np.stack([u.keys.T @ u.keys for u in undo.edits])
