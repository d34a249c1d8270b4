"""Sequential-edit retention on SmolLM2: as CounterFact edits pile up in blocks, how many earlier ones still hold?

    python benchmarks/retention.py [--edits 100] [--block 10] [--out runs/retention] [--plot docs/retention.png]

The first N CounterFact requests (distinct subjects) are written into SmolLM2 in blocks: ROME and r-ROME one
request after another, each on the model the previous edit produced; MEMIT one batch edit per block, each on the
model the previous block produced (the statistics C stay those of the unedited model, as in the original).
After each block every fact edited so far is scored on the current model: efficacy, paraphrase and
neighbourhood scores (CounterFact, as in `jrome.evaluation`), beside the unedited model's scores of the same
cases. After each block the scores and the edited kernels are saved in --out, so an interrupted run resumes at
its last finished block; --plot draws the scores against the number of edits.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import machine  # noqa: E402

import jrome  # noqa: E402
from jrome.editing import edit, key_statistics, load_preset, memit  # noqa: E402
from jrome.editing.rome import context_templates  # noqa: E402
from jrome.editing.undo import down_kernel, with_down_kernel  # noqa: E402
from jrome.evaluation import counterfact_scores, load_dataset  # noqa: E402

SCORES = ("efficacy_score", "paraphrase_score", "neighborhood_score")
METHODS = ("rome", "r-rome", "memit")


def mean_scores(rows: list[dict]) -> dict[str, float]:
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


def plot(results: dict, path: Path) -> None:
    """Scores of all edits so far against the number of edits, one panel per score, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [int(n) for n in results["unedited"]]
    fig, axes = plt.subplots(1, len(SCORES), figsize=(4 * len(SCORES), 3.4), sharey=True)
    for ax, score in zip(axes, SCORES, strict=True):
        for method, rows in results["methods"].items():
            done = sorted(int(n) for n in rows)
            ax.plot(done, [rows[str(n)][score] for n in done], marker="o", ms=3, label=method)
        ax.plot(sizes, [results["unedited"][str(n)][score] for n in sizes], "k--", lw=1, label="unedited")
        ax.set_title(score.replace("_", " "))
        ax.set_xlabel("edits so far")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("score")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"SmolLM2-135M, CounterFact edits in blocks of {results['block']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edits", type=int, default=100)
    ap.add_argument("--block", type=int, default=10, help="score everything edited so far after each block")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--stats-tokens", type=int, default=100_000)
    ap.add_argument(
        "--templates",
        nargs="+",
        default=["5:10", "10:10"],
        help="generated context templates, LENGTH:COUNT (preset: 5:10 10:10)",
    )
    ap.add_argument("--out", type=Path, default=Path("retention"), help="folder for scores and resume state")
    ap.add_argument("--plot", type=Path, help="draw the scores into this image")
    args = ap.parse_args()
    if args.edits < 1 or args.block < 1 or args.edits % args.block:
        ap.error(f"--edits ({args.edits}) must be a positive multiple of --block ({args.block})")
    args.out.mkdir(parents=True, exist_ok=True)
    saved = args.out / "retention.json"
    settings = {
        "edits": args.edits,
        "block": args.block,
        "stats_tokens": args.stats_tokens,
        "templates": args.templates,
    }
    results = json.loads(saved.read_text()) if saved.exists() else settings | {"unedited": {}, "methods": {}}
    if {k: results.get(k) for k in settings} != settings:
        ap.error(f"{saved} holds a run with other settings; use another --out or the same settings")

    def save() -> None:
        tmp = saved.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2))
        tmp.replace(saved)

    print(machine(), flush=True)
    lm = jrome.load("smollm2")
    cases = distinct_subjects(load_dataset("counterfact"), args.edits)
    sizes = list(range(args.block, args.edits + 1, args.block))
    lengths = [[int(x) for x in t.split(":")] for t in args.templates]
    rome_hp = load_preset("smollm2").override(mom2_n_tokens=args.stats_tokens, context_template_length_params=lengths)
    rome_hp = rome_hp.override(context_templates=list(context_templates(lm, rome_hp, 0)))
    memit_hp = load_preset("smollm2", "memit").override(mom2_n_tokens=args.stats_tokens)  # MEMIT's own templates
    stats = key_statistics(lm, sorted({rome_hp.layer, *memit_hp.layers}), n_tokens=args.stats_tokens)
    if len(results["unedited"]) < len(sizes):
        unedited = [counterfact_scores(lm, case) for case in cases]
        results["unedited"] = {str(n): mean_scores(unedited[:n]) for n in sizes}
        save()

    for method in args.methods:
        rows = results["methods"].setdefault(method, {})
        state = args.out / f"{method}_kernel.npy"
        current = lm
        if rows:
            current = lm.replace(params=with_down_kernel(lm.params, jnp.asarray(np.load(state))))
        start = time.perf_counter() - (rows[str(max(map(int, rows)))]["seconds"] if rows else 0.0)
        for n in sizes:
            if str(n) in rows:
                continue
            block = [c.request for c in cases[n - args.block : n]]
            if method == "memit":
                current = memit.edit(current, block, memit_hp, stats, progress=False)[0]
            else:
                current = edit(current, block, rome_hp.override(rrome=method == "r-rome"), stats[rome_hp.layer], progress=False)[0]  # fmt: skip
            rows[str(n)] = mean_scores([counterfact_scores(current, case) for case in cases[:n]])
            rows[str(n)]["seconds"] = time.perf_counter() - start
            np.save(state.with_suffix(".tmp.npy"), np.asarray(down_kernel(current.params)))
            state.with_suffix(".tmp.npy").replace(state)
            save()
            print(f"{method} after {n} edits: {rows[str(n)]}", flush=True)

    print(f"\n| edits | method | {' | '.join(SCORES)} | seconds |")
    print("|---|---|" + "---|" * (len(SCORES) + 1))
    for n in sizes:
        print(f"| {n} | unedited | " + " | ".join(f"{results['unedited'][str(n)][s]:.3f}" for s in SCORES) + " | – |")
        for method, rows in results["methods"].items():
            if str(n) in rows:
                r = rows[str(n)]
                print(f"| {n} | {method} | " + " | ".join(f"{r[s]:.3f}" for s in SCORES) + f" | {r['seconds']:.0f} |")
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
