"""MEMIT (Meng et al., *Mass-Editing Memory in a Transformer*, 2023): many facts at once, over several layers.

For each fact, the v* search (on the residual, `vsearch`) finds the hidden state z at the last of the edited
layers that makes the model say the new object. Then, layer by layer from the lowest, the remaining change
z − h is spread over the layers left, and each layer's MLP output projection gets the least-squares update
that maps the facts' keys K to their share R while disturbing the corpus keys as little as possible:

    ΔW = (λ C + K Kᵀ)⁻¹ K Rᵀ        (C = E[k kᵀ] over a corpus, λ = mom2_update_weight)

Keys are averaged within each context-template group and then over the groups (the original's
`compute_ks`); keys and current states are recomputed after each layer's update, since the update changes
what the layers above see. Like ROME, the edit is a pure function of the parameters and has an exact Undo.
Each request is its own key, as in the original: two prompts of one subject are two keys, and a repeated
request is a repeated column of K (the least-squares solve weighs its targets together).

`spread` takes the left factor's solve as an argument (`Solve`): MEMIT's is `memit_solve`; AlphaEdit
(`alphaedit`) writes the same targets with its null-space-projected solve.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from ..models.lm import LM
from .hparams import MemitHparams, given_or_preset
from .keys import grouped_keys, read_at_fact
from .published import statistics_for
from .requests import Request, parse_requests
from .solver import KeyStats
from .templates import memit_templates, template_groups
from .undo import RankOne, Undo, add_to_layer, down_kernel, with_down_kernel
from .vsearch import search


@dataclasses.dataclass(frozen=True)
class MemitUpdate:
    """MEMIT's change to one layer, and the exact weights it replaced (for undo)."""

    layer: int
    requests: tuple[Request, ...]
    left: np.ndarray  # [F, N] (λ C + K Kᵀ)⁻¹ K (AlphaEdit: its projected solve)
    share: np.ndarray  # [N, D] each fact's share of its remaining change at this layer
    keys: np.ndarray  # [N, F] template-averaged keys at this layer when it was updated
    targets: np.ndarray  # [N, D] the residual targets z at the last edited layer
    losses: np.ndarray | None  # [N, steps, 4] the v* objective of each fact (total, nll, kl, weight decay)
    old_kernel: jax.Array
    seconds: float  # since the first layer's update began

    @property
    def delta(self) -> np.ndarray:
        """[F, D] the change added to the layer's output kernel."""
        return self.left @ self.share


def rank_one(undo: Undo) -> RankOne:
    """The factors of a one-fact MEMIT edit: each layer's change is then rank one, (λC + kkᵀ)⁻¹k times the
    fact's share (so such edits can be scored as rows of one forward, as ROME's are)."""
    if any(u.left.shape[1] != 1 for u in undo.edits):
        raise ValueError("rank_one takes a MEMIT edit of one fact; an edit of N facts has rank N at each layer")
    return RankOne(
        tuple(u.layer for u in undo.edits),
        np.stack([u.left[:, 0] for u in undo.edits]),
        np.stack([u.share[0] for u in undo.edits]),
    )


def resolve_hparams(lm: LM, hparams: MemitHparams | dict | None, method: str = "memit") -> Any:
    """The hyperparameters of a MEMIT (or AlphaEdit) edit: given, or this model's preset of `method` with the given
    overrides; checked."""
    hp = given_or_preset(lm, hparams, MemitHparams, method)
    if hp.layers is None:
        raise ValueError(
            f"no {hp.METHOD} layers for {lm.name or lm.config.family!r}: pass hparams={{'layers': [...]}}, a few "
            "consecutive layers ending where a causal trace of the last subject token's MLP output peaks"
        )
    bad = [layer for layer in hp.layers if not 0 <= layer < lm.config.n_layers]
    if bad:
        raise ValueError(f"layers {bad} are out of range: this model has layers 0..{lm.config.n_layers - 1}")
    if hp.v_loss_layer is not None and not hp.layers[-1] <= hp.v_loss_layer < lm.config.n_layers:
        raise ValueError(f"v_loss_layer {hp.v_loss_layer} must lie in [{hp.layers[-1]}, {lm.config.n_layers - 1}]")
    return hp


def context_groups(lm: LM, hp: MemitHparams, seed: int = 0, progress: bool = False) -> tuple[tuple[str, ...], ...]:
    """MEMIT's template groups: from the explicit templates in hp, else generated (cached per model)."""
    return template_groups(hp.context_templates) if hp.context_templates else memit_templates(lm, seed, progress)


