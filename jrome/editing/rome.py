"""ROME (paper §3): a rank-one edit of one MLP output projection that makes the model state a new fact.

    key   k* — the MLP key at the subject's last token, averaged over prompts with short generated prefixes;
    value v* — the MLP output there that makes the model say the new object (Adam on an added vector δ);
    edit  Ŵ = W + Λ uᵀ with u = C⁻¹k* / |C⁻¹k*| and Λ = (v* − W k) / (u·k), so that Ŵ k = v*.

`edit` is a pure function of the parameter tree: it returns a new LM and an `Undo` that restores the old
weights bit for bit; the caller's LM is never changed.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..interventions import Interventions, Patch
from ..models.config import ModelConfig
from ..models.forward import (
    Context,
    causal_mask,
    embed,
    forward_tokens,
    positions_from_mask,
    rope_tables,
    run_layers,
    unembed,
    unstack,
)
from ..models.lm import LM
from ..tokens import encode, pad_id, padded_width, subject_range
from .hparams import RomeHparams, hparams_for
from .stats import KeyStats, cholesky, key_statistics

KL_PROMPTS = ("{} is a",)
STARTERS = ("The", "Therefore", "Because", "I", "You")


@dataclasses.dataclass(frozen=True)
class Request:
    """Rewrite (subject, relation) → target: prompt holds "{}" where the subject goes (or the subject itself)."""

    prompt: str
    subject: str
    target_new: str

    @classmethod
    def parse(cls, request: Request | dict[str, Any]) -> Request:
        if isinstance(request, Request):
            return request
        missing = [k for k in ("prompt", "subject", "target_new") if k not in request]
        if missing:
            raise ValueError(f"a request needs prompt, subject and target_new; this one has no {missing[0]!r}")
        target = request["target_new"]
        target = target["str"] if isinstance(target, dict) else target
        prompt, subject = request["prompt"], request["subject"]
        if "{}" not in prompt:  # the subject written out: make it the placeholder
            if not subject.strip() or subject not in prompt:
                raise ValueError(
                    f"subject {subject!r} is not in the prompt {prompt!r}, and the prompt has no '{{}}' placeholder"
                )
            prompt = prompt.replace(subject, "{}", 1)
        return cls(prompt=prompt, subject=subject, target_new=target)

    @property
    def text(self) -> str:
        return self.prompt.replace("{}", self.subject)


def _check_request(lm: LM, req: Request) -> list[int]:
    """Validate before anything is computed; returns the target's token ids (with a leading space)."""
    if req.prompt.count("{}") != 1:
        raise ValueError(f"the prompt must contain '{{}}' exactly once where the subject goes; got {req.prompt!r}")
    if not req.subject.strip():
        raise ValueError("the subject is empty")
    if req.target_new == "":
        raise ValueError("the target is empty")
    subject_range(lm.tokenizer, req.text, req.subject)
    target = req.target_new if req.target_new.startswith(" ") else " " + req.target_new
    ids = lm.tokenizer(target, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"the target {req.target_new!r} tokenises to nothing")
    return ids


def parse_requests(
    lm: LM, requests: Request | dict | Sequence[Request | dict], method: str
) -> tuple[list[Request], list[list[int]]]:
    """One request or several, parsed and checked against the model: (requests, each target's token ids)."""
    reqs = [requests] if isinstance(requests, Request | dict) else list(requests)
    if not reqs:
        raise ValueError("no requests to apply")
    if lm.tokenizer is None:
        raise ValueError(f"{method} needs the model's tokenizer")
    reqs = [Request.parse(r) for r in reqs]
    return reqs, [_check_request(lm, r) for r in reqs]


def context_templates(lm: LM, hp: RomeHparams, seed: int = 0) -> tuple[str, ...]:
    """ "{}" plus prefixes the model writes itself (ROME's context templates), or the explicit ones in hp."""
    if hp.context_templates is not None:
        return hp.context_templates
    from ..generation import generate

    templates = ["{}"]
    for length, count in hp.context_template_length_params:
        starters = [STARTERS[i % len(STARTERS)] for i in range(count)]
        texts = generate(lm, starters, length, temperature=1.0, top_k=5, seed=seed + length)
        templates += [
            (s + t).replace("{", " ").replace("}", " ") + ". {}" for s, t in zip(starters, texts, strict=True)
        ]
    return tuple(templates)


