"""The `jrome` command line: one subcommand per job, each a thin layer over the library."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

DEMO_PROMPTS = (
    "The Eiffel Tower is located in the city of",
    "The Space Needle is located in the city of",
    "The mother tongue of Danielle Darrieux is",
    "Steve Jobs was the founder of",
    "The capital of Japan is",
)


def _top_predictions(lm, prompts: Sequence[str], k: int) -> list[dict]:
    """The k most likely next tokens of each prompt, with probabilities."""
    from .prediction import next_tokens

    found = next_tokens(lm, prompts, k=k)
    return [
        {"prompt": prompt, "top": [{"token": lm.tokenizer.decode([int(i)]), "p": float(p)} for i, p in zip(ids, ps, strict=True)]}
        for prompt, ids, ps in zip(prompts, found.top, found.p_top, strict=True)
    ]  # fmt: skip


def _print_predictions(rows: list[dict]) -> None:
    for row in rows:
        print(row["prompt"])
        for item in row["top"]:
            print(f"  {item['p']:7.4f}  {item['token']!r}")


def _load_model(args: argparse.Namespace):
    """The model named on the command line, laid out over --mesh when one is given."""
    from .models.loading import load

    if not getattr(args, "mesh", None):
        return load(args.model, args.dtype)
    from .sharding import make_mesh, parse_mesh

    sizes = parse_mesh(args.mesh)
    lm = load(args.model, args.dtype, mesh=make_mesh(sizes["data"], sizes["model"]))
    print(f"parameters sharded over a data={sizes['data']} x model={sizes['model']} mesh", file=sys.stderr)
    return lm


def cmd_predict(args: argparse.Namespace) -> int:
    lm = _load_model(args)
    rows = _top_predictions(lm, args.prompt, args.top)
    _print_predictions(rows)
    if args.json:
        _write_json(args.json, rows)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from .generation import generate

    lm = _load_model(args)
    outs = generate(
        lm, args.prompt, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, seed=args.seed
    )
    for prompt, out in zip(args.prompt, outs, strict=True):
        print(f"{prompt}{out}")
    return 0


DEMO_SUBJECTS = (  # the noise scale of the demo offline, without known_1000
    "The Eiffel Tower", "The Space Needle", "Barack Obama", "Danielle Darrieux", "Steve Jobs", "Apple",
    "The Louvre", "Mount Everest", "Toyota", "Albert Einstein", "The Amazon River", "Microsoft",
    "William Shakespeare", "The Great Wall of China", "Nintendo", "Marie Curie", "Lake Victoria", "BMW",
)  # fmt: skip


def _noise_subjects(say: Callable[[str], None]) -> tuple[list[str], str]:
    """The subjects whose embedding spread sets the noise scale: known_1000's (fetched on first use), else, offline,
    the built-in ones, said with the line that names the command fetching known_1000."""
    from .data import load_known

    try:
        return [record["subject"] for record in load_known()], "the subjects of known_1000"
    except OSError as err:
        say(f"noise scale: {err}; meanwhile {len(DEMO_SUBJECTS)} built-in subjects")
        return list(DEMO_SUBJECTS), f"{len(DEMO_SUBJECTS)} built-in subjects"


def _peak_layer(result) -> int:
    """The layer whose MLP window restores the most at the last subject token (how the presets' layers are chosen)."""
    import numpy as np

    return int(np.nanargmax(result.scores[result.subject_range[1] - 1]))


def _key_statistics(lm, hp, say: Callable[[str], None], *, fallback: bool) -> tuple[Any, Any]:
    """(hparams, key statistics) of an edit: published where the preset names them, else computed, a hub corpus
    fetched on first use. Without them: with `fallback`, C = I and the reason said; else the reason as one error."""
    from .editing.published import statistics_for

    if not hp.mom2_adjustment:
        say("key statistics: none (--no-stats or mom2_adjustment=false), so C = I; the paper's ROME uses them")
        return hp, None
    try:
        stats = statistics_for(lm, hp, hp.layer)[hp.layer]
    except OSError as err:
        if not fallback:
            raise type(err)(f"{err}; or add --no-stats to edit with C = I") from None
        say(f"key statistics: {err}; meanwhile C = I")
        return hp.override(mom2_adjustment=False), None
    say(f"key statistics at layer {hp.layer}: {stats.count} tokens of {stats.corpus} (cached for next time)")
    return hp, stats


def _rome_setup(
    lm, overrides: dict, say: Callable[[str], None], *, mlp_trace: Callable[[], Any], choose: str, fallback: bool
) -> tuple[Any, Any]:
    """The policy of `edit` and `demo`: (ROME's hparams, key statistics). The preset with `overrides`; without a
    preset layer, the MLP peak of mlp_trace() at the last subject token (said, with `choose`: how to pick another);
    the statistics as _key_statistics gives them."""
    from .editing import hparams_for

    hp = hparams_for(lm.name, lm.config.family).override(**overrides)
    if hp.layer is None:
        hp = hp.override(layer=_peak_layer(mlp_trace()))
        say(f"no preset layer for {lm.name}: layer {hp.layer}, the MLP peak of a causal trace at the last subject "
            f"token ({choose} chooses another)")  # fmt: skip
    return _key_statistics(lm, hp, say, fallback=fallback)


DEMO_FACT = ("The Eiffel Tower is located in the city of", "The Eiffel Tower", "Rome")
DEMO_CHECKS = {
    "prompt": DEMO_FACT[0], "paraphrase": "The Eiffel Tower is in the heart of",
    "neighbour": "The Louvre is located in the city of",
}  # fmt: skip


def _demo_trace(lm, args: argparse.Namespace, step: Callable[[str], None]) -> tuple[Any, dict, dict, list[str]]:
    """The demo's causal trace of DEMO_FACT, every kind, a heatmap each: (runs, results by kind, summary, pictures)."""
    from pathlib import Path

    from .plots import plot_trace
    from .tracing import KINDS, corrupt_and_clean, noise_std, restore

    prompt, subject, _ = DEMO_FACT
    subjects, source = _noise_subjects(step)
    scale = 3 * noise_std(lm, subjects)
    step(f"causal trace of {prompt!r}, subject {subject!r}: {args.samples} noise samples, scale {scale:.3f} "
         f"(3 sd over {source})")  # fmt: skip
    runs = corrupt_and_clean(lm, prompt, subject, samples=args.samples, noise=scale)
    summary = {"answer": lm.tokenizer.decode([runs.answer_id]), "high_score": runs.high_score, "low_score": runs.low_score}  # fmt: skip
    pictures, results = [], {}
    for kind in KINDS:
        t0 = time.perf_counter()
        result = results[kind] = restore(lm, runs, kind)
        path = Path(args.out) / f"trace_{kind}.png"
        plot_trace(result, path, model_name=lm.name)
        pictures.append(str(path))
        token, layer = divmod(int(result.scores.argmax()), result.scores.shape[1])
        summary[kind] = {"strongest": {"token": result.tokens[token], "layer": layer, "p": float(result.scores.max())}}
        step(f"  {kind:6s} {time.perf_counter() - t0:5.1f}s  strongest: token {result.tokens[token]!r} layer {layer} "
             f"p={result.scores.max():.3f} -> {path}")  # fmt: skip
    return runs, results, summary, pictures


def _demo_edit(lm, hp, stats, runs, tokens: int, step: Callable[[str], None]) -> tuple[dict, float]:
    """The demo's ROME edit of DEMO_FACT, with generations and next-token probabilities of DEMO_CHECKS before and
    after: (the summary's checks, seconds the edit took)."""
    from .editing import edit
    from .generation import generate
    from .tokens import spaced

    _, subject, target = DEMO_FACT
    before = {name: generate(lm, [text], tokens)[0] for name, text in DEMO_CHECKS.items()}
    t0 = time.perf_counter()
    new, _ = edit(
        lm, {"prompt": "{} is located in the city of", "subject": subject, "target_new": target}, hp, stats=stats
    )
    seconds = time.perf_counter() - t0
    step(f"ROME: {subject} -> {target} at layer {hp.layer} in {seconds:.1f}s")
    after = {name: generate(new, [text], tokens)[0] for name, text in DEMO_CHECKS.items()}
    target_id = lm.tokenizer(spaced(target), add_special_tokens=False)["input_ids"][0]
    texts = list(DEMO_CHECKS.values())
    rows = zip(
        _fact_rows(lm, texts, target_id, runs.answer_id), _fact_rows(new, texts, target_id, runs.answer_id), strict=True
    )
    checks = {}
    for (name, text), (b, a) in zip(DEMO_CHECKS.items(), rows, strict=True):
        checks[name] = {"prompt": text, "before": b | {"text": before[name]}, "after": a | {"text": after[name]}}
        print(f"  {name:10s} {text!r}")
        print(f"      before: p({target})={b['p_target']:.3f}  ...{before[name]!r}")
        print(f"      after:  p({target})={a['p_target']:.3f}  ...{after[name]!r}")
    return checks, seconds


def cmd_demo(args: argparse.Namespace) -> int:
    """Load SmolLM2, trace the Eiffel Tower fact, move it to Rome with ROME, and compare generations."""
    from pathlib import Path

    from .evaluation.methods import get_method
    from .models.loading import load, param_count

    overrides = dict(args.hparam) | {"mom2_n_tokens": args.stats_tokens}
    get_method("rome").check_overrides(overrides)  # before the model loads
    summary: dict = {"model": args.model, "seconds": {}}
    clock = time.perf_counter()

    def step(text: str) -> None:
        print(f"[{time.perf_counter() - clock:6.1f}s] {text}", flush=True)

    lm = load(args.model)
    cfg = lm.config
    step(f"loaded {lm.name}: {cfg.family}, {cfg.n_layers} layers, d_model {cfg.d_model}, "
         f"{param_count(lm) / 1e6:.0f}M parameters")  # fmt: skip
    for row in _top_predictions(lm, DEMO_PROMPTS, 3):
        print(f"    {row['prompt']!r} -> " + ", ".join(f"{t['token']!r} {t['p']:.2f}" for t in row["top"]))
    runs, results, summary["trace"], pictures = _demo_trace(lm, args, step)
    # unlike `edit`, the demo goes on with C = I without statistics
    hp, stats = _rome_setup(lm, overrides, step, mlp_trace=lambda: results["mlp"], choose="--hparam layer=N",
                            fallback=True)  # fmt: skip
    checks, summary["seconds"]["edit"] = _demo_edit(lm, hp, stats, runs, args.tokens, step)
    summary["edit"] = {"layer": hp.layer, "target": DEMO_FACT[2], "old_answer": summary["trace"]["answer"],
                       "checks": checks, "succeeded": checks["prompt"]["after"]["top"].strip() == DEMO_FACT[2]}  # fmt: skip
    summary["pictures"] = pictures
    summary["seconds"]["total"] = time.perf_counter() - clock
    out = Path(args.out) / "summary.json"
    _write_json(str(out), summary)
    step(f"done. Heatmaps: {', '.join(pictures)}; summary: {out}")
    return 0


PLOT_SUFFIXES = (".png", ".jpg", ".jpeg", ".svg", ".pdf")


def plot_paths(path: str, kind: str, many: bool) -> list[str]:
    """The files `--plot PATH` writes for one kind: PATH in the format its suffix names (none: .png) and a PDF beside
    it; out_hidden.png etc. when several kinds are traced. An unknown suffix is an error listing the accepted ones."""
    stem, suffix = os.path.splitext(path)
    suffix = suffix.lower() or ".png"
    if suffix not in PLOT_SUFFIXES:
        raise ValueError(f"--plot {path}: the suffix sets the picture's format; accepted: {', '.join(PLOT_SUFFIXES)}")
    stem = f"{stem}_{kind}" if many else stem
    return [stem + suffix] + ([stem + ".pdf"] if suffix != ".pdf" else [])


def noise_arg(text: str) -> str | float:
    """An argparse type for --noise: a positive float scale, or the text itself ("s3"), which the library checks."""
    try:
        value = float(text)
    except ValueError:
        return text
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive scale (accepted: s3, s<factor>, or a number > 0)")
    return value


def _token_range_arg(text: str | None) -> str | list[int] | None:
    """--token-range: "subject_last" or comma-separated token indices."""
    if text is None or text == "subject_last":
        return text
    try:
        return [int(t) for t in text.split(",")]
    except ValueError:
        raise ValueError(f"--token-range {text!r}; accepted: subject_last, or token indices such as 0,3,9") from None


def cmd_trace(args: argparse.Namespace) -> int:
    import numpy as np

    from .plots import plot_trace
    from .tracing import KINDS, corrupt_and_clean, restore

    kinds = list(KINDS) if args.kind == "all" else [args.kind]
    token_range = _token_range_arg(args.token_range)
    if isinstance(args.noise, str):  # "s<factor>" scales by known_1000's subjects: fetched if missing
        from .data import fetch

        fetch("known_1000")
    lm = _load_model(args)
    start = time.perf_counter()
    runs = corrupt_and_clean(
        lm, args.prompt, args.subject, samples=args.samples, noise=args.noise, seed=args.seed,
        uniform=args.uniform, replace=args.replace, answer=args.answer,
    )  # fmt: skip
    print(
        f"answer {lm.tokenizer.decode([runs.answer_id])!r}: p clean {runs.high_score:.4f}, corrupted {runs.low_score:.4f} "
        f"(subject tokens {runs.subject_range[0]}..{runs.subject_range[1] - 1}, noise scale {runs.noise_scale:.4f})"
    )
    results, written = {}, []
    for kind in kinds:
        t0 = time.perf_counter()
        result = restore(lm, runs, kind, window=args.window, sever=args.sever, token_range=token_range,
                         max_batch_bytes=args.max_batch_bytes)  # fmt: skip
        token, layer = divmod(int(np.nanargmax(result.scores)), result.scores.shape[1])
        print(
            f"{kind:6s}: {time.perf_counter() - t0:6.1f}s  strongest restoration: token {token} "
            f"{result.tokens[token]!r} at layer {layer}, p = {result.scores[token, layer]:.4f}"
        )
        results[kind] = result.to_dict()
        if args.plot:
            paths = plot_paths(args.plot, kind, len(kinds) > 1)
            plot_trace(result, *paths, model_name=lm.name)
            written += paths
    if args.json:
        _write_json(args.json, results)
        written.append(args.json)
    print(f"total {time.perf_counter() - start:.1f}s" + (f"; wrote {', '.join(written)}" if written else ""))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from .corpus import HUB, fetch_corpus
    from .data import FILES, fetch, file_name

    names = list(FILES) if "all" in args.names else args.names
    corpora = [name for name in names if name in HUB or name.startswith("hf:")]
    for name in names:
        if name not in corpora:
            file_name(name)  # an unknown name stops before any download
    for name in names:
        if name in corpora:
            paths = fetch_corpus(name)
            print(f"{name}: {len(paths)} file{'s' * (len(paths) > 1)} in {paths[0].parent}")
        else:
            print(f"{file_name(name)}: {fetch(name, download=True, progress=not args.quiet)}")
    return 0


def cmd_trace_dataset(args: argparse.Namespace) -> int:
    import numpy as np

    from .data import fetch, load_known
    from .tracing.dataset import NO_CORRECT, trace_dataset

    facts = load_known(fetch(args.facts) if args.facts in ("known_1000", "known_1000.json") else args.facts)
    subjects = [f["subject"] for f in facts]  # "s3" scales by all the file's subjects, as the original's --fact_file
    if args.n is not None:
        if args.n > len(facts):
            print(f"--n {args.n} is more than the {len(facts)} facts there are; tracing all {len(facts)}")
        facts = facts[: args.n]
    lm = _load_model(args)
    summary = trace_dataset(
        lm, facts, args.kinds, samples=args.samples, noise=args.noise, window=args.window,
        seed=args.seed, sever=args.sever, noise_subjects=subjects, max_batch_bytes=args.max_batch_bytes, out=args.out,
    )  # fmt: skip
    print(f"{summary.n_correct} of {summary.n_facts} facts answered correctly and traced", end="")
    if not summary.n_correct:
        print(f": {NO_CORRECT}; wrote {args.out}/summary.json and facts.jsonl")
        return 0
    print(f"; ATE {summary.ate:.4f}")
    for name, aie in summary.aie.items():
        peak = ", ".join("-" if np.isnan(row).all() else f"{np.nanmax(row):.3f}" for row in aie)
        print(f"{name:12s} peak AIE per category: {peak}")
    plots = "average_effects.png/.pdf" + (", severed_effects.png/.pdf" if args.sever else "")
    print(f"wrote {args.out}/summary.json, summary.npz, {plots}, settings.json and facts.jsonl")
    return 0


def _fact_rows(lm, prompts: Sequence[str], target: int, old: int) -> list[dict]:
    """Top prediction, p(target) and p(old answer) at the next token of each prompt."""
    from .prediction import next_tokens

    found = next_tokens(lm, prompts, tokens=(target, old))
    return [
        {"top": lm.tokenizer.decode([int(top[0])]), "p_top": float(p_top[0]), "p_target": float(p[0]), "p_old": float(p[1])}
        for top, p_top, p in zip(found.top, found.p_top, found.p, strict=True)
    ]  # fmt: skip


def _mlp_trace(lm, req) -> Any:
    """A causal trace of the request's MLP states at its last subject token (where `edit` finds a layer)."""
    from .tracing import trace

    subjects, _ = _noise_subjects(_say)
    return trace(lm, req.text, req.subject, kind="mlp", noise_subjects=subjects, token_range="subject_last")


def _edit_overrides(args: argparse.Namespace) -> dict:
    overrides = dict(args.hparam) | {
        k: v for k, v in {"layer": args.layer, "mom2_n_tokens": args.stats_tokens}.items() if v is not None
    }
    if args.rrome:
        overrides["rrome"] = True
    if args.no_stats:
        overrides["mom2_adjustment"] = False
    return overrides


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def cmd_edit(args: argparse.Namespace) -> int:
    from .editing import edit
    from .editing.requests import Request, target_ids
    from .evaluation.methods import get_method
    from .models.checkpoint import export_hf, save

    req = Request.parse({"prompt": args.prompt, "subject": args.subject, "target_new": args.target})
    get_method("rome").check_overrides(_edit_overrides(args))  # before the model loads
    lm = _load_model(args)
    targets = target_ids(lm, req)  # the request against the tokenizer, before the statistics
    hp, stats = _rome_setup(lm, _edit_overrides(args), _say, mlp_trace=lambda: _mlp_trace(lm, req),
                            choose="--layer N", fallback=False)  # fmt: skip
    prompts = [req.text, *(check.replace("{}", req.subject) for check in args.check)]
    probe = _fact_rows(lm, [req.text], 0, 0)[0]
    old = lm.tokenizer(probe["top"], add_special_tokens=False)["input_ids"][0]
    before = _fact_rows(lm, prompts, targets[0], old)
    start = time.perf_counter()
    new, undo = edit(lm, req, hp, stats=stats, seed=args.seed)
    seconds = time.perf_counter() - start
    after = _fact_rows(new, prompts, targets[0], old)
    label = repr(lm.tokenizer.decode(targets[:1]))
    print(f"edited layer {hp.layer} in {seconds:.1f}s: {req.text!r} -> {args.target!r} (was {probe['top']!r})")
    if len(targets) > 1:
        print(f"p({label}) is the first of the target's {len(targets)} tokens: the next token after each prompt")
    rows = []
    for prompt, b, a in zip(prompts, before, after, strict=True):
        rows.append({"prompt": prompt, "before": b, "after": a})
        print(prompt)
        for when, r in (("before", b), ("after", a)):
            print(f"  {when:6s} top {r['top']!r:14s} p={r['p_top']:.4f}   p({label})={r['p_target']:.4f}   "
                  f"p(old)={r['p_old']:.4f}")  # fmt: skip
    payload = {
        "request": dataclasses.asdict(req), "layer": hp.layer, "hparams": hp.to_dict(), "old_answer": probe["top"],
        "target_token": lm.tokenizer.decode(targets[:1]), "target_tokens": len(targets),
        "seconds": seconds, "losses": [x for x in undo.edits[0].losses[:, 0].tolist() if x == x], "checks": rows,
    }  # fmt: skip
    if args.json:
        _write_json(args.json, payload)
    if args.save:
        save(new, args.save, overwrite=args.overwrite)
        print(f"saved the edited model to {args.save} (jrome.load reads it back)")
    if args.export_hf:
        export_hf(new, args.export_hf, overwrite=args.overwrite)
        print(f"exported a Hugging Face model to {args.export_hf}")
    return 0


def _check_layer(lm, method: str, overrides: dict) -> None:
    """A model without a preset layer needs one from the command line (every case is edited there): said in one line
    before any case is edited."""
    from .editing import hparams_for

    kind, key, flag = {"rome": ("rome", "layer", "--layer N"), "r-rome": ("rome", "layer", "--layer N"),
                       "memit": ("memit", "layers", "--hparam layers=[...]")}.get(method, (None, None, None))  # fmt: skip
    if kind and overrides.get(key) is None and getattr(hparams_for(lm.name, lm.config.family, kind), key) is None:
        raise ValueError(
            f"no {method} preset layer for {lm.name}: add {flag} (e.g. the MLP peak at the last subject token of "
            "`jrome trace --kind mlp`)"
        )


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation import load_dataset, markdown_table, run_eval
    from .evaluation.methods import get_method
    from .evaluation.runner import check_protocol_args

    overrides = dict(args.hparam) | {
        k: v for k, v in {"layer": args.layer, "mom2_n_tokens": args.stats_tokens}.items() if v is not None
    }
    get_method(args.method).check_overrides(overrides)  # bad names stop before the model is loaded
    check_protocol_args(args.method, args.num_edits, args.sequential, args.targets_from is not None)
    load_dataset(args.dataset)  # read (and fetched if missing) before the model loads: a bad file is one line now
    lm = _load_model(args)
    _check_layer(lm, args.method, overrides)
    summary = run_eval(
        lm, args.method, args.dataset, args.n, args.out, hparams=overrides, max_out_len=args.max_out_len,
        seed=args.seed, pre_from=args.pre_from, targets_from=args.targets_from, batch=args.batch, num_edits=args.num_edits,
        sequential=args.sequential, curve_every=args.curve_every, ppl_tokens=args.ppl_tokens,
    )  # fmt: skip
    print(markdown_table(summary, f"{args.method} on {args.dataset} ({lm.name})"))
    print(f"mean seconds per case: edit {summary['seconds_edit']:.2f}, scoring {summary['seconds_score']:.2f}")
    print(f"wrote {args.out}/cases.jsonl, summary.json and summary.md")
    return 0


def _write_json(path: str, payload: object) -> None:
    from .files import atomic_write_text, json_safe

    atomic_write_text(path, json.dumps(json_safe(payload), indent=2))


def count(minimum: int = 1) -> Callable[[str], int]:
    """An argparse type for counts: a whole number of at least `minimum`, else argparse's one-line error (exit 2)
    before any work starts, so `--n -1` cannot become a Python slice."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (accepted: >= {minimum})") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is out of range (accepted: >= {minimum})")
        return value

    return parse


def byte_size(text: str) -> int:
    """An argparse type for memory sizes: bytes, or a number with K, M, G or T (powers of 1024), e.g. 8G."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    number, unit = text.strip().upper().rstrip("B").rstrip("I"), ""
    if number[-1:] in units:
        number, unit = number[:-1], number[-1]
    try:
        value = int(float(number) * units[unit])
    except (ValueError, OverflowError):
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a memory size (accepted: bytes, or e.g. 512M, 8G)")
    return value


def hparam(text: str) -> tuple[str, Any]:
    """An argparse type for KEY=VALUE: VALUE read as JSON (numbers, lists, true/false, null), else as text."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (accepted: e.g. v_num_grad_steps=10)")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def hparam_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--hparam", type=hparam, action="append", default=[], metavar="KEY=VALUE",
        help="set one hyperparameter over the preset, VALUE as JSON, e.g. kl_factor=0.1 or "
        "context_template_length_params=[[5,3]] (repeatable; names as in docs/editing.md)",
    )  # fmt: skip


class _Help(argparse.HelpFormatter):
    """Every option's help ends with its default, where it has one that says something."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        says_nothing = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if not says_nothing and action.default != [] and "default" not in text:
            text += " (default: %(default)s)"
        return text


def _model_args(p: argparse.ArgumentParser) -> None:
    """The options every command that loads a model takes."""
    p.add_argument("--model", default="smollm2", help="smollm2, a model directory, a hub id, or a .gguf file")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="parameter precision")
    p.add_argument(
        "--mesh",
        help="shard over data x model devices, e.g. 'data=2,model=3' (model divides heads, kv heads and the MLP "
        "width; data splits trace samples)",
    )


