"""Run in a fresh process with 8 simulated CPU devices: forward, trace and edit of one tiny three-layer model
on one device and on a data x model mesh; prints the largest differences as JSON for tests/test_sharding.py.

The edits are at layers 0 and 1, below the last layer, so the v* search has a real gradient: at the last
layer the subject token cannot reach the prediction, the gradient is rounding noise and Adam amplifies it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402
from conftest import tiny_tokenizer  # noqa: E402

import jrome  # noqa: E402
from jrome.editing import KeyStats, key_statistics, memit  # noqa: E402
from jrome.interventions import Interventions  # noqa: E402
from jrome.models import placement  # noqa: E402
from jrome.sharding import make_mesh, mesh_of, shard  # noqa: E402
from jrome.tracing import corrupt_and_clean, restore  # noqa: E402


def diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def main(model_dir: str, data: int, model: int) -> None:
    one = jrome.load(model_dir, tokenizer=tiny_tokenizer())
    many = shard(one, make_mesh(data, model))
    out = {"devices": len(jax.devices()), "mesh": dict(mesh_of(many).shape)}
    out["kernel_shards"] = len(many.params["blocks"]["mlp"]["down"]["kernel"].addressable_shards)
    placement.CHUNK_BYTES = 1  # every layer its own block, written in place into the sharded array
    placed = jrome.load(model_dir, tokenizer=tiny_tokenizer(), mesh=mesh_of(many))
    saved = jrome.load(jrome.save(one, Path(sys.argv[4]).parent / "saved"), mesh=mesh_of(many))  # a jrome.save folder
    pairs = [(a, b) for m in (placed, saved) for a, b in zip(jax.tree.leaves(m.params), jax.tree.leaves(many.params), strict=True)]  # fmt: skip
    out["load_mesh_bitwise"] = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in pairs)
    out["load_mesh_layout"] = all(a.sharding.is_equivalent_to(b.sharding, a.ndim) for a, b in pairs)

    ids, mask = jrome.encode(one.tokenizer, ["the eiffel tower is located in the city of", "the louvre is in"])
    iv = Interventions(capture=("resid", "mlp_key", "mlp", "attn"))
    a, b = jrome.forward(one, ids, mask, iv), jrome.forward(many, ids, mask, iv)
    out["forward_logits"] = diff(a.logits, b.logits)
    out["forward_captured"] = max(diff(a.captured[k], b.captured[k]) for k in a.captured)

    prompt, subject = "the eiffel tower is located in the city of", "the eiffel tower"
    runs_a = corrupt_and_clean(one, prompt, subject, samples=4, noise=0.5, answer=" paris")
    runs_b = corrupt_and_clean(many, prompt, subject, samples=4, noise=0.5, answer=" paris")
    out["trace_low_high"] = max(abs(runs_a.low_score - runs_b.low_score), abs(runs_a.high_score - runs_b.high_score))
    for kind in ("hidden", "mlp", "attn"):
        out[f"trace_{kind}"] = diff(restore(one, runs_a, kind, chunk=1).scores, restore(many, runs_b, kind).scores)
    out["trace_severed"] = diff(restore(one, runs_a, sever="mlp").scores, restore(many, runs_b, sever="mlp").scores)

    corpus = Path(sys.argv[4])
    corpus.write_text(" ".join(["the eiffel tower is located in the city of paris and the louvre is a museum"] * 20))
    sa, sb = (
        key_statistics(m, [0, 1], corpus, n_tokens=200, window=16, cache=False, progress=False) for m in (one, many)
    )
    out["stats_mom2"] = max(diff(sa[layer].mom2, sb[layer].mom2) / np.abs(sa[layer].mom2).max() for layer in (0, 1))

    request = {"prompt": "{} is located in the city of", "subject": "the eiffel tower", "target_new": "rome"}
    hp = {"layer": 1, "mom2_adjustment": False, "context_templates": ["{}", "a new {}"], "v_num_grad_steps": 4}
    ea, _ = jrome.rome.edit(one, request, hp)
    eb, undo = jrome.rome.edit(many, request, hp)
    kernel = ("blocks", "mlp", "down", "kernel")
    ka, kb = (e.params[kernel[0]][kernel[1]][kernel[2]][kernel[3]] for e in (ea, eb))
    out["rome_kernel"] = diff(ka, kb)
    out["rome_kernel_scale"] = float(np.max(np.abs(np.asarray(ka))))
    out["rome_still_sharded"] = kb.sharding.is_equivalent_to(many.params["blocks"]["mlp"]["down"]["kernel"].sharding, 3)
    out["rome_undo"] = diff(undo(eb).params["blocks"]["mlp"]["down"]["kernel"], one.params["blocks"]["mlp"]["down"]["kernel"])  # fmt: skip
    stats = {layer: KeyStats(layer, np.eye(ka.shape[1]), 1, "identity") for layer in (0, 1)}
    mhp = {"layers": [0, 1], "context_templates": ["{}", "a new {}"], "v_num_grad_steps": 4}
    ma, _ = memit.edit(one, [request], mhp, stats)
    mb, _ = memit.edit(many, [request], mhp, stats)
    out["memit_kernel"] = diff(ma.params["blocks"]["mlp"]["down"]["kernel"], mb.params["blocks"]["mlp"]["down"]["kernel"])  # fmt: skip
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
