"""MEMIT on SmolLM2: the sweep that chose the preset's layers, λ and clamp (not a timing; results in docs/RESULTS.md).

    python benchmarks/memit_sweep.py --first 1000 --n 10 --out memit_sweep_10
    python benchmarks/memit_sweep.py --first 1000 --n 100 --out memit_sweep_100 --z-layers 5 --spans 4 --weights 5000

Cases are CounterFact records from --first on (outside the first records the tests use). For each z layer (the
last edited layer) and clamp factor, the batch's residual targets z are found once (the slow part; saved in
--out, so a rerun resumes); then for each span (how many consecutive layers end at the z layer) and λ
(mom2_update_weight) the batch is written in and scored: ES / PS / NS (CounterFact success rates), the share of
rewrite prompts after which the new object is the greedy continuation (top1), and NS of the unedited model.
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
from jrome.editing import key_statistics, load_preset  # noqa: E402
from jrome.editing.memit import context_groups, memit_solve, spread, targets  # noqa: E402
from jrome.editing.requests import parse_requests  # noqa: E402
from jrome.evaluation.datasets import load_dataset  # noqa: E402
from jrome.evaluation.metrics import score_targets  # noqa: E402


def scores(lm, cases) -> dict[str, float]:
    """ES, PS, NS over the cases, and how often every token of the new object is the argmax after the rewrite prompt."""
    rows = []  # (group, prompt, new, true)
    for c in cases:
        rows.append(("es", c.request.text, c.request.target_new, c.target_true))
        rows += [("ps", p, c.request.target_new, c.target_true) for p in c.paraphrase_prompts]
        rows += [("ns", p, c.request.target_new, a) for p, a in zip(c.neighborhood_prompts, c.neighborhood_answers, strict=True)]  # fmt: skip
    prompts = [p for _, p, _, _ in rows for _ in (0, 1)]
    answers = [t for _, _, new, true in rows for t in (new, true)]
    lp, acc = score_targets(lm, prompts, answers)
    new_lp, true_lp, new_first = lp[0::2], lp[1::2], acc[0::2]
    out = {}
    for group in ("es", "ps", "ns"):
        sel = np.array([g == group for g, _, _, _ in rows])
        wins = new_lp[sel] > true_lp[sel] if group != "ns" else true_lp[sel] > new_lp[sel]
        out[group] = float(np.mean(wins))
    out["top1"] = float(np.mean(new_first[np.array([g == "es" for g, *_ in rows])] == 1.0))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--first", type=int, default=1000)
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--out", required=True)
    parser.add_argument("--z-layers", type=int, nargs="+", default=[4, 5, 6])
    parser.add_argument("--spans", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--weights", type=float, nargs="+", default=[1500, 5000, 15000, 50000])
    parser.add_argument("--clamps", type=float, nargs="+", default=[0.75])
    parser.add_argument("--stats-tokens", type=int, default=100_000)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lm = jrome.load("smollm2")
    cases = load_dataset("counterfact")[args.first : args.first + args.n]
    reqs, ids = parse_requests(lm, [c.request for c in cases], "MEMIT")
    layers = sorted({z - s + 1 for z in args.z_layers for s in args.spans if z - s + 1 >= 0} | set(args.z_layers))
    stats = key_statistics(lm, layers, n_tokens=args.stats_tokens)
    base = scores(lm, cases)
    print(f"{machine()}\nunedited: {base}", flush=True)
    results = json.loads((out / "sweep.json").read_text()) if (out / "sweep.json").is_file() else []
    done = {(r["z_layer"], r["clamp"], r["span"], r["weight"]) for r in results}
    for z_layer in args.z_layers:
        for clamp in args.clamps:
            hp = load_preset("smollm2", "memit").override(layers=[z_layer], clamp_norm_factor=clamp)
            groups = context_groups(lm, hp)
            cache = out / f"z_L{z_layer}_c{clamp}.npz"
            if cache.is_file():
                z = np.load(cache)["z"]
            else:
                start = time.perf_counter()
                z, _ = targets(lm, reqs, ids, hp, groups)
                np.savez(cache, z=z)
                print(f"targets at layer {z_layer}, clamp {clamp}: {time.perf_counter() - start:.0f}s", flush=True)
            for span in args.spans:
                if z_layer - span + 1 < 0:
                    continue
                for weight in args.weights:
                    if (z_layer, clamp, span, weight) in done:
                        continue
                    hp_w = hp.override(layers=list(range(z_layer - span + 1, z_layer + 1)), mom2_update_weight=weight)
                    edited, _ = spread(lm, reqs, z, hp_w, memit_solve(hp_w, stats), groups)
                    row = {"z_layer": z_layer, "clamp": clamp, "span": span, "weight": weight} | scores(edited, cases)
                    row["ns_unedited"] = base["ns"]
                    results.append(row)
                    (out / "sweep.json").write_text(json.dumps(results, indent=1))
                    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