def _add_demo(sub: Any) -> None:
    """The `demo` subcommand and its options."""
    p = sub.add_parser(
        "demo", formatter_class=_Help, help="trace and edit a fact on the embedded model (the README's first command)"
    )
    p.add_argument("--model", default="smollm2", help="smollm2, a model directory, a hub id, or a .gguf file")
    p.add_argument("--out", default="jrome-demo", help="folder for the heatmaps and summary.json")
    p.add_argument("--samples", type=count(), default=10, help="noise samples of the trace (>= 1)")
    p.add_argument("--stats-tokens", type=count(), default=20_000, help="wikitext-2 tokens of key statistics (>= 1)")
    p.add_argument("--tokens", type=count(), default=16, help="tokens generated before and after the edit (>= 1)")
    hparam_arg(p)
    p.set_defaults(run=cmd_demo)


def _add_predict(sub: Any) -> None:
    """The `predict` subcommand and its options."""
    p = sub.add_parser("predict", formatter_class=_Help, help="top next-token predictions for prompts")
    _model_args(p)
    p.add_argument("--prompt", action="append", required=True, help="a prompt (repeatable)")
    p.add_argument("--top", type=count(), default=5, help="predictions shown per prompt (>= 1)")
    p.add_argument("--json", help="also write the predictions to this JSON file")
    p.set_defaults(run=cmd_predict)


