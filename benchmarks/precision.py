"""bfloat16 against float32: causal-trace scores and seconds on SmolLM2, the same noise and answer on both sides.

    python benchmarks/precision.py [--facts 4] [--samples 10]

For the Eiffel Tower prompt and the first known facts, prints p(answer) clean and corrupted in each dtype and,
per kind (and hidden with the MLP severed), the largest |score difference| next to the largest score, and the
steady seconds of each dtype's restoration program. bfloat16 keeps norms, attention scores and logits in
float32; its parameters and activations are rounded to 8 bits of mantissa.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import machine  # noqa: E402

import jrome  # noqa: E402
from jrome.data import load_known  # noqa: E402
from jrome.tracing import corrupt_and_clean, restore  # noqa: E402

VARIANTS = (("hidden", None), ("mlp", None), ("attn", None), ("hidden", "mlp"))


def steady(lm, runs, kind, sever):
    """Steady seconds of one restoration program (after a first, compiling call) and its scores."""
    restore(lm, runs, kind, sever=sever)
    start = time.perf_counter()
    scores = restore(lm, runs, kind, sever=sever).scores
    return time.perf_counter() - start, scores


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--facts", type=int, default=4)
    parser.add_argument("--samples", type=int, default=10)
    args = parser.parse_args()
    print(machine())
    f32, bf16 = jrome.load("smollm2"), jrome.load("smollm2", dtype="bfloat16")
    facts = [("The Eiffel Tower is located in the city of", "The Eiffel Tower")]
    facts += [(k["prompt"], k["subject"]) for k in load_known()[1 : args.facts]]
    worst = {}
    for prompt, subject in facts:
        a = corrupt_and_clean(f32, prompt, subject, samples=args.samples, noise="s3")
        noise = np.asarray(a.view("embed_add"))[:, slice(*a.subject_range)]
        b = corrupt_and_clean(bf16, prompt, subject, samples=args.samples, noise=noise, answer=a.answer_id)
        line = [f"{prompt[:32]!r}: p clean {a.high_score:.4f} / {b.high_score:.4f}, corrupted {a.low_score:.4f} / {b.low_score:.4f}"]  # fmt: skip
        for kind, sever in VARIANTS:
            t32, x = steady(f32, a, kind, sever)
            t16, y = steady(bf16, b, kind, sever)
            name = kind + (f"/severed {sever}" if sever else "")
            diff = float(np.nanmax(np.abs(x - y)))
            worst[name] = max(worst.get(name, 0.0), diff)
            line.append(f"  {name:18s} max|Δ| {diff:.4f} (max score {np.nanmax(x):.3f}); steady {t32:.1f} s float32, {t16:.1f} s bfloat16")  # fmt: skip
        print("\n".join(line), flush=True)
    print("largest |Δ| over the facts:", ", ".join(f"{k} {v:.4f}" for k, v in worst.items()))


if __name__ == "__main__":
    main()
