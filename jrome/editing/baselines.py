"""Fine-tuning baselines (paper §4): FT raises the target on the edit prompt by gradient steps on the same MLP
output projection ROME edits; FT-L also bounds every weight's change (an L∞ constraint)."""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..interventions import Interventions
from ..models.config import ModelConfig
from ..models.forward import forward_tokens
from ..models.lm import LM
from .rome import Request, _check_request, _with_kernel


@dataclasses.dataclass(frozen=True)
class FTHparams:
    """Adam on one layer's MLP output kernel; linf_bound=None is plain FT, a number makes it FT-L."""

    layer: int
    steps: int = 25
    lr: float = 5e-4
    linf_bound: float | None = None


@partial(jax.jit, static_argnames=("cfg", "hp"))
def _finetune(cfg: ModelConfig, params: dict, ids: jax.Array, cols: jax.Array, targets: jax.Array, *, hp: FTHparams):
    kernel = params["blocks"]["mlp"]["down"]["kernel"]
    w0 = kernel[hp.layer]
    mask = jnp.ones_like(ids)

    def loss(w: jax.Array) -> jax.Array:
        p = _with_kernel(params, kernel.at[hp.layer].set(w))
        logits = forward_tokens(cfg, p, ids, mask, Interventions(), cols).logits[0]
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits, -1), targets[:, None], -1))

    tx = optax.adam(hp.lr)

    def step(carry, _):
        w, opt = carry
        value, grad = jax.value_and_grad(loss)(w)
        updates, opt = tx.update(grad, opt, w)
        w = optax.apply_updates(w, updates)
        if hp.linf_bound is not None:
            w = w0 + jnp.clip(w - w0, -hp.linf_bound, hp.linf_bound)
        return (w, opt), value

    (w, _), losses = jax.lax.scan(step, (w0, tx.init(w0)), None, length=hp.steps)
    return w, losses


def finetune(lm: LM, request: Request | dict, hp: FTHparams) -> tuple[LM, np.ndarray]:
    """FT / FT-L on one request: (the fine-tuned LM, the loss at each step). `lm` is not changed."""
    req = Request.parse(request)
    if not 0 <= hp.layer < lm.config.n_layers:
        raise ValueError(f"layer {hp.layer} is out of range: this model has layers 0..{lm.config.n_layers - 1}")
    target = _check_request(lm, req)
    prompt = lm.tokenizer(req.text)["input_ids"]
    ids = np.asarray(prompt + target[:-1], np.int32)[None]
    cols = np.arange(len(prompt) - 1, ids.shape[1], dtype=np.int32)[None]
    w, losses = _finetune(lm.config, lm.params, ids, cols, np.asarray(target, np.int32), hp=hp)
    kernel = lm.params["blocks"]["mlp"]["down"]["kernel"].at[hp.layer].set(w)
    return lm.replace(params=_with_kernel(lm.params, kernel)), np.asarray(losses)