def _trace_args(p: argparse.ArgumentParser) -> None:
    """The options `trace` and `trace-dataset` share."""
    p.add_argument("--samples", type=count(), default=10, help="noise samples per corruption (>= 1)")
    p.add_argument(
        "--noise", type=noise_arg, default="s3",
        help="s3 (3 x std of the subjects' token embeddings) or a positive float scale",
    )  # fmt: skip
    p.add_argument("--window", type=count(), default=10, help="layers restored together for mlp/attn kinds (>= 1)")
    p.add_argument("--seed", type=int, default=1, help="seed of numpy's RandomState that draws the noise")
    p.add_argument("--max-batch-bytes", type=byte_size, help="device memory a trace call may fill, e.g. 8G "
                   "(default: half of what the parameters leave free)")  # fmt: skip


def _add_trace(sub: Any) -> None:
    """The `trace` subcommand and its options."""
    p = sub.add_parser("trace", formatter_class=_Help, help="causal trace of one prompt (paper Fig. 1)")
    _model_args(p)
    p.add_argument("--prompt", required=True, help="the fact's prompt, with the subject written in")
    p.add_argument("--subject", required=True, help="the subject, as it appears in the prompt")
    p.add_argument("--kind", default="all", choices=["all", "hidden", "mlp", "attn"], help="which states are restored")
    _trace_args(p)
    p.add_argument("--uniform", action="store_true", help="uniform noise instead of Gaussian")
    p.add_argument("--replace", action="store_true", help="replace the subject embeddings by the noise")
    p.add_argument("--answer", help="score this answer's first token, not the prediction ('Paris' is ' Paris')")
    p.add_argument("--sever", choices=["mlp", "attn"], help="freeze that module at the restored token (Fig. 3)")
    p.add_argument("--token-range", help="restore only these tokens: subject_last, or indices such as 0,3,9")
    p.add_argument("--json", help="write every field of the result, per kind")
    p.add_argument(
        "--plot",
        help="heatmap path, its suffix the format (.png, .jpg, .svg, .pdf); a PDF is written beside it; one per kind",
    )
    p.set_defaults(run=cmd_trace)