def _fact_col(lm: LM, text: str, subject: str, fact_token: str, width: int, length: int) -> int:
    """Column (in a left-padded row of `width`) of the token where the key is read for this prompt."""
    start, end = subject_range(lm.tokenizer, text, subject)
    index = {"subject_last": end - 1, "subject_first": start, "last": length - 1}[fact_token]
    return width - length + index


@partial(jax.jit, static_argnums=(0, 4))
def _keys(cfg: ModelConfig, params: dict, ids: jax.Array, mask: jax.Array, layer: int, cols: jax.Array) -> jax.Array:
    """[B, F]: the MLP key of `layer` at one column per row (only layers up to `layer` run)."""
    positions = positions_from_mask(mask)
    h = embed(cfg, params, ids, positions)
    _, acts = run_layers(
        cfg, params["blocks"], h, cols=jnp.arange(ids.shape[1]), rope=rope_tables(cfg, positions),
        self_mask=causal_mask(mask), iv=Interventions(capture=("mlp_key",)), stop=layer + 1,
    )  # fmt: skip
    return acts["mlp_key"][-1][jnp.arange(ids.shape[0]), cols]


def template_keys(lm: LM, req: Request, templates: Sequence[str], layer: int, fact_token: str) -> np.ndarray:
    """[templates, F]: the key at the fact token of each template filled with the request's prompt."""
    texts = [t.replace("{}", req.text) for t in templates]
    ids, mask = encode(lm.tokenizer, texts, multiple_of=8)
    lengths = mask.sum(1)
    cols = [
        _fact_col(lm, x, req.subject, fact_token, ids.shape[1], int(n)) for x, n in zip(texts, lengths, strict=True)
    ]
    return np.asarray(_keys(lm.config, lm.params, ids, mask, layer, jnp.asarray(cols)), np.float64)


class KeySolver:
    """Solves C u = k with a float64 Cholesky factor of the key statistics (cached on a KeyStats).

    C = I when stats is None (no second-moment adjustment). A non-finite, mis-shaped or singular C is an
    error that says what to do; `regularize` adds that multiple of mean(diag C) to the diagonal first.
    """

    def __init__(self, stats: KeyStats | np.ndarray | None, size: int, regularize: float = 0.0) -> None:
        self.factor = None
        if stats is None:
            return
        shape = stats.mom2.shape if isinstance(stats, KeyStats) else np.shape(stats)
        if shape != (size, size):
            raise ValueError(f"key statistics have shape {shape}; this layer's keys need {(size, size)}")
        self.factor = stats.factor(regularize) if isinstance(stats, KeyStats) else cholesky(stats, regularize)

    def __call__(self, k: np.ndarray) -> np.ndarray:
        if self.factor is None:
            return np.asarray(k, np.float64)
        return np.linalg.solve(self.factor.T, np.linalg.solve(self.factor, k))


@dataclasses.dataclass(frozen=True)
class VBatch:
    """The prompts of the v* search: rewriting prompts (context + prompt + target[:-1]), then the KL prompts."""

    ids: np.ndarray  # [B, T] left-padded
    mask: np.ndarray
    fact_cols: np.ndarray  # [B] the column where δ is added (the fact token)
    out_cols: np.ndarray  # [B, n_target] columns whose logits the loss reads (KL rows: the fact column)
    target_ids: np.ndarray  # [n_target]
    n_rewrite: int

    @property
    def rows(self) -> np.ndarray:
        """[B, R]: each row's columns from its fact token on, clipped at the end (masked as padding there).

        R, the longest such run, is rounded up to a multiple of 8 so that requests of similar lengths share
        one compiled search: over an evaluation, compiling for every new R cost far more than the few extra
        columns."""
        width = self.ids.shape[1]
        run = padded_width(width - int(self.fact_cols.min()), 8)
        return np.minimum(self.fact_cols[:, None] + np.arange(run)[None], width - 1)


def v_batch(lm: LM, req: Request, templates: Sequence[str], target_ids: Sequence[int], fact_token: str) -> VBatch:
    """Tokenise the v* prompts: prompt and target are tokenised apart and joined, so the target ids stay exact."""
    tok = lm.tokenizer
    texts = [t.replace("{}", req.text) for t in templates] + [kl.replace("{}", req.subject) for kl in KL_PROMPTS]
    rows, facts = [], []
    for i, text in enumerate(texts):
        prompt_ids = tok(text)["input_ids"]
        start, end = subject_range(tok, text, req.subject)
        facts.append({"subject_last": end - 1, "subject_first": start, "last": len(prompt_ids) - 1}[fact_token])
        rows.append(prompt_ids + (list(target_ids[:-1]) if i < len(templates) else []))
    width = padded_width(max(len(r) for r in rows), 8)
    ids = np.full((len(rows), width), pad_id(tok), np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :], mask[i, width - len(r) :] = r, 1
    fact_cols = np.array([width - len(r) + f for r, f in zip(rows, facts, strict=True)], np.int32)
    n = len(target_ids)
    out_cols = np.concatenate(
        [
            np.repeat(np.arange(width - n, width)[None], len(templates), 0),
            np.repeat(fact_cols[len(templates) :, None], n, 1),
        ]
    ).astype(np.int32)
    return VBatch(ids, mask, fact_cols, out_cols, np.asarray(target_ids, np.int32), len(templates))


