"""ROME (paper §3): a rank-one edit of one MLP output projection that makes the model state a new fact.

    key   k* — the MLP key at the subject's last token, averaged over the context templates (`keys`);
    value v* — the MLP output there that makes the model say the new object (`vsearch`);
    edit  Ŵ = W + û Λᵀ with û = C⁻¹k* / |C⁻¹k*| and Λ = (v* − W k − b) / (û·k), k the bare prompt's key,
          so that Ŵ k + b = v*.

`edit` is a pure function of the parameter tree: it returns a new LM and an `Undo` that restores the old
weights bit for bit; the caller's LM is never changed.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from ..models.lm import LM
from .hparams import RomeHparams, given_or_preset
from .keys import template_keys
from .published import read_layer_stats, statistics_for
from .requests import Request, parse_requests
from .solver import KeySolver, KeyStats
from .templates import rome_templates
from .undo import RankOne, Undo, down_kernel
from .vsearch import search


def rank_one_update(w: np.ndarray, u: np.ndarray, k: np.ndarray, v: np.ndarray, bias: np.ndarray | None = None):
    """(Λ, û) of the closed form for a kernel w [F, D] (out = k @ w + bias): Ŵ = w + outer(û, Λ) maps k to v.

    û = u / |u| (u = C⁻¹k*); Λ = (v − (k @ w + bias)) / (û·k). Computed in float64. Any key orthogonal to
    û maps exactly as before.
    """
    u_hat = np.asarray(u, np.float64) / np.linalg.norm(u)
    k = np.asarray(k, np.float64)
    current = k @ np.asarray(w, np.float64) + (0.0 if bias is None else np.asarray(bias, np.float64))
    denom = u_hat @ k
    if not np.isfinite(denom) or abs(denom) < 1e-12 * np.linalg.norm(k):
        raise ValueError("the edit key is orthogonal to C⁻¹k*: the rank-one update is undefined for it")
    return (np.asarray(v, np.float64) - current) / denom, u_hat


@dataclasses.dataclass(frozen=True)
class Edit:
    """One applied rewrite: what was computed, and the exact weights it replaced (for undo)."""

    request: Request
    layer: int
    u_hat: np.ndarray  # [F] unit C⁻¹k*
    lam: np.ndarray  # [D] the right vector Λ
    k: np.ndarray  # [F] the key Ŵ maps to v* (the bare prompt's; r-ROME: k*)
    k_star: np.ndarray  # [F] template-averaged key
    v_star: np.ndarray  # [D]
    losses: np.ndarray  # [steps, 4] total, nll, kl, weight decay per Adam step (NaN after an early stop)
    old_kernel: jax.Array  # [F, D] the layer's kernel before this edit, bit for bit
    seconds: float

    @property
    def delta(self) -> jax.Array:
        """[F, D] û Λᵀ in float32, as `apply` adds it."""
        return self.rank_one.deltas()[0]

    @property
    def rank_one(self) -> RankOne:
        """Ŵ = W + û Λᵀ as factors (to apply it, or to score the edited model as one row of a batch)."""
        return RankOne((self.layer,), self.u_hat[None], self.lam[None])

    def __treescope_repr__(self, path: str | None, subtree_renderer: Any) -> Any:
        from ..views import edit_repr

        return edit_repr(self, path, subtree_renderer)


def resolve_stats(
    lm: LM, hp: RomeHparams, layer: int, stats: Any, progress: bool = True
) -> KeyStats | np.ndarray | None:
    """The key statistics for `layer`: given (KeyStats, an array C, a statistics file in the original's layout,
    or {layer: one of those}), else the published ones if they are here, else computed over hp's corpus (cached)."""
    if not hp.mom2_adjustment:
        return None
    if isinstance(stats, dict):
        if layer not in stats:
            raise ValueError(f"stats has layers {sorted(stats)}, not the edited layer {layer}")
        stats = stats[layer]
    if isinstance(stats, str | os.PathLike):
        return read_layer_stats(stats, layer)
    if stats is None:
        return statistics_for(lm, hp, layer, progress=progress)[layer]
    return stats


def resolve_hparams(lm: LM, hparams: RomeHparams | dict | None) -> RomeHparams:
    """The hyperparameters of an edit: given, or this model's preset with the given overrides; checked."""
    hp = given_or_preset(lm, hparams, RomeHparams, "rome")
    if hp.layer is None:
        raise ValueError(
            f"no ROME layer for {lm.name or lm.config.family!r}: pass hparams={{'layer': N}}, choosing N from a causal "
            "trace (the MLP layer where restoring the last subject token helps most)"
        )
    if not 0 <= hp.layer < lm.config.n_layers:
        raise ValueError(f"layer {hp.layer} is out of range: this model has layers 0..{lm.config.n_layers - 1}")
    return hp


def context_templates(lm: LM, hp: RomeHparams, seed: int = 0, progress: bool = False) -> tuple[str, ...]:
    """The templates an edit uses: the explicit ones in hp, else ROME's generated ones (cached per model)."""
    return hp.context_templates or rome_templates(lm, hp.context_template_length_params, seed, progress)


@dataclasses.dataclass(frozen=True)
class _Setup:
    """What `edit` and `edit_each` read from their arguments: the checked requests and their target ids, the
    hyperparameters, the C⁻¹ solver and the context templates."""

    reqs: list[Request]
    targets: list[list[int]]
    hp: RomeHparams
    solve: KeySolver
    templates: tuple[str, ...]