def _add_trace_dataset(sub: Any) -> None:
    """The `trace-dataset` subcommand and its options."""
    p = sub.add_parser(
        "trace-dataset", formatter_class=_Help, help="average indirect effects over known facts (paper Fig. 2)"
    )
    _model_args(p)
    p.add_argument("--facts", default="known_1000", help="known_1000 (fetched on first use) or a JSON path")
    p.add_argument("--n", type=count(), help="trace the first N facts (>= 1; default: all)")
    p.add_argument(
        "--kinds", nargs="+", default=["hidden", "mlp", "attn"], choices=["hidden", "mlp", "attn"],
        help="which states are restored",
    )  # fmt: skip
    _trace_args(p)
    p.add_argument("--sever", nargs="+", choices=["mlp", "attn"], help="also trace h with that severed (Fig. 3)")
    p.add_argument("--out", required=True, help="folder for per-fact results (resumable) and the summary")
    p.set_defaults(run=cmd_trace_dataset)


def _add_edit(sub: Any) -> None:
    """The `edit` subcommand and its options."""
    p = sub.add_parser(
        "edit", formatter_class=_Help, help="rewrite a fact with ROME and compare predictions before and after"
    )
    _model_args(p)
    p.add_argument("--prompt", required=True, help='the fact\'s prompt, "{}" where the subject goes')
    p.add_argument("--subject", required=True, help="the subject, as it appears where {} is")
    p.add_argument("--target", required=True, help="the new object ('Rome' is scored as ' Rome')")
    p.add_argument("--check", action="append", default=[], help="another prompt to compare (repeatable)")
    p.add_argument("--layer", type=int, help="edit this layer instead of the preset's")
    p.add_argument("--stats-tokens", type=count(), help="tokens of key statistics (>= 1; default: the preset's)")
    p.add_argument("--rrome", action="store_true", help="r-ROME: the averaged key in the closed form too")
    p.add_argument(
        "--no-stats", action="store_true",
        help="no key statistics (C = I, so no WikiText needed; the paper's ROME uses them)",
    )  # fmt: skip
    hparam_arg(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the generated context templates")
    p.add_argument("--json", help="write the request, predictions before/after, losses and seconds")
    p.add_argument("--save", help="save the edited model here (orbax checkpoint)")
    p.add_argument("--export-hf", help="export the edited model as a Hugging Face folder here")
    p.add_argument("--overwrite", action="store_true", help="replace existing --save/--export-hf folders")
    p.set_defaults(run=cmd_edit)


def _add_eval(sub: Any) -> None:
    """The `eval` subcommand and its options."""
    p = sub.add_parser(
        "eval", formatter_class=_Help, help="evaluate an editing method on CounterFact or zsRE (resumable)"
    )
    _model_args(p)
    p.add_argument("--method", required=True, help="none, rome, r-rome, ft, ft-l, memit or alphaedit")
    p.add_argument("--dataset", required=True, help="counterfact, zsre, or a JSON file in either format")
    p.add_argument("--n", type=count(), help="evaluate the first N cases (>= 1; default: all)")
    p.add_argument("--out", required=True, help="folder for per-case results (resumable) and the summary")
    p.add_argument("--layer", type=int, help="edit this layer instead of the preset's")
    p.add_argument("--stats-tokens", type=count(), help="tokens of key statistics (>= 1; default: the preset's)")
    hparam_arg(p)
    p.add_argument(
        "--max-out-len", type=count(0), default=100,
        help="tokens of each generation for fluency and consistency, prompt included (>= 0; the original's 100; 0: skip)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the generated context templates and generations")
    p.add_argument(
        "--pre-from",
        help="read pre-edit scores from an earlier run's --out on the same model, dataset and settings (e.g. none)",
    )
    p.add_argument(
        "--batch", type=count(), default=8,
        help="cases edited together, each from the unedited model (ROME, r-ROME, MEMIT: one v* search program; >= 1)",
    )  # fmt: skip
    p.add_argument(
        "--num-edits", type=count(), default=1,
        help="N > 1: MEMIT's batch protocol, chunks of N cases each edited at once and scored on that model "
        "(rome, r-rome, memit, alphaedit; >= 1)",
    )  # fmt: skip
    p.add_argument(
        "--sequential", action="store_true",
        help="apply the chunks of --num-edits one after another to the same model; score every case after the last",
    )  # fmt: skip
    p.add_argument(
        "--curve-every", type=count(), default=1,
        help="with --sequential: score the cases so far every K chunks (>= 1); perplexity and kernel norms follow every chunk",
    )  # fmt: skip
    p.add_argument(
        "--targets-from",
        help="with --num-edits > 1: read MEMIT/AlphaEdit residual targets from an earlier such run's --out (same settings)",
    )
    p.add_argument(
        "--ppl-tokens", type=count(0), default=4096,
        help="held-out WikiText-2 test tokens for perplexity with --num-edits > 1 or --sequential (>= 0; 0: none)",
    )  # fmt: skip
    p.set_defaults(run=cmd_eval)


def _add_data(sub: Any) -> None:
    """The `data` subcommand and its options."""
    p = sub.add_parser(
        "data", formatter_class=_Help,
        help="fetch the paper's datasets, published key statistics and corpora into the cache ($JROME_CACHE_DIR)",
    )  # fmt: skip
    p.add_argument("action", choices=["fetch"], help="what to do")
    p.add_argument(
        "names", nargs="+", metavar="NAME",
        help="known_1000, counterfact, zsre, attribute_snippets, idf, tfidf_vocab, all (those six), a corpus for key "
        "statistics (wikitext-2, wikitext, wikipedia: the files that hold 100,000 rows), or "
        "stats/<model>/wikipedia_stats/<module>_float32_mom2_100000.npz",
    )  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_data)