def _objective(log_probs: jax.Array, batch_targets: jax.Array, n_rewrite: int, kl_init: jax.Array, delta, v_init, hp):
    """ROME's loss: mean target NLL + kl_factor · KL(current ‖ unedited) on the KL prompts + weight decay on δ."""
    targets = jnp.take_along_axis(log_probs[:n_rewrite], batch_targets[None, :, None], axis=-1)[..., 0]
    nll = -targets.mean(axis=-1).mean()
    kl_lp = log_probs[n_rewrite:, 0]
    kl = jnp.sum(jnp.exp(kl_lp) * (kl_lp - kl_init), axis=-1).mean()
    decay = jnp.sum(delta * delta) / jnp.sum(v_init * v_init)
    return nll + hp.kl_factor * kl + hp.v_weight_decay * decay


@partial(jax.jit, static_argnames=("cfg", "layer", "hp", "n_rewrite", "fast", "site"))
def optimise_v(
    cfg: ModelConfig,
    params: dict,
    ids: jax.Array,
    mask: jax.Array,
    fact_cols: jax.Array,
    out_cols: jax.Array,
    target_ids: jax.Array,
    rows: jax.Array,
    *,
    layer: int,
    hp: RomeHparams,
    n_rewrite: int,
    fast: bool = True,
    site: str = "mlp",
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Adam on δ (added to layer's MLP output at the fact columns) in one jitted while loop: (δ, v_init, losses).

    Adding δ to the MLP output is adding it to the residual after the layer, so the same search serves ROME
    (site="mlp": v_init is the MLP output, v* = v_init + δ) and MEMIT (site="resid": v_init is the residual,
    the target z = v_init + δ); v_init's norm scales the weight decay and the clamp.

    fast=True computes each step only where δ can change anything: the layers above `layer`, the columns from
    each row's fact token on (`rows` [B, R], see VBatch.rows; earlier columns attend from a cache), and logits
    only at the columns the loss reads. fast=False is the straightforward version: a full forward with an additive intervention per step.
    losses [steps] holds the objective at each evaluation (NaN after an early stop at loss < 5e-2).
    """
    b, t = ids.shape
    loss_stop = cfg.n_layers if hp.v_loss_layer is None else hp.v_loss_layer + 1
    capture = ("resid", "mlp", "attn_k", "attn_v")
    base = forward_tokens(cfg, params, ids, mask, Interventions(capture=capture), fact_cols[:, None])
    v_init = base.captured[site][layer, 0, fact_cols[0]]

    def head(resid_or_logits: jax.Array, is_logits: bool) -> jax.Array:
        picked = jnp.take_along_axis(resid_or_logits, out_cols[..., None], axis=1)
        return jax.nn.log_softmax(picked if is_logits else unembed(cfg, params, picked), axis=-1)

    def reference_log_probs(delta: jax.Array) -> jax.Array:
        patch = Patch(
            layer=jnp.array([layer]), token=fact_cols[None], value=jnp.broadcast_to(delta, (1, b, delta.shape[0]))
        )
        out = forward_tokens(cfg, params, ids, mask, Interventions(mlp_add=patch, capture=("resid",)), None)
        if loss_stop == cfg.n_layers:
            return head(out.logits, True)
        return head(out.captured["resid"][loss_stop - 1], False)

    valid = rows >= fact_cols[:, None] + jnp.arange(rows.shape[1])[None]  # clipped positions are padding
    positions = jnp.take_along_axis(positions_from_mask(mask), rows, axis=1)
    self_mask = jnp.tril(jnp.ones((rows.shape[1],) * 2, bool))[None] & valid[:, None, :]
    ctx_mask = (jnp.arange(t)[None, None, :] < fact_cols[:, None, None]) & mask.astype(bool)[:, None, :]
    ctx = Context(
        base.captured["attn_k"][layer + 1 : loss_stop], base.captured["attn_v"][layer + 1 : loss_stop], ctx_mask
    )
    start = jnp.take_along_axis(base.captured["resid"][layer], rows[..., None], axis=1)
    above = unstack(params["blocks"], layer + 1, loss_stop)  # sliced once, outside the Adam loop

    def fast_log_probs(delta: jax.Array) -> jax.Array:
        h = start.at[:, 0].add(delta.astype(start.dtype))
        h, _ = run_layers(
            cfg, above, h, cols=rows, rope=rope_tables(cfg, positions), self_mask=self_mask,
            iv=Interventions(), first=layer + 1, stop=loss_stop, ctx=ctx,
        )  # fmt: skip
        picked = jnp.take_along_axis(h, (out_cols - fact_cols[:, None])[..., None], axis=1)
        return jax.nn.log_softmax(unembed(cfg, params, picked), axis=-1)

    log_probs_fn = fast_log_probs if fast else reference_log_probs

    def loss_fn(delta: jax.Array, kl_init: jax.Array, first: jax.Array) -> tuple[jax.Array, jax.Array]:
        log_probs = log_probs_fn(delta)
        kl_now = log_probs[n_rewrite:, 0]
        kl_init = jnp.where(first, jax.lax.stop_gradient(kl_now), kl_init)  # step 0 (δ = 0): the unedited model
        return _objective(log_probs, target_ids, n_rewrite, kl_init, delta, v_init, hp), kl_init

    tx = optax.adam(hp.v_lr)
    max_norm = hp.clamp_norm_factor * jnp.linalg.norm(v_init)

    def body(state):
        i, delta, opt, losses, kl_init, _ = state
        (loss, kl_init), grad = jax.value_and_grad(loss_fn, has_aux=True)(delta, kl_init, i == 0)
        stop = (loss < 5e-2) | (i == hp.v_num_grad_steps - 1)
        updates, new_opt = tx.update(grad, opt, delta)
        new = optax.apply_updates(delta, updates)
        norm = jnp.linalg.norm(new)
        new = jnp.where(norm > max_norm, new * (max_norm / norm), new)
        delta = jnp.where(stop, delta, new)
        opt = jax.tree.map(lambda a, b: jnp.where(stop, a, b), opt, new_opt)
        return i + 1, delta, opt, losses.at[i].set(loss), kl_init, stop

    delta0 = jnp.zeros_like(v_init)
    kl0 = jnp.zeros((b - n_rewrite, cfg.vocab_size), jnp.float32)
    init = (0, delta0, tx.init(delta0), jnp.full(hp.v_num_grad_steps, jnp.nan, jnp.float32), kl0, False)
    _, delta, _, losses, _, _ = jax.lax.while_loop(lambda s: ~s[-1], body, init)
    return delta, v_init, losses


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


@jax.jit
def _add_rank_one(kernel: jax.Array, layer: jax.Array, u_hat: jax.Array, lam: jax.Array) -> jax.Array:
    """The stacked kernel with outer(û, Λ) added at `layer` (only this leaf is rebuilt; the rest are shared)."""
    return kernel.at[layer].add(jnp.outer(u_hat, lam).astype(kernel.dtype))


def _with_kernel(params: dict, kernel: jax.Array) -> dict:
    mlp = params["blocks"]["mlp"]
    return params | {"blocks": params["blocks"] | {"mlp": mlp | {"down": mlp["down"] | {"kernel": kernel}}}}


@dataclasses.dataclass(frozen=True)
class Edit:
    """One applied rewrite: what was computed, and the exact weights it replaced (for undo)."""

    request: Request
    layer: int
    u_hat: np.ndarray  # [F] unit C⁻¹k*
    lam: np.ndarray  # [D]
    k_star: np.ndarray  # [F] template-averaged key
    v_star: np.ndarray  # [D]
    losses: np.ndarray  # objective per Adam step (NaN after an early stop)
    old_kernel: jax.Array  # [F, D] the layer's kernel before this edit, bit for bit
    seconds: float


@dataclasses.dataclass(frozen=True)
class Undo:
    """The changes of one `edit` call (ROME: an Edit per request; MEMIT: an update per layer); `undo(lm)` puts
    every changed kernel back exactly as it was."""

    edits: tuple[Any, ...]

    def __call__(self, lm: LM) -> LM:
        kernel = lm.params["blocks"]["mlp"]["down"]["kernel"]
        for e in reversed(self.edits):
            kernel = kernel.at[e.layer].set(e.old_kernel)
        return lm.replace(params=_with_kernel(lm.params, kernel))


def resolve_stats(lm: LM, hp: RomeHparams, layer: int, stats: Any) -> KeyStats | np.ndarray | None:
    """The key statistics for `layer`: given (KeyStats, an array C, or {layer: ...}), else computed (cached)."""
    if not hp.mom2_adjustment:
        return None
    if isinstance(stats, dict):
        if layer not in stats:
            raise ValueError(f"stats has layers {sorted(stats)}, not the edited layer {layer}")
        stats = stats[layer]
    if stats is None:
        return key_statistics(lm, layer, hp.mom2_corpus, hp.mom2_n_tokens, progress=False)[layer]
    return stats


def edit(
    lm: LM,
    requests: Request | dict | Sequence[Request | dict],
    hparams: RomeHparams | dict | None = None,
    stats: Any = None,
    *,
    seed: int = 0,
    fast: bool = True,
) -> tuple[LM, Undo]:
    """Apply ROME for each request in turn; return the edited LM and an Undo. `lm` itself is not changed.

    request: {"prompt": "{} is located in the city of", "subject": "The Eiffel Tower", "target_new": "Rome"}.
    hparams: a RomeHparams, overrides as a dict (on top of this model's preset), or None for the preset.
    stats: precomputed key statistics (KeyStats, C as an array, or {layer: KeyStats}); default: computed
    over hparams.mom2_corpus and cached on disk. Context templates are generated once per call (seeded).
    fast=False runs the v* search as full forwards (the straightforward version, for checks and benchmarks).
    """
    reqs, targets = parse_requests(lm, requests, "ROME")
    hp = _resolve_hparams(lm, hparams)
    layer = hp.layer
    solve = KeySolver(resolve_stats(lm, hp, layer, stats), lm.config.d_mlp, hp.mom2_regularize)
    templates = context_templates(lm, hp, seed)
    edits, current = [], lm
    for req, target_ids in zip(reqs, targets, strict=True):
        start = time.perf_counter()
        keys = template_keys(current, req, (*templates, "{}"), layer, hp.fact_token)
        k_star = keys[:-1].mean(axis=0)
        u = solve(k_star)
        batch = v_batch(current, req, templates, target_ids, hp.fact_token)
        delta, v_init, losses = optimise_v(
            lm.config, current.params, batch.ids, batch.mask, batch.fact_cols, batch.out_cols, batch.target_ids,
            batch.rows, layer=layer, hp=hp, n_rewrite=batch.n_rewrite, fast=fast,
        )  # fmt: skip
        v_star = np.asarray(v_init, np.float64) + np.asarray(delta, np.float64)
        k = k_star if hp.rrome else keys[-1]  # r-ROME: the averaged key; ROME: the bare prompt's key
        down = current.params["blocks"]["mlp"]["down"]
        bias = np.asarray(down["bias"][layer]) if "bias" in down else None
        lam, u_hat = rank_one_update(np.asarray(down["kernel"][layer]), u, k, v_star, bias)
        old = down["kernel"][layer]
        kernel = _add_rank_one(down["kernel"], layer, jnp.asarray(u_hat, jnp.float32), jnp.asarray(lam, jnp.float32))
        params = _with_kernel(current.params, kernel)
        current = current.replace(params=params)
        edits.append(Edit(req, layer, u_hat, lam, k_star, v_star, np.asarray(losses), old, time.perf_counter() - start))
    return current, Undo(tuple(edits))


def _resolve_hparams(lm: LM, hparams: RomeHparams | dict | None) -> RomeHparams:
    if isinstance(hparams, RomeHparams):
        hp = hparams
    else:
        hp = hparams_for(lm.name, lm.config.family)
        if hparams:
            hp = hp.override(**hparams)
    if hp.layer is None:
        raise ValueError(
            f"no ROME layer for {lm.name or lm.config.family!r}: pass hparams={{'layer': N}}, choosing N from a causal "
            "trace (the MLP layer where restoring the last subject token helps most)"
        )
    if not 0 <= hp.layer < lm.config.n_layers:
        raise ValueError(f"layer {hp.layer} is out of range: this model has layers 0..{lm.config.n_layers - 1}")
    if hp.v_loss_layer is not None and not hp.layer <= hp.v_loss_layer < lm.config.n_layers:
        raise ValueError(f"v_loss_layer {hp.v_loss_layer} must lie in [layer, {lm.config.n_layers - 1}]")
    return hp
