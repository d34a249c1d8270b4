"""Reading what ROME and MEMIT write against: the MLP key (the input to the output projection) or the residual,
at the fact token of a request's prompt placed in each context template."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ..interventions import Interventions
from ..models.config import ModelConfig
from ..models.forward import Rows, embed, positions_from_mask, run_layers
from ..models.lm import LM
from ..tokens import encode, fact_index
from .requests import Request


@partial(jax.jit, static_argnums=(0, 4, 5))
def _read(
    cfg: ModelConfig, params: dict, ids: jax.Array, mask: jax.Array, layer: int, site: str, cols: jax.Array
) -> jax.Array:
    """[B, width of site]: `site` ("mlp_key" or "resid") of `layer` at one column per row; layers above not run."""
    positions = positions_from_mask(mask)
    h = embed(cfg, params, ids, positions)
    rows = Rows.causal(cfg, mask)
    _, acts = run_layers(cfg, params["blocks"], h, rows=rows, iv=Interventions(capture=(site,)), stop=layer + 1)
    return acts[site][-1][jnp.arange(ids.shape[0]), cols]


def read_at_fact(
    lm: LM, prompts: Sequence[str], subjects: Sequence[str], layer: int, fact_token: str, site: str = "mlp_key"
) -> np.ndarray:
    """[N, width]: `site` at `layer` at the fact token of each prompt ("{}" where its subject goes), float64."""
    texts = [p.replace("{}", s) for p, s in zip(prompts, subjects, strict=True)]
    ids, mask = encode(lm.tokenizer, texts, multiple_of=8)
    lengths = mask.sum(axis=1)
    cols = [
        ids.shape[1] - int(n) + fact_index(lm.tokenizer, p, s, fact_token)
        for p, s, n in zip(prompts, subjects, lengths, strict=True)
    ]
    out = _read(lm.config, lm.params, ids, mask, layer, site, jnp.asarray(cols, jnp.int32))
    return np.asarray(out, np.float64)


def template_keys(lm: LM, req: Request, templates: Sequence[str], layer: int, fact_token: str) -> np.ndarray:
    """[templates, F]: the MLP key at the fact token of the request's prompt placed in each template."""
    prompts = [t.replace("{}", req.prompt) for t in templates]
    return read_at_fact(lm, prompts, [req.subject] * len(prompts), layer, fact_token)


def grouped_key(lm: LM, req: Request, groups: Sequence[Sequence[str]], layer: int, fact_token: str) -> np.ndarray:
    """[F]: keys averaged within each template group, then over the groups (MEMIT's `compute_ks`)."""
    flat = [t for g in groups for t in g]
    keys = template_keys(lm, req, flat, layer, fact_token)
    bounds = np.cumsum([0] + [len(g) for g in groups])
    return np.mean([keys[a:b].mean(axis=0) for a, b in zip(bounds[:-1], bounds[1:], strict=True)], axis=0)
