"""Evaluation throughput: ROME on CounterFact with SmolLM2, cases per minute and where the time goes.

    python benchmarks/eval.py [--cases 8] [--batches 1 8] [--rows 1 8 32]

jrome's runner (`run_eval`: batched, shape-bucketed scoring in one jitted call per case and the fast v*
search, K cases' searches in one program for each --batches K) against a straightforward loop over the same
cases: one forward per (prompt, target) at its own length, and ROME with the full-forward v* search
(`fast=False`), one case at a time. All score the same probability metrics (the compact CounterFact file has no
generation prompts, so no fluency); each is run once on as many cases as its batch before timing, to compile,
so the times are steady-state.

--rows: scoring K edited models at once against one at a time, apart from editing: K ROME edits (those of the
first cases, reused round-robin past --cases) scored as rows of shared forwards (`score_cases` with
`RowEdits`) against each edited model made (`apply`) and scored alone, on CounterFact and zsRE.
--skip-runner times only that."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import machine  # noqa: E402

import jrome  # noqa: E402
from jrome.editing import edit, hparams_for, key_statistics, rome  # noqa: E402
from jrome.editing.rome import context_templates  # noqa: E402
from jrome.evaluation import load_dataset, run_eval  # noqa: E402
from jrome.evaluation.metrics import target_ids  # noqa: E402
from jrome.evaluation.protocols import score_cases  # noqa: E402


def plain_log_prob(lm, prompt: str, target: str) -> float:
    """Mean token log-prob of target after prompt: one unpadded forward, logits everywhere."""
    answer = target_ids(lm, target)
    ids = np.asarray([lm.tokenizer(prompt)["input_ids"] + answer[:-1]], np.int32)
    logits = np.asarray(jrome.forward(lm, ids).logits[0], np.float64)
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    cols = range(ids.shape[1] - len(answer), ids.shape[1])
    return float(np.mean([logp[c, a] for c, a in zip(cols, answer, strict=True)]))


def plain_scores(lm, case) -> dict[str, float]:
    """ES, PS, NS of one case, one prompt and target at a time."""
    out = {}
    groups = {"ES": [case.request.text], "PS": list(case.paraphrase_prompts)}
    for name, prompts in groups.items():
        new = np.array([plain_log_prob(lm, p, case.request.target_new) for p in prompts])
        true = np.array([plain_log_prob(lm, p, case.target_true) for p in prompts])
        out[name] = float(np.mean(new > true))
    pairs = list(zip(case.neighborhood_prompts, case.neighborhood_answers, strict=True))
    new = np.array([plain_log_prob(lm, p, case.request.target_new) for p, _ in pairs])
    true = np.array([plain_log_prob(lm, p, a) for p, a in pairs])
    out["NS"] = float(np.mean(true > new))
    return out


def scoring_rows(lm, edits, ks: list[int]) -> None:
    """Steady seconds to score K edited models: as rows of shared forwards, and one edited model at a time."""
    print("\nScoring K ROME-edited models (probability metrics), steady seconds")
    for dataset in ("counterfact", "zsre"):
        for k in ks:
            cases = load_dataset(dataset)[:k]
            each = [edits[i % len(edits)] for i in range(k)]

            def rows(cases=cases, each=each):
                return score_cases(lm, cases, 0, 0, None, each)

            def alone(cases=cases, each=each):
                return [score_cases(e.apply(lm), [c], 0, 0, None)[0] for c, e in zip(cases, each, strict=True)]

            rows(), alone()  # compile
            t0 = time.perf_counter()
            rows()
            t_rows = time.perf_counter() - t0
            t0 = time.perf_counter()
            alone()
            t_alone = time.perf_counter() - t0
            print(
                f"{dataset:11s} K={k:<3d} rows {t_rows:6.2f} s ({t_rows / k:.3f} s/case)   one at a time "
                f"{t_alone:6.2f} s ({t_alone / k:.3f} s/case)   {t_alone / t_rows:.2f}x",
                flush=True,
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="cases edited per program (run_eval batch)")
    ap.add_argument("--rows", type=int, nargs="*", default=[1, 8, 32], help="edited models scored together")
    ap.add_argument("--skip-runner", action="store_true", help="time only the scoring of edited models as rows")
    args = ap.parse_args()
    print(machine(), flush=True)
    lm = jrome.load("smollm2")
    cases = load_dataset("counterfact")[: args.cases]
    hp = hparams_for(lm.name, lm.config.family)
    hp = hp.override(context_templates=list(context_templates(lm, hp, 0)))
    stats = key_statistics(lm, hp.layer, n_tokens=hp.mom2_n_tokens)[hp.layer]
    if args.rows:
        edits = [e.rank_one for e in rome.edit_each(lm, [c.request for c in cases], hp, stats=stats, progress=False)]
        scoring_rows(lm, edits, args.rows)
    if args.skip_runner:
        return

    kwargs = {"progress": False, "max_out_len": 0}
    ours = {}
    for k in args.batches:
        run_eval(lm, "rome", "counterfact", k, batch=k, **kwargs)  # compile this batch size's programs
        start = time.perf_counter()
        summary = run_eval(lm, "rome", "counterfact", args.cases, batch=k, **kwargs)
        ours[k] = (time.perf_counter() - start, summary)

    plain_scores(lm, cases[0])
    edit(lm, cases[0].request, hp, stats=stats, fast=False)
    start, t_edit = time.perf_counter(), 0.0
    for case in cases:
        plain_scores(lm, case)
        t0 = time.perf_counter()
        edited = edit(lm, case.request, hp, stats=stats, fast=False)[0]
        t_edit += time.perf_counter() - t0
        plain_scores(edited, case)
    plain = time.perf_counter() - start

    n = len(cases)
    print(f"\nROME on {n} CounterFact cases, SmolLM2 (probability metrics)")
    print(f"straightforward     {plain:7.1f} s = {60 * n / plain:5.2f} cases/min   editing {t_edit / plain:.0%}, scoring {1 - t_edit / plain:.0%}")  # fmt: skip
    for k, (seconds, summary) in ours.items():
        share = summary["seconds_edit"] / (summary["seconds_edit"] + summary["seconds_score"])
        print(
            f"jrome, batch {k:<3d}    {seconds:7.1f} s = {60 * n / seconds:5.2f} cases/min   editing {share:.0%}, "
            f"scoring {1 - share:.0%}   {plain / seconds:.2f}x the straightforward loop, "
            f"{ours[args.batches[0]][0] / seconds:.2f}x batch {args.batches[0]}"
        )


if __name__ == "__main__":
    main()