def _setup(lm: LM, requests: Any, hparams: RomeHparams | dict | None, stats: Any, seed: int, progress: bool) -> _Setup:
    """The requests checked (before any slow step), then the hyperparameters, statistics and templates."""
    reqs, targets = parse_requests(lm, requests, "ROME")
    hp = resolve_hparams(lm, hparams)
    solve = KeySolver(resolve_stats(lm, hp, hp.layer, stats, progress), lm.config.d_mlp, hp.mom2_regularize)
    return _Setup(reqs, targets, hp, solve, context_templates(lm, hp, seed, progress))


def _compute(
    lm: LM,
    reqs: Sequence[Request],
    targets: Sequence[Sequence[int]],
    setup: _Setup,
    *,
    fast: bool,
    progress: str | None = None,
    per_program: int = 8,
) -> list[Edit]:
    """The edits of `reqs`, each computed from `lm` alone (their v* searches batched, `per_program` requests per
    program); progress: a bar's title."""
    start = time.perf_counter()
    hp, solve, templates = setup.hp, setup.solve, setup.templates
    layer = hp.layer
    keys = [template_keys(lm, req, (*templates, "{}"), layer, hp.fact_token) for req in reqs]
    deltas, v_inits, losses = search(lm, reqs, templates, targets, layer, hp, fast=fast, progress=progress,
                                     per_program=per_program)  # fmt: skip
    down = lm.params["blocks"]["mlp"]["down"]
    bias = np.asarray(down["bias"][layer]) if "bias" in down else None
    old = down_kernel(lm.params)[layer]
    edits = []
    for req, key, delta, v_init, loss in zip(reqs, keys, deltas, v_inits, losses, strict=True):
        k_star, v_star = key[:-1].mean(axis=0), v_init + delta
        k = k_star if hp.rrome else key[-1]  # r-ROME: the averaged key; ROME: the bare prompt's key
        lam, u_hat = rank_one_update(np.asarray(old), solve(k_star), k, v_star, bias)
        edits.append(Edit(req, layer, u_hat, lam, k, k_star, v_star, loss, old, 0.0))
    seconds = (time.perf_counter() - start) / len(reqs)
    return [dataclasses.replace(e, seconds=seconds) for e in edits]


def apply(lm: LM, e: Edit) -> tuple[LM, Undo]:
    """lm with the rank-one update of `e` added (Ŵ = W + û Λᵀ at e.layer), and the Undo that restores lm's weights."""
    old = down_kernel(lm.params)[e.layer]
    return e.rank_one.apply(lm), Undo((dataclasses.replace(e, old_kernel=old),))


def edit(
    lm: LM,
    requests: Request | dict | Sequence[Request | dict],
    hparams: RomeHparams | dict | None = None,
    stats: Any = None,
    *,
    seed: int = 0,
    fast: bool = True,
    progress: bool = True,
) -> tuple[LM, Undo]:
    """Apply ROME for each request in turn; return the edited LM and an Undo. `lm` itself is not changed.

    request: {"prompt": "{} is located in the city of", "subject": "The Eiffel Tower", "target_new": "Rome"}.
    hparams: a RomeHparams, overrides as a dict (on top of this model's preset), or None for the preset.
    stats: precomputed key statistics (KeyStats, C as an array, or {layer: KeyStats}); default: computed
    over hparams.mom2_corpus and cached on disk. Context templates are generated once per model (seeded).
    fast=False runs the v* search as full forwards (the straightforward version, for checks and benchmarks).
    progress: say what the slow steps do (statistics, templates, each request's v* search) on stderr.
    Each request is computed on the model the earlier ones edited, as the original applies a list of requests;
    for edits of the unedited model each, see `edit_each`.
    """
    setup = _setup(lm, requests, hparams, stats, seed, progress)
    edits, current = [], lm
    steps = tqdm(zip(setup.reqs, setup.targets, strict=True), f"ROME v* search at layer {setup.hp.layer}",
                 len(setup.reqs), disable=not progress)  # fmt: skip
    for req, target_ids in steps:
        (e,) = _compute(current, [req], [target_ids], setup, fast=fast)
        current, _ = apply(current, e)
        edits.append(e)
    return current, Undo(tuple(edits))


def edit_each(
    lm: LM,
    requests: Request | dict | Sequence[Request | dict],
    hparams: RomeHparams | dict | None = None,
    stats: Any = None,
    *,
    seed: int = 0,
    fast: bool = True,
    progress: bool = True,
    per_program: int = 8,
) -> tuple[Edit, ...]:
    """ROME for each request alone, each computed from the unedited `lm` (as an evaluation edits its cases): the
    Edits, in order; `apply(lm, edit)` gives an edited model. The v* searches of all requests run batched,
    `per_program` requests per program (more on an accelerator), which is faster than one `edit` call per request
    and gives the same edits.

    Other arguments as for `edit`.
    """
    setup = _setup(lm, requests, hparams, stats, seed, progress)
    title = f"ROME v* searches at layer {setup.hp.layer}" if progress else None
    return tuple(_compute(lm, setup.reqs, setup.targets, setup, fast=fast, progress=title, per_program=per_program))