def _add_generate(sub: Any) -> None:
    """The `generate` subcommand and its options."""
    p = sub.add_parser("generate", formatter_class=_Help, help="continue prompts, greedily or by sampling")
    _model_args(p)
    p.add_argument("--prompt", action="append", required=True, help="a prompt (repeatable)")
    p.add_argument("--max-new-tokens", type=count(), default=30, help="tokens to add (>= 1)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 decodes greedily")
    p.add_argument("--top-k", type=count(), help="sample from the k most likely (>= 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling")
    p.set_defaults(run=cmd_generate)


def build_parser() -> argparse.ArgumentParser:
    """The `jrome` parser: one subparser per command, each built by its _add_ function."""
    parser = argparse.ArgumentParser(prog="jrome", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        _add_demo,
        _add_predict,
        _add_trace,
        _add_trace_dataset,
        _add_edit,
        _add_eval,
        _add_data,
        _add_generate,
    ):
        add(sub)
    return parser


def keep_compiled_programs() -> None:
    """Keep compiled XLA programs on disk (JAX's persistent cache: $JAX_COMPILATION_CACHE_DIR, else
    ~/.cache/jrome/xla), so a second command on the same model does not compile its larger programs again."""
    import jax

    from .data import cache_dir

    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "xla"))


def output_paths(args: argparse.Namespace) -> list[tuple[str, str, bool, bool]]:
    """Every place the command will write: (flag, path, is a folder, may already exist)."""
    files = [("--json", getattr(args, "json", None))]
    if getattr(args, "plot", None):
        kinds = ["hidden", "mlp", "attn"] if args.kind == "all" else [args.kind]
        files += [("--plot", path) for k in kinds for path in plot_paths(args.plot, k, len(kinds) > 1)]
    overwrite = getattr(args, "overwrite", False)
    folders = [("--out", getattr(args, "out", None), True), ("--save", getattr(args, "save", None), overwrite),
               ("--export-hf", getattr(args, "export_hf", None), overwrite)]  # fmt: skip
    return [(f, p, False, True) for f, p in files if p] + [(f, p, True, ok) for f, p, ok in folders if p]


