"""Sequential-edit retention on SmolLM2: after 1, 10 and 100 CounterFact edits, how many still hold?

    python benchmarks/retention.py [--sizes 1 10 100] [--out retention.json]

Sequential ROME (and r-ROME) applies the first N CounterFact requests one after another, each on the model
the previous one produced; MEMIT writes the same N requests in one batch edit. After the last edit every
edited fact is scored on the final model: efficacy, paraphrase and neighbourhood scores (CounterFact, as in
`jrome.evaluation`), with the unedited model's scores for reference. The sequential runs score at every
size on the way to the largest, so one pass of 100 edits gives the 1-, 10- and 100-edit rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import machine  # noqa: E402

import jrome  # noqa: E402
from jrome.editing import edit, key_statistics, load_preset, memit  # noqa: E402
from jrome.editing.rome import context_templates  # noqa: E402
from jrome.evaluation import counterfact_scores, load_dataset  # noqa: E402

SCORES = ("efficacy_score", "paraphrase_score", "neighborhood_score")


def score_all(lm, cases) -> dict[str, float]:
    rows = [counterfact_scores(lm, case) for case in cases]
    return {name: float(np.mean([r[name] for r in rows])) for name in SCORES}


def distinct_subjects(cases, n: int) -> list:
    """The first n cases with distinct subjects (MEMIT edits each subject once per batch)."""
    seen, out = set(), []
    for case in cases:
        if case.request.subject not in seen:
            seen.add(case.request.subject)
            out.append(case)
        if len(out) == n:
            return out
    raise ValueError(f"the dataset has only {len(out)} distinct subjects; asked for {n}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 100])
    ap.add_argument("--methods", nargs="+", default=["rome", "r-rome", "memit"])
    ap.add_argument("--stats-tokens", type=int, default=100_000)
    ap.add_argument(
        "--templates",
        nargs="+",
        default=["5:10", "10:10"],
        help="generated context templates, LENGTH:COUNT (preset: 5:10 10:10)",
    )
    ap.add_argument("--out", default="retention.json")
    args = ap.parse_args()
    sizes = sorted(args.sizes)
    print(machine(), flush=True)
    lm = jrome.load("smollm2")
    cases = distinct_subjects(load_dataset("counterfact"), sizes[-1])
    lengths = [[int(x) for x in t.split(":")] for t in args.templates]
    rome_hp = load_preset("smollm2").override(mom2_n_tokens=args.stats_tokens, context_template_length_params=lengths)
    rome_hp = rome_hp.override(context_templates=list(context_templates(lm, rome_hp, 0)))
    memit_hp = load_preset("smollm2", "memit").override(mom2_n_tokens=args.stats_tokens)  # MEMIT's own templates
    stats = key_statistics(lm, sorted({rome_hp.layer, *memit_hp.layers}), n_tokens=args.stats_tokens)
    results: dict = {"machine": machine(), "sizes": sizes, "templates": rome_hp.context_templates, "unedited": {}, "methods": {}}  # fmt: skip
    for n in sizes:
        results["unedited"][n] = score_all(lm, cases[:n])
        print(f"unedited, first {n}: {results['unedited'][n]}", flush=True)

    for method in args.methods:
        rows, start = {}, time.perf_counter()
        if method in ("rome", "r-rome"):
            hp = rome_hp.override(rrome=method == "r-rome")
            current = lm
            for i, case in enumerate(cases, 1):
                current = edit(current, case.request, hp, stats=stats[hp.layer])[0]
                if i in sizes:
                    rows[i] = score_all(current, cases[:i]) | {"seconds": time.perf_counter() - start}
                    print(f"{method} after {i} edits: {rows[i]}", flush=True)
        elif method == "memit":
            for n in sizes:
                t0 = time.perf_counter()
                edited = memit.edit(lm, [c.request for c in cases[:n]], memit_hp, stats)[0]
                rows[n] = score_all(edited, cases[:n]) | {"seconds": time.perf_counter() - t0}
                print(f"memit batch of {n}: {rows[n]}", flush=True)
        else:
            raise ValueError(f"unknown method {method!r}; known: rome, r-rome, memit")
        results["methods"][method] = rows
        Path(args.out).write_text(json.dumps(results, indent=2))

    print(f"\n| edits | method | {' | '.join(SCORES)} | seconds |")
    print("|---|---|" + "---|" * (len(SCORES) + 1))
    for n in sizes:
        print(f"| {n} | unedited | " + " | ".join(f"{results['unedited'][n][s]:.3f}" for s in SCORES) + " | – |")
        for method, rows in results["methods"].items():
            r = rows[n]
            print(f"| {n} | {method} | " + " | ".join(f"{r[s]:.3f}" for s in SCORES) + f" | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
