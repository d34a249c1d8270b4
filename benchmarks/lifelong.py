"""Sequential editing on SmolLM2: edits per minute of the sequential runner against one program per edit, one run.

    python benchmarks/lifelong.py [--method memit] [--edits 16] [--batch 16] [--fresh-edits 4]

CounterFact requests (records from --first on) are written into SmolLM2 batch after batch with the method's
SmolLM2 preset (MEMIT: layers 1-5, its 6 templates; AlphaEdit: the same with its solve), C over 20,000 WikiText-2
tokens, by the editor fold (`jrome.editing.sequential`) in two ways:

  runner    batches of --batch requests: each batch's v* searches run as programs of up to 8 requests, the keys of
            all its requests are read in shared forwards, and each layer is solved once per batch
  per edit  batches of one request: one v* program, one key read and one solve per layer for every edit, the
            original's structure (its compute_z runs once per request); compiled programs are reused
  compiled per edit  the same, with JAX's compiled programs dropped before every edit, so that each edit runs
            programs compiled for it: a loop that starts a process per fact, or bakes the changing weights into the
            program, pays this

The runner and the others compute different edits (a batch at once against one fact at a time), so the ratios are
throughput, not the same numbers faster. The first two ways run twice on different requests of the same count: the
first pass compiles (its compilations are counted), the second is timed (compilations counted again: new token
lengths can still compile).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).parent))
from common import machine  # noqa: E402

import jrome  # noqa: E402
from jrome.compilation import CompileLog  # noqa: E402
from jrome.editing import alphaedit, key_statistics, load_preset, memit  # noqa: E402
from jrome.editing.sequential import AlphaEditor, MemitEditor, fold  # noqa: E402
from jrome.evaluation.datasets import load_dataset  # noqa: E402


def make_editor(lm, method: str):
    hp = load_preset("smollm2", method)
    hp = hp.override(context_templates=[t for g in memit.context_groups(lm, hp) for t in g])  # sampled once, here
    stats = key_statistics(lm, hp.layers, n_tokens=20_000, progress=False)
    if method == "memit":
        return MemitEditor(hp, stats)
    return AlphaEditor(hp, alphaedit.null_spaces(stats, hp))


def timed(editor, lm, requests, size: int, fresh: bool = False) -> tuple[float, int]:
    """(seconds, compilations) of folding the requests into lm in batches of `size` (fresh: dropping JAX's compiled
    programs before every batch)."""
    batches = [requests[a : a + size] for a in range(0, len(requests), size)]
    with CompileLog() as compiled:
        start = time.perf_counter()
        state = editor.start(lm)
        for batch in batches:
            if fresh:
                jax.clear_caches()
            state = fold(editor, state, [batch])
        jax.block_until_ready(state.lm.params)
        return time.perf_counter() - start, len(compiled)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=["memit", "alphaedit"], default="memit")
    parser.add_argument("--edits", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--first", type=int, default=2000, help="first CounterFact record (away from the evaluation's)")
    parser.add_argument("--fresh-edits", type=int, help="edits of the compiled-per-edit way (default: --edits)")
    args = parser.parse_args()
    args.fresh_edits = args.edits if args.fresh_edits is None else args.fresh_edits
    if min(args.edits, args.batch) < 1 or not 1 <= args.fresh_edits <= args.edits:
        parser.error(f"need --edits and --batch >= 1 and 1 <= --fresh-edits <= --edits; got {args.edits}, {args.batch}, {args.fresh_edits}")  # fmt: skip
    lm = jrome.load("smollm2")
    cases = load_dataset("counterfact")[args.first : args.first + 5 * args.edits]
    requests = [c.request for c in cases]
    editor = make_editor(lm, args.method)
    print(machine(), flush=True)
    print(f"{args.method}, {args.edits} edits; runner in batches of {args.batch}\n")
    print("| way | pass | seconds | compilations | edits per minute |\n|---|---|---|---|---|")
    rates = {}
    ways = (("runner", args.batch, (0, 1)), ("per edit", 1, (2, 3)), ("compiled per edit", 1, (4,)))
    for name, size, sets in ways:
        for pass_, index in zip(("first (compiles)", "second (timed)") if len(sets) > 1 else ("one",), sets, strict=True):  # fmt: skip
            count = args.fresh_edits if name == "compiled per edit" else args.edits
            part = requests[index * args.edits : index * args.edits + count]
            seconds, compiled = timed(editor, lm, part, size, fresh=name == "compiled per edit")
            rates[name] = 60 * count / seconds
            print(f"| {name} | {pass_} | {seconds:.1f} | {compiled} | {rates[name]:.1f} |", flush=True)
    print(f"\nrunner (second pass) / per edit (second pass): {rates['runner'] / rates['per edit']:.2f}x")
    print(f"runner (second pass) / compiled per edit: {rates['runner'] / rates['compiled per edit']:.2f}x")


if __name__ == "__main__":
    main()
