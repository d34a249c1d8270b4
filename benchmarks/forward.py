"""Forward pass on SmolLM2: compile time of the scanned layer stack against an unrolled Python loop over
layers at 4 and 30 layers, then compile time and steady latency at batch 1 and 32 (16 tokens).

Each measurement uses shapes not compiled before in the run, so compile times are not cache hits.

    python benchmarks/forward.py [--torch]

--torch also times transformers' PyTorch forward of the same GGUF (needs the test extra).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import compile_seconds, machine, steady_seconds, wall  # noqa: E402

import jrome  # noqa: E402
from jrome.interventions import Interventions  # noqa: E402
from jrome.models.forward import (  # noqa: E402
    block,
    causal_mask,
    embed,
    forward_tokens,
    positions_from_mask,
    rope_tables,
    unembed,
)


def unrolled_forward(cfg, params, ids, mask):
    """The straightforward alternative to the scan: a Python loop over layers, each traced separately."""
    positions = positions_from_mask(mask)
    h = embed(cfg, params, ids, positions)
    rope, self_mask, cols = rope_tables(cfg, positions), causal_mask(mask), jnp.arange(ids.shape[1])
    for layer in range(cfg.n_layers):
        p = jax.tree.map(lambda a, i=layer: a[i], params["blocks"])
        h, _ = block(cfg, p, h, jnp.int32(layer), cols, rope, self_mask, None, Interventions())
    return unembed(cfg, params, h)


def truncated(lm: jrome.LM, layers: int) -> tuple:
    cfg = dataclasses.replace(lm.config, n_layers=layers)
    params = dict(lm.params, blocks=jax.tree.map(lambda a: a[:layers], lm.params["blocks"]))
    return cfg, params


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--torch", action="store_true")
    args = parser.parse_args()
    print(machine())
    lm = jrome.load("smollm2")
    rng = np.random.default_rng(0)
    scanned = jax.jit(forward_tokens, static_argnums=0)
    unrolled = jax.jit(unrolled_forward, static_argnums=0)
    iv = Interventions()

    print("\n# compile seconds: lax.scan over stacked layers vs a Python loop over layers (batch 1, 12 tokens)")
    ids = jnp.asarray(rng.integers(0, lm.config.vocab_size, (1, 12)), jnp.int32)
    mask = jnp.ones_like(ids)
    results = {}
    for layers in (4, 30):
        cfg, params = truncated(lm, layers)
        c_scan, exe_scan = compile_seconds(scanned, cfg, params, ids, mask, iv, None)
        c_loop, exe_loop = compile_seconds(unrolled, cfg, params, ids, mask)
        same = np.abs(
            np.asarray(exe_scan(params, ids, mask, iv, None).logits) - np.asarray(exe_loop(params, ids, mask))
        ).max()
        results[layers] = (c_scan, c_loop)
        print(f"{layers:2d} layers: scan {c_scan:6.2f} s   unrolled {c_loop:6.2f} s   (max |logit diff| {same:.1e})")
    print(
        f"30/4 layer compile-time ratio: scan {results[30][0] / results[4][0]:.2f}x, "
        f"unrolled {results[30][1] / results[4][1]:.2f}x"
    )

    print("\n# forward latency, SmolLM2-135M, 16 tokens, logits at every position")
    for batch in (1, 32):
        ids = jnp.asarray(rng.integers(0, lm.config.vocab_size, (batch, 16)), jnp.int32)
        mask = jnp.ones_like(ids)
        c, exe = compile_seconds(scanned, lm.config, lm.params, ids, mask, iv, None)
        s = steady_seconds(exe, lm.params, ids, mask, iv, None)
        print(f"batch {batch:2d}: compile {c:6.2f} s   steady {s * 1e3:8.1f} ms   ({batch * 16 / s:8.0f} tokens/s)")

    if args.torch:
        import torch
        from transformers import AutoModelForCausalLM

        path = jrome.models.embedded_path()
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
        print("\n# transformers (PyTorch, eager) on the same GGUF, 16 tokens")
        for batch in (1, 32):
            ids = rng.integers(0, lm.config.vocab_size, (batch, 16))
            ours = steady_seconds(
                jax.jit(forward_tokens, static_argnums=0), lm.config, lm.params, ids, np.ones_like(ids), iv, None
            )
            with torch.no_grad():
                t = torch.tensor(ids)
                model(t)
                times = [wall(model, t)[0] for _ in range(5)]
            ref = float(np.median(times))
            print(
                f"batch {batch:2d}: torch {ref * 1e3:8.1f} ms   jrome {ours * 1e3:8.1f} ms   ratio {ref / ours:5.2f}x"
            )


if __name__ == "__main__":
    main()
