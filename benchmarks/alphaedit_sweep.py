"""AlphaEdit on SmolLM2: the sweep that chose the preset's null-space threshold and L2 (not a timing; results in
docs/RESULTS.md).

    python benchmarks/alphaedit_sweep.py --first 1000 --batches 2 --size 100 --out alphaedit_sweep

The authors' threshold (2e-2, for GPT-2 XL, GPT-J and Llama-3-8B) is an absolute eigenvalue of C, and SmolLM2's keys
are on another scale. Cases are CounterFact records from --first on (outside the first 1,000 the evaluation uses),
written in --batches sequential batches of --size with MEMIT's preset (layers 1–5, its v* settings) and AlphaEdit's
solve for each (threshold, L2). After the last batch, every edit so far is scored (ES / PS / NS, CounterFact success
rates; top1, how often the new object is the greedy continuation) with the perplexity on held-out WikiText-2
(`evaluation.health`), and for each threshold the null space's size and the share of the corpus keys' energy in it
(what an update there can disturb). The first batch's targets z, the same for every setting (the unedited model's),
are searched once and saved in --out; rows already in --out/sweep.json are not run again.
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
from memit_sweep import scores  # noqa: E402

import jrome  # noqa: E402
from jrome.editing import alphaedit, key_statistics, load_preset, memit  # noqa: E402
from jrome.editing.hparams import AlphaEditHparams  # noqa: E402
from jrome.editing.requests import parse_requests  # noqa: E402
from jrome.evaluation.datasets import load_dataset  # noqa: E402
from jrome.evaluation.health import heldout_windows, perplexity  # noqa: E402


def null_space_sizes(stats, hp) -> dict:
    """Per edited layer: the null space's dimension and the share of C's trace (corpus key energy) inside it."""
    out = {}
    for layer in hp.layers:
        values = np.linalg.eigvalsh(stats[layer].covariance)
        small = values < hp.nullspace_threshold
        out[layer] = {"dim": int(small.sum()), "corpus_energy": float(values[small].sum() / values.sum())}
    return out


def first_targets(lm, reqs, ids, hp, groups, path: Path) -> np.ndarray:
    """The first batch's targets z on the unedited model: searched once, kept in path."""
    if path.is_file():
        return np.load(path)["z"]
    start = time.perf_counter()
    z, _ = memit.targets(lm, reqs, ids, hp, groups)
    np.savez(path, z=z)
    print(f"first batch's targets: {time.perf_counter() - start:.0f}s", flush=True)
    return z


def run_setting(lm, batches, hp, stats, groups, z_first) -> object:
    """The model after every batch, AlphaEdit with hp's threshold and L2 (the first batch's z given)."""
    projections = alphaedit.null_spaces(stats, hp)
    cache = alphaedit.empty_cache(projections)
    current = lm
    for i, (reqs, ids) in enumerate(batches):
        z = z_first if i == 0 else memit.targets(current, reqs, ids, hp, groups)[0]
        current, undo = memit.spread(current, reqs, z, hp, alphaedit.alpha_solve(hp, projections, cache), groups)
        cache = cache + np.stack([u.keys.T @ u.keys for u in undo.edits])
    return current


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--first", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--out", required=True)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[5e-3, 1e-2, 2e-2])
    parser.add_argument("--l2", type=float, nargs="+", default=[10.0])
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lm = jrome.load("smollm2")
    cases = load_dataset("counterfact")[args.first : args.first + args.batches * args.size]
    hp0 = AlphaEditHparams.from_dict(load_preset("smollm2", "memit").to_dict())  # MEMIT's preset, AlphaEdit's solve
    stats = key_statistics(lm, hp0.layers, n_tokens=hp0.mom2_n_tokens)
    groups = memit.context_groups(lm, hp0)
    batches = [parse_requests(lm, [c.request for c in cases[a : a + args.size]], "AlphaEdit") for a in range(0, len(cases), args.size)]  # fmt: skip
    z_first = first_targets(lm, *batches[0], hp0, groups, out / "z_first.npz")
    windows = heldout_windows(lm)
    print(f"{machine()}\nunedited: {scores(lm, cases) | {'perplexity': perplexity(lm, windows)}}", flush=True)
    results = json.loads((out / "sweep.json").read_text()) if (out / "sweep.json").is_file() else []
    done = {(r["threshold"], r["L2"]) for r in results}
    for threshold in args.thresholds:
        for l2 in args.l2:
            if (threshold, l2) in done:
                continue
            hp = hp0.override(nullspace_threshold=threshold, L2=l2)
            start = time.perf_counter()
            edited = run_setting(lm, batches, hp, stats, groups, z_first)
            row = {"threshold": threshold, "L2": l2, "edits": len(cases)} | scores(edited, cases)
            row |= {"perplexity": perplexity(edited, windows), "null_space": null_space_sizes(stats, hp)}
            row["seconds"] = time.perf_counter() - start
            results.append(row)
            (out / "sweep.json").write_text(json.dumps(results, indent=1))
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
