"""Causal trace on SmolLM2: the packed jrome program against a plain loop of full forwards, per kind.

    python benchmarks/trace.py [--torch] [--kinds hidden mlp attn] [--repeats 3]

For the 10-token prompt "The Eiffel Tower is located in the city of" with 10 noise samples, prints compile
and steady seconds of `jrome.tracing.restore`, the same for the plain loop (one jitted full forward per
restoration, `jrome.tracing.reference`), their ratio and largest score difference, and the model FLOPs
each does. --torch adds a PyTorch hook-based trace of transformers' own model (the way the original
implementation works: a batch of clean + noisy rows, hooks that add the noise and copy the clean state,
a full forward per restoration), run with the very same noise.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import machine  # noqa: E402

import jrome  # noqa: E402
from jrome.tracing import corrupt_and_clean, restore, window_bounds  # noqa: E402
from jrome.tracing.reference import reference_scores, restoration_prob  # noqa: E402
from jrome.tracing.schedule import bucket, bucket_rows, plan_layers, plan_rows  # noqa: E402

PROMPT, SUBJECT = "The Eiffel Tower is located in the city of", "The Eiffel Tower"


def layer_flops(cfg, keys: int) -> float:
    """Matmul FLOPs of one layer for one token attending to `keys` keys."""
    mats = cfg.d_model * (2 * cfg.q_dim + 2 * cfg.kv_dim) + (3 if cfg.mlp == "swiglu" else 2) * cfg.d_model * cfg.d_mlp
    return 2 * mats + 4 * cfg.n_heads * cfg.head_dim * keys


def flops(cfg, n_tokens: int, first: int, samples: int, kind: str) -> tuple[float, float]:
    """(packed program, one full forward per restoration) model FLOPs for every restoration of a trace."""
    head = 2 * cfg.d_model * cfg.vocab_size
    rows = plan_rows([(n_tokens, range(first, n_tokens))], *bucket_rows(bucket(n_tokens)))
    plan = plan_layers(cfg.n_layers, kind, 10, None)
    lanes = plan.layer.shape[0]
    packed = lanes * int(plan.steps) * rows.cols.size * samples * layer_flops(cfg, n_tokens + rows.cols.shape[1])
    packed += lanes * 2 * rows.seg_start.size * samples * head
    restorations = n_tokens * cfg.n_layers
    full = restorations * samples * n_tokens * (cfg.n_layers * layer_flops(cfg, n_tokens) + head)
    return packed, full


def timed(fn, repeats: int) -> tuple[float, float, object]:
    """(first call, median of `repeats` later calls) in seconds, and the result; the first includes compilation."""
    start = time.perf_counter()
    out = fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times) if times else first, out


def torch_hook_trace(model, ids: np.ndarray, noise: np.ndarray, answer: int, kind: str) -> np.ndarray:
    """The hook-based trace: per restoration, a forward of [clean row; noisy rows] with hooks doing the patching."""
    import torch

    base = model.model
    n_layers, n_tokens = len(base.layers), len(ids)
    batch = torch.tensor(ids)[None].repeat(noise.shape[0] + 1, 1)
    noise_t = torch.tensor(noise)

    def add_noise(_module, _inputs, out):
        out = out.clone()
        out[1:] += noise_t
        return out

    def copy_clean(token):
        def hook(_module, _inputs, out):
            h = out[0] if isinstance(out, tuple) else out
            h[1:, token] = h[0, token]
            return out

        return hook

    scores = np.zeros((n_tokens, n_layers))
    with torch.no_grad():
        for token in range(n_tokens):
            for layer in range(n_layers):
                handles = [base.embed_tokens.register_forward_hook(add_noise)]
                if kind == "hidden":
                    targets = [base.layers[layer]]
                else:
                    lo, hi = window_bounds(layer, n_layers, 10)
                    targets = [getattr(base.layers[j], "mlp" if kind == "mlp" else "self_attn") for j in range(lo, hi)]
                handles += [m.register_forward_hook(copy_clean(token)) for m in targets]
                probs = model(batch).logits[1:, -1].softmax(-1)[:, answer]
                scores[token, layer] = float(probs.mean())
                for h in handles:
                    h.remove()
    return scores


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--torch", action="store_true")
    parser.add_argument("--kinds", nargs="+", default=["hidden", "mlp", "attn"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(machine())
    lm = jrome.load("smollm2")
    runs = corrupt_and_clean(lm, PROMPT, SUBJECT, samples=10, noise="s3", seed=0)
    n_tokens = len(runs.ids)
    print(
        f"prompt: {PROMPT!r} ({n_tokens} tokens), subject tokens {runs.subject_range}, 10 samples, noise scale {runs.noise_scale:.4f}"
    )
    print(
        f"p(answer={lm.tokenizer.decode([runs.answer_id])!r}): clean {runs.high_score:.4f}, corrupted {runs.low_score:.4f}\n"
    )
    model = None
    if args.torch:
        import torch
        from transformers import AutoModelForCausalLM

        path = jrome.models.embedded_path()
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
        model.config._attn_implementation = "eager"
    header = "kind   | jrome compile  steady | plain loop compile  steady | ratio | max|diff| | GFLOP packed / full"
    print(header + (" | torch hooks  ratio  max|diff|" if model else ""), flush=True)
    for kind in args.kinds:
        first, steady, fast = timed(lambda k=kind: restore(lm, runs, k).scores, args.repeats)
        loop_compile, _, _ = timed(lambda k=kind: restoration_prob(lm, runs, k, 0, 0), 0)
        start = time.perf_counter()
        loop = reference_scores(lm, runs, kind)
        loop_steady = time.perf_counter() - start
        packed, full = flops(lm.config, n_tokens, runs.subject_range[0], 10, kind)
        diff = np.abs(fast - loop).max()
        line = (
            f"{kind:6s} | {first - steady:7.2f} s {steady:7.2f} s | {loop_compile:10.2f} s {loop_steady:7.2f} s | "
            f"{loop_steady / steady:5.2f} | {diff:9.1e} | {packed / 1e9:6.0f} / {full / 1e9:6.0f} = {packed / full:.2f}"
        )
        if model is not None:
            start = time.perf_counter()
            ref = torch_hook_trace(model, runs.ids, np.asarray(runs.view("embed_add")), runs.answer_id, kind)
            torch_s = time.perf_counter() - start
            line += f" | {torch_s:9.2f} s {torch_s / steady:5.2f}x {np.abs(ref - fast).max():8.1e}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
