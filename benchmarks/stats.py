"""Key statistics on SmolLM2 (layer 4, wikitext-2): how many tokens ROME needs, and how fast they are read.

1. Convergence: ROME's û and Λ for the Eiffel Tower → Rome edit (one v* search; only C changes) with C from 1k,
   10k and 100k tokens and with the early stop (`tolerance`), each against C from the largest run (--full tokens):
   the relative change of û and of Λ, and the tokens each used.
2. Throughput: tokens/s of jrome's pass (compile apart) against transformers + a hook that stops each forward at
   the layer (the original's `layer_stats` with `Trace(stop=True)`), on the same windows, in the same run.

    python benchmarks/stats.py [--full 200000] [--torch]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import machine  # noqa: E402
from edit import REQUEST, torch_statistics  # noqa: E402

import jrome  # noqa: E402
from jrome.corpus import open_corpus  # noqa: E402
from jrome.editing import RomeHparams, key_statistics  # noqa: E402
from jrome.editing.rome import rank_one_update  # noqa: E402
from jrome.editing.solver import KeySolver  # noqa: E402
from jrome.editing.windows import corpus_windows  # noqa: E402

LAYER = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", type=int, default=200_000, help="tokens of the reference statistics")
    parser.add_argument("--torch", action="store_true", help="also time transformers + hooks (loads the GGUF)")
    args = parser.parse_args()
    lm = jrome.load("smollm2")
    print(machine())

    def stats(n: int, tolerance: float | None = None):
        start = time.perf_counter()
        out = key_statistics(lm, LAYER, n_tokens=n, tolerance=tolerance, cache=False, progress=False)[LAYER]
        return out, time.perf_counter() - start

    stats(2_000)  # compile
    reference, seconds = stats(args.full)
    print(f"reference: {reference.count} tokens in {seconds:.1f} s ({reference.count / seconds:.0f} tokens/s steady)")

    hp = RomeHparams(layer=LAYER, context_templates=("{}", "The {}", "Therefore, {}", "Because {}"))
    _, undo = jrome.rome.edit(lm, REQUEST, hp, stats=reference, progress=False)
    e = undo.edits[0]

    def closed_form(c) -> tuple[np.ndarray, np.ndarray]:
        lam, u_hat = rank_one_update(np.asarray(e.old_kernel), KeySolver(c, lm.config.d_mlp)(e.k_star), e.k, e.v_star)
        return u_hat, lam

    u_ref, lam_ref = closed_form(reference)
    print("\n| C from | tokens | rel. change of û | rel. change of Λ | seconds |\n|---|---|---|---|---|")
    rows = [(f"{n:,} tokens", n, None) for n in (1_000, 10_000, 100_000)]
    rows += [(f"early stop, tolerance {t:g}", args.full, t) for t in (0.05, 0.01)]
    for label, n, tolerance in rows:
        c, seconds = stats(n, tolerance)
        try:
            u_hat, lam = closed_form(c)
        except ValueError:  # fewer independent keys than dimensions: no C⁻¹ without regularising
            print(f"| {label} | {c.count:,} | C singular | C singular | {seconds:.1f} |")
            continue
        du = np.linalg.norm(u_hat - u_ref) / np.linalg.norm(u_ref)
        dl = np.linalg.norm(lam - lam_ref) / np.linalg.norm(lam_ref)
        print(f"| {label} | {c.count:,} | {du:.4f} | {dl:.4f} | {seconds:.1f} |")

    if args.torch:
        import transformers

        from jrome.models.loading import embedded_path

        path = embedded_path()
        model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name).eval()
        windows = corpus_windows(lm.tokenizer, open_corpus("wikitext-2").pieces(), 20_000, 128)
        torch_statistics(model, None, LAYER, windows[:16])  # warm-up
        torch_seconds = torch_statistics(model, None, LAYER, windows)
        _, jrome_seconds = stats(windows.size)
        print(
            f"\n{windows.size} tokens: jrome {jrome_seconds:.1f} s ({windows.size / jrome_seconds:.0f} tokens/s), "
            f"transformers + hooks {torch_seconds:.1f} s ({windows.size / torch_seconds:.0f} tokens/s): "
            f"jrome {torch_seconds / jrome_seconds:.2f}x"
        )


if __name__ == "__main__":
    main()
