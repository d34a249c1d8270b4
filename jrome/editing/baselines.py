"""Fine-tuning baselines (paper §4), as the original's `baselines/ft/ft_main.py`: FT tunes one layer's MLP output
projection (kernel and bias, where it has one) with Adam to raise the new object on the edit prompt; FT-L
also keeps every weight within an L∞ ball around its start (`norm_constraint`, clamped after each step).

The loss is the original's: the mean over the target's tokens of -log p(token), all read at the LAST prompt
token (a quirk: a multi-token target is not teacher-forced; every token is scored as the next one). A step
is taken only while the loss is at least 1e-2, and training stops at the first loss below it.
"""

from __future__ import annotations

import dataclasses
import json
from functools import partial
from importlib import resources
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..interventions import Interventions
from ..models.config import ModelConfig
from ..models.forward import forward_tokens
from ..models.lm import LM
from .hparams import Hparams, preset_name, presets
from .requests import Request, target_ids
from .undo import down_kernel, with_down_kernel

STOP_LOSS = 1e-2
FT_METHODS = ("ft", "ft-l")


@dataclasses.dataclass(frozen=True)
class FTHparams(Hparams):
    """The original's FTHyperParams for one layer: Adam (lr, L2 weight_decay) for num_steps at most;
    norm_constraint=None is plain FT, a number is FT-L's L∞ bound."""

    layer: int
    num_steps: int = 25
    lr: float = 5e-4
    weight_decay: float = 0.0
    norm_constraint: float | None = None
    METHOD: ClassVar[str] = "FT"

    def __post_init__(self) -> None:
        if self.num_steps < 1 or self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(
                f"FT needs num_steps >= 1, lr > 0 and weight_decay >= 0; got {self.num_steps}, {self.lr}, "
                f"{self.weight_decay}"
            )
        if self.norm_constraint is not None and self.norm_constraint <= 0:
            raise ValueError(f"norm_constraint must be positive or None (unconstrained), got {self.norm_constraint}")


def ft_hparams_for(model_name: str, family: str, method: str = "ft") -> FTHparams:
    """The FT ("ft") or FT-L ("ft-l") preset for this model (matched on its name's last part), else its family's."""
    if method not in FT_METHODS:
        raise ValueError(f"unknown fine-tuning method {method!r}; accepted: {', '.join(FT_METHODS)}")
    name = preset_name(model_name, family, "ft")
    if name not in presets("ft"):
        raise ValueError(
            f"no FT preset for {model_name!r} or its family {family!r}; presets: {', '.join(presets('ft'))}"
        )
    preset = json.loads(resources.files("jrome").joinpath(f"hparams/ft/{name}.json").read_text())
    return FTHparams.from_dict(preset[method])


def _with_down(params: dict, kernel: jax.Array, bias: jax.Array | None) -> dict:
    """The tree with new stacked MLP output kernels and, if given, biases."""
    params = with_down_kernel(params, kernel)
    if bias is None:
        return params
    mlp = params["blocks"]["mlp"]
    return params | {"blocks": params["blocks"] | {"mlp": mlp | {"down": mlp["down"] | {"bias": bias}}}}


@partial(jax.jit, static_argnames=("cfg", "hp"))
def _finetune(cfg: ModelConfig, params: dict, ids: jax.Array, targets: jax.Array, *, hp: FTHparams):
    """Adam on (kernel, bias) of layer hp.layer; returns the tuned pair and the loss before each step (NaN after
    the stop)."""
    down = params["blocks"]["mlp"]["down"]
    start = {"kernel": down["kernel"][hp.layer]} | ({"bias": down["bias"][hp.layer]} if "bias" in down else {})
    last = jnp.full((1, 1), ids.shape[1] - 1)

    def loss(w: dict) -> jax.Array:
        bias = down["bias"].at[hp.layer].set(w["bias"]) if "bias" in w else None
        p = _with_down(params, down["kernel"].at[hp.layer].set(w["kernel"]), bias)
        logits = forward_tokens(cfg, p, ids, jnp.ones_like(ids), Interventions(), last).logits[0, 0]
        return -jnp.mean(jax.nn.log_softmax(logits)[targets])

    tx = optax.chain(optax.add_decayed_weights(hp.weight_decay), optax.adam(hp.lr))  # torch Adam's L2 decay

    def clamp(w: dict) -> dict:
        if hp.norm_constraint is None:
            return w
        eps = hp.norm_constraint
        return jax.tree.map(lambda x, x0: jnp.clip(x, x0 - eps, x0 + eps), w, start)

    def running(carry) -> jax.Array:
        i, _, _, _, stop = carry
        return (i < hp.num_steps) & ~stop

    def step(carry):
        i, w, opt, losses, _ = carry
        value, grad = jax.value_and_grad(loss)(w)
        stop = value < STOP_LOSS  # the original skips the step, then ends training
        updates, opt = tx.update(grad, opt, w)
        w = jax.tree.map(lambda new, old: jnp.where(stop, old, new), clamp(optax.apply_updates(w, updates)), w)
        return i + 1, w, opt, losses.at[i].set(value), stop

    init = (jnp.int32(0), start, tx.init(start), jnp.full(hp.num_steps, jnp.nan, jnp.float32), jnp.bool_(False))
    _, w, _, losses, _ = jax.lax.while_loop(running, step, init)
    return w, losses


def finetune(lm: LM, request: Request | dict, hp: FTHparams) -> tuple[LM, np.ndarray]:
    """FT / FT-L on one request: (the fine-tuned LM, the loss before each step, NaN after the stop).

    `lm` is not changed.
    """
    req = Request.parse(request)
    if not 0 <= hp.layer < lm.config.n_layers:
        raise ValueError(f"layer {hp.layer} is out of range: this model has layers 0..{lm.config.n_layers - 1}")
    target = target_ids(lm, req)
    ids = np.asarray(lm.tokenizer(req.text)["input_ids"], np.int32)[None]
    w, losses = _finetune(lm.config, lm.params, ids, np.asarray(target, np.int32), hp=hp)
    down = lm.params["blocks"]["mlp"]["down"]
    kernel = down_kernel(lm.params).at[hp.layer].set(w["kernel"])
    bias = down["bias"].at[hp.layer].set(w["bias"]) if "bias" in w else None
    return lm.replace(params=_with_down(lm.params, kernel, bias)), np.asarray(losses)