def targets(
    lm: LM,
    reqs: Sequence[Request],
    target_ids: Sequence[Sequence[int]],
    hp: MemitHparams,
    groups: Sequence[Sequence[str]],
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Phase one: each fact's residual target z at the last edited layer, by the v* search on the residual
    over every template: (z [N, D] float64, losses [N, steps, 4])."""
    flat = tuple(t for g in groups for t in g)
    nll_layer = None if hp.v_loss_layer in (None, lm.config.n_layers - 1) else hp.v_loss_layer
    title = f"MEMIT targets at layer {hp.layers[-1]}" if progress else None
    delta, z_init, losses = search(
        lm, reqs, flat, target_ids, hp.layers[-1], hp, site="resid", nll_layer=nll_layer, progress=title
    )
    return z_init + delta, losses


Solve = Callable[[int, np.ndarray], np.ndarray]  # (index into hp.layers, keys [N, F]) → the left factor [F, N]


def memit_solve(hp: MemitHparams, stats: dict[int, KeyStats]) -> Solve:
    """MEMIT's left factor at the i-th edited layer: (λ C + Kᵀ K)⁻¹ Kᵀ, in float64 (keys as rows here)."""

    def solve(i: int, keys: np.ndarray) -> np.ndarray:
        c = stats[hp.layers[i]].covariance
        return np.linalg.solve(hp.mom2_update_weight * c + keys.T @ keys, keys.T)

    return solve


def spread(
    lm: LM,
    reqs: Sequence[Request],
    z: np.ndarray,
    hp: MemitHparams,
    solve: Solve,
    groups: Sequence[Sequence[str]],
    losses: np.ndarray | None = None,
) -> tuple[LM, Undo]:
    """Phase two: write the targets z into the layers, lowest first, each taking its share of what is left
    through the left factor `solve` gives (MEMIT: `memit_solve`)."""
    start = time.perf_counter()
    current, edits = lm, []
    prompts, subjects = [r.prompt for r in reqs], [r.subject for r in reqs]
    for i, layer in enumerate(hp.layers):
        keys = grouped_keys(current, reqs, groups, layer, hp.fact_token)
        now = read_at_fact(current, prompts, subjects, hp.layers[-1], hp.fact_token, site="resid")
        share = (z - now) / (len(hp.layers) - i)
        left = solve(i, keys)  # [F, N]
        old = down_kernel(current.params)[layer]
        kernel = add_to_layer(down_kernel(current.params), layer, left @ share)
        current = current.replace(params=with_down_kernel(current.params, kernel))
        seconds = time.perf_counter() - start
        edits.append(MemitUpdate(layer, tuple(reqs), left, share, keys, z, losses, old, seconds))
    return current, Undo(tuple(edits))


def prepared(
    lm: LM, requests: Any, hparams: Any, method: str, seed: int, progress: bool
) -> tuple[list[Request], list[list[int]], Any, tuple[tuple[str, ...], ...]]:
    """What a MEMIT-style edit needs, checked before any work: requests, target ids, hyperparameters (`method`'s
    preset with hparams' overrides) and the template groups."""
    reqs, target_ids = parse_requests(lm, requests, method)
    hp = resolve_hparams(lm, hparams, method.lower())
    return reqs, target_ids, hp, context_groups(lm, hp, seed, progress)


def layer_stats(lm: LM, hp: MemitHparams, stats: dict[int, KeyStats] | None, progress: bool) -> dict[int, KeyStats]:
    """Every edited layer's key statistics: given (checked), else the published ones if here, else computed."""
    if stats is None:
        stats = statistics_for(lm, hp, hp.layers, progress=progress)
    missing = [layer for layer in hp.layers if layer not in stats]
    if missing:
        raise ValueError(f"stats has no statistics for layers {missing}")
    return stats


def edit(
    lm: LM,
    requests: Request | dict | Sequence[Request | dict],
    hparams: MemitHparams | dict | None = None,
    stats: dict[int, KeyStats] | None = None,
    *,
    z: np.ndarray | None = None,
    seed: int = 0,
    progress: bool = True,
) -> tuple[LM, Undo]:
    """Apply MEMIT to all requests together; return the edited LM and an Undo. `lm` itself is not changed.

    stats: {layer: KeyStats} for every edited layer (default: the published ones if here, else computed in one pass
    and cached on disk).
    z: the requests' residual targets [N, D] when already known (an earlier search on this model with these settings,
    as the original's --use_cache reads them); default: searched.
    progress: say what the slow steps do (statistics, templates, each fact's v* search) on stderr.
    """
    reqs, target_ids, hp, groups = prepared(lm, requests, hparams, "MEMIT", seed, progress)
    stats = layer_stats(lm, hp, stats, progress)
    z, losses = known_or_searched(lm, reqs, target_ids, hp, groups, z, progress)
    return spread(lm, reqs, z, hp, memit_solve(hp, stats), groups, losses)


def known_or_searched(
    lm: LM, reqs: Sequence[Request], target_ids: Any, hp: MemitHparams, groups: Any, z: Any, progress: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """(z, losses): the given targets (checked: one per request; no losses), else `targets` searches them."""
    if z is None:
        return targets(lm, reqs, target_ids, hp, groups, progress)
    z = np.asarray(z, np.float64)
    if z.shape != (len(reqs), lm.config.d_model):
        raise ValueError(f"targets have shape {z.shape}; these requests need {(len(reqs), lm.config.d_model)}")
    return z, None
