"""Reading what ROME and MEMIT write against: the MLP key (the input to the output projection) or the residual,
at the fact token of a request's prompt placed in each context template."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ..models.config import ModelConfig
from ..models.forward import activations_below
from ..models.lm import LM
from ..tokens import encode, fact_index
from .requests import Request


@partial(jax.jit, static_argnums=(0, 4, 5))
def _read(
    cfg: ModelConfig, params: dict, ids: jax.Array, mask: jax.Array, layer: int, site: str, cols: jax.Array
) -> jax.Array:
    """[B, width of site]: `site` ("mlp_key" or "resid") of `layer` at one column per row; layers above not run."""
    acts = activations_below(cfg, params, ids, mask, (site,), layer + 1)
    return acts[site][-1][jnp.arange(ids.shape[0]), cols]


ROWS = 64  # prompts per forward when reading keys: a fixed row count, so batches of any size reuse one program


def read_at_fact(
    lm: LM, prompts: Sequence[str], subjects: Sequence[str], layer: int, fact_token: str, site: str = "mlp_key"
) -> np.ndarray:
    """[N, width]: `site` at `layer` at the fact token of each prompt ("{}" where its subject goes), float64.

    Prompts run ROWS at a time (the last block padded with copies of its first prompt), widths padded to 8."""
    texts = [p.replace("{}", s) for p, s in zip(prompts, subjects, strict=True)]
    facts = [fact_index(lm.tokenizer, p, s, fact_token) for p, s in zip(prompts, subjects, strict=True)]
    out = []
    for a in range(0, len(texts), ROWS):
        block, block_facts = texts[a : a + ROWS], facts[a : a + ROWS]
        real = len(block)
        if len(texts) > ROWS:
            block, block_facts = block + block[:1] * (ROWS - real), block_facts + block_facts[:1] * (ROWS - real)
        ids, mask = encode(lm.tokenizer, block, multiple_of=8)
        cols = ids.shape[1] - mask.sum(axis=1) + np.asarray(block_facts)
        acts = _read(lm.config, lm.params, ids, mask, layer, site, jnp.asarray(cols, jnp.int32))
        out.append(np.asarray(acts, np.float64)[:real])
    return np.concatenate(out)


def template_keys(lm: LM, req: Request, templates: Sequence[str], layer: int, fact_token: str) -> np.ndarray:
    """[templates, F]: the MLP key at the fact token of the request's prompt placed in each template."""
    prompts = [t.replace("{}", req.prompt) for t in templates]
    return read_at_fact(lm, prompts, [req.subject] * len(prompts), layer, fact_token)


def grouped_keys(
    lm: LM, reqs: Sequence[Request], groups: Sequence[Sequence[str]], layer: int, fact_token: str
) -> np.ndarray:
    """[N, F]: each request's keys averaged within each template group, then over the groups (MEMIT's `compute_ks`);
    the prompts of all requests run as rows of shared forwards."""
    flat = [t for g in groups for t in g]
    prompts = [t.replace("{}", r.prompt) for r in reqs for t in flat]
    keys = read_at_fact(lm, prompts, [r.subject for r in reqs for _ in flat], layer, fact_token)
    keys = keys.reshape(len(reqs), len(flat), -1)
    bounds = np.cumsum([0] + [len(g) for g in groups])
    return np.mean([keys[:, a:b].mean(axis=1) for a, b in zip(bounds[:-1], bounds[1:], strict=True)], axis=0)