def interrupted(args: argparse.Namespace, argv: Sequence[str]) -> str:
    """The one line Ctrl-C prints: what was interrupted, what was kept, the command that resumes."""
    import shlex

    again = "jrome " + shlex.join(argv)
    if args.command == "data":
        return f"jrome data: interrupted; what arrived is kept in the cache and the download continues with: {again}"
    if args.command in ("eval", "trace-dataset"):
        log = "cases.jsonl" if args.command == "eval" else "facts.jsonl"
        return f"jrome {args.command}: interrupted; finished work is kept in {args.out}/{log}; resume with: {again}"
    return (
        f"jrome {args.command}: interrupted; every file written is complete and nothing is half-written; "
        f"run again with: {again}"
    )


def check_options(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """An option the command does not have is argparse's one-line error naming it (and the nearest it has), before
    argparse would report a required option as missing instead (`--promt` is not a missing `--prompt`)."""
    import difflib

    commands = parser._subparsers._group_actions[0].choices if parser._subparsers else {}
    sub = commands.get(argv[0]) if argv else None
    if sub is None:
        return
    known = [flag for action in sub._actions for flag in action.option_strings]
    for word in argv[1:]:
        if word == "--":
            return
        flag = word.split("=", 1)[0]
        if flag.startswith("--") and not any(k.startswith(flag) for k in known):  # argparse takes unique prefixes
            near = difflib.get_close_matches(flag, known, n=1)
            sub.error(f"unrecognized argument {flag}" + (f"; did you mean {near[0]}?" if near else ""))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    check_options(parser, argv)
    args = parser.parse_args(argv)
    with warnings.catch_warnings():  # a warning is one line, like the errors; restored on return
        warnings.showwarning = lambda message, *_, **__: print(
            f"jrome {args.command}: warning: {message}", file=sys.stderr
        )
        return _run(args, argv)


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    from .files import check_output

    try:
        for flag, path, folder, replace in output_paths(args):
            check_output(path, flag, folder=folder, replace=replace)
        keep_compiled_programs()
        return args.run(args)
    except (ValueError, FileNotFoundError, FileExistsError, OSError) as err:
        print(f"jrome {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted(args, argv), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
