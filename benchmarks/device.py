"""The accelerator benchmark: GPT-2 XL-shaped random weights, jrome against the original code on the same device.

    python benchmarks/device.py [--shape gpt2-xl] [--dtypes float32 bfloat16] [--original benchmarks/original/rome]
                                [--out device.json] [--budget 450]

One run measures, for each dtype, on one model and the same prompt and noise: the Fig. 1 trace per kind
(first call, which compiles, and steady), one ROME edit (C given), K = 1 / 8 / 32 edits in one program, key
statistics (tokens/s), decoding (tokens/s), and a 100-fact dataset trace extrapolated to Fig. 2's 1,000 facts.
With --original (kmeng01/rome checked out in an ignored folder: `git archive` of it into benchmarks/original/rome)
it does the same work the original way in the same process: `calculate_hidden_flow` and `apply_rome_to_model`
with their hooks, the statistics with its `nethook.Trace` and `SecondMoment`, and transformers' `generate`
(torch is needed). Results are written to --out after every step (a run cut short keeps what it measured) and
printed with the ratios at the end. `--shape tiny` runs the same steps on a 2-layer model in seconds (CI runs it).

The model is transformers' own GPT-2 built from its config with random weights (nothing is downloaded); jrome
loads those very weights. The tokenizer is a word-level one over the words of the prompts, built here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import machine  # noqa: E402

import jrome  # noqa: E402
from jrome.compilation import CompileLog  # noqa: E402

SHAPES = {
    "gpt2-xl": dict(n_layer=48, n_embd=1600, n_head=25, vocab_size=50257, n_positions=1024),
    "tiny": dict(n_layer=2, n_embd=64, n_head=4, vocab_size=512, n_positions=256),
}
PROMPT, SUBJECT, SCALE = "The Eiffel Tower is located in the city of", "The Eiffel Tower", 0.1
SUBJECTS = ["The Eiffel Tower", "The Louvre", "The Space Needle", "Big Ben", "The Colosseum", "The Kremlin",
            "The Prado", "The Parthenon", "Times Square", "The Alhambra", "Notre Dame", "The Vatican"]  # fmt: skip
CITIES = ["Paris", "Rome", "London", "Seattle", "Moscow", "Madrid", "Athens", "Granada", "Berlin", "Vienna"]
RELATIONS = ["{} is located in the city of", "{} is in", "The city of {} is", "People visit {} in the city of",
             "{} stands in", "The famous {} is located in the old city of"]  # fmt: skip
TEMPLATES = ("{}", "The weather is nice today. {}", "I read about it in a book. {}")


def word_tokenizer() -> Any:
    """A GPT-2-like tokenizer (byte-level words with their leading space) over the words used here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    text = " ".join([PROMPT, *SUBJECTS, *CITIES, *RELATIONS, *TEMPLATES, "today. book. nice it a"])
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False)
    words = sorted({w for t in text.replace("{}", " ").split() for w, _ in pre.pre_tokenize_str(" " + t)}
                   | {w for t in text.replace("{}", " ").split() for w, _ in pre.pre_tokenize_str(t)})  # fmt: skip
    backend = Tokenizer(models.WordLevel({"<unk>": 0, **{w: i + 1 for i, w in enumerate(words)}}, unk_token="<unk>"))
    backend.pre_tokenizer, backend.decoder = pre, decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<unk>", pad_token="<unk>")


def build(shape: str, device: str):
    """transformers' GPT-2 of `shape` with random weights on `device`, its config, and its weights as NumPy."""
    import torch
    import transformers

    config = transformers.GPT2Config(**SHAPES[shape])
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.GPT2LMHeadModel(config).eval()
    model.config._attn_implementation = "eager"
    weights = {k: v.detach().float().cpu().numpy() for k, v in model.named_parameters()}
    return model, config, weights


class Recorder:
    """Results by dtype and step, rewritten to a JSON file after every step; steps stop once the budget is spent."""

    def __init__(self, out: Path, budget: float) -> None:
        self.out, self.deadline, self.results = out, time.perf_counter() + budget, {"machine": machine()}

    def step(self, dtype: str, name: str, fn: Callable[[], dict]) -> None:
        if time.perf_counter() > self.deadline:
            self.results.setdefault(dtype, {})[name] = {"skipped": "out of time"}
        else:
            try:
                with CompileLog() as log:
                    record = fn()
                self.results.setdefault(dtype, {})[name] = record | {"programs": len(log)}
            except Exception as err:  # a failed step is recorded, and the others still run
                self.results.setdefault(dtype, {})[name] = {"error": f"{type(err).__name__}: {err}"[:500]}
        self.out.write_text(json.dumps(self.results, indent=1, default=float))
        print(f"{dtype:8s} {name:24s} {json.dumps(self.results[dtype][name], default=float)[:300]}", flush=True)


def clock(fn: Callable[[], Any]) -> tuple[float, Any]:
    import jax

    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - start, out


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def original_clock(fn: Callable[[], Any]) -> tuple[float, Any]:
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - start, out


def load_original(path: Path, device: str) -> Any:
    """The original's modules, imported from its checkout; on a machine without CUDA from a copy whose device
    strings say "cpu" (the only change)."""
    import importlib
    import shutil
    import tempfile

    if device != "cuda":
        copy = Path(tempfile.mkdtemp()) / "rome"
        shutil.copytree(path, copy)
        for file in copy.rglob("*.py"):
            text = file.read_text()
            file.write_text(text.replace('"cuda"', '"cpu"').replace(".cuda()", ".cpu()").replace("'cuda'", "'cpu'"))
        path = copy
    sys.path.insert(0, str(path))
    names = ("experiments.causal_trace", "rome.rome_main", "rome.compute_u", "rome.rome_hparams", "util.nethook",
             "util.runningstats")  # fmt: skip
    here = os.getcwd()
    os.chdir(path)  # its util/globals.py reads globals.yml from the working folder when imported
    try:
        return {name.split(".")[-1]: importlib.import_module(name) for name in names}
    finally:
        os.chdir(here)


def trace_step(lm: Any, kind: str, orig: Any, mt: Any) -> dict:
    """Fig. 1 for one kind: jrome's first call (compiles) and a steady one; the original's calculate_hidden_flow."""
    run = lambda: jrome.trace(lm, PROMPT, SUBJECT, kind=kind, samples=10, noise=SCALE, progress=False).scores  # noqa: E731
    first, _ = clock(run)
    steady, scores = clock(run)
    out = {"jrome_first_s": first, "jrome_steady_s": steady}
    if orig is not None:
        flow = partial(orig["causal_trace"].calculate_hidden_flow, mt, PROMPT, SUBJECT, samples=10, noise=SCALE,
                       kind=None if kind == "hidden" else kind)  # fmt: skip
        seconds, result = original_clock(flow)
        out |= {"original_s": seconds, "speedup": seconds / steady,
                "max_abs_diff": float(np.abs(result["scores"].float().cpu().numpy() - scores).max())}  # fmt: skip
    return out


def rome_setup(lm: Any) -> tuple[Any, np.ndarray, dict]:
    """The edit's hyperparameters (the GPT-2 XL preset's, fixed templates), a positive definite C, the request."""
    from jrome.editing import RomeHparams

    n = lm.config.n_layers
    hp = RomeHparams(layer=17 if n == 48 else n // 2 - 1, v_loss_layer=n - 1, context_templates=TEMPLATES)
    a = np.random.default_rng(0).standard_normal((lm.config.d_mlp, 64)).astype(np.float32)
    c = np.eye(lm.config.d_mlp, dtype=np.float32) + a @ a.T / 64
    return hp, c, {"prompt": "{} is located in the city of", "subject": SUBJECT, "target_new": "Rome"}


def original_rome(orig: Any, model: Any, tok: Any, hp: Any, c: np.ndarray, request: dict) -> tuple[float, np.ndarray]:
    """apply_rome_to_model with C⁻¹ in its cache and the same templates: seconds and the change of the weight
    (the model is restored afterwards)."""
    import torch

    name = f"transformer.h.{hp.layer}.mlp.c_proj"
    device = next(model.parameters()).device
    orig["compute_u"].inv_mom2_cache[(model.config._name_or_path.replace("/", "_"), name)] = torch.inverse(torch.from_numpy(c).to(device))  # fmt: skip
    orig["rome_main"].CONTEXT_TEMPLATES_CACHE = list(TEMPLATES)
    params = orig["rome_hparams"].ROMEHyperParams(
        layers=[hp.layer], fact_token="subject_last", v_num_grad_steps=hp.v_num_grad_steps, v_lr=hp.v_lr,
        v_loss_layer=hp.v_loss_layer, v_weight_decay=hp.v_weight_decay, clamp_norm_factor=hp.clamp_norm_factor,
        kl_factor=hp.kl_factor, mom2_adjustment=True, context_template_length_params=[[5, 10], [10, 10]],
        rewrite_module_tmp="transformer.h.{}.mlp.c_proj", layer_module_tmp="transformer.h.{}",
        mlp_module_tmp="transformer.h.{}.mlp", attn_module_tmp="transformer.h.{}.attn", ln_f_module="transformer.ln_f",
        lm_head_module="transformer.wte", mom2_dataset="wikipedia", mom2_n_samples=100000, mom2_dtype="float32",
    )  # fmt: skip
    req = {**request, "target_new": {"str": request["target_new"]}}
    seconds, (_, saved) = original_clock(lambda: orig["rome_main"].apply_rome_to_model(model, tok, [req], params, return_orig_weights=True))  # fmt: skip
    weight = dict(model.named_parameters())[name + ".weight"]
    delta = (weight - saved[name + ".weight"]).float().detach().cpu().numpy()
    with torch.no_grad():
        weight.copy_(saved[name + ".weight"])
    return seconds, delta


def edit_step(lm: Any, orig: Any, model: Any) -> dict:
    """One ROME edit, C given: jrome first and steady, the original's apply_rome_to_model."""
    hp, c, request = rome_setup(lm)
    run = lambda: jrome.rome.edit(lm, request, hp, stats=c, progress=False)[1]  # noqa: E731
    first, _ = clock(run)
    steady, undo = clock(run)
    out = {"jrome_first_s": first, "jrome_steady_s": steady}
    if orig is not None:
        seconds, delta = original_rome(orig, model, lm.tokenizer, hp, c, request)
        e = undo.edits[0]
        ours = np.outer(e.u_hat, e.lam)
        out |= {"original_s": seconds, "speedup": seconds / steady,
                "delta_rel_diff": float(np.linalg.norm(ours - delta) / np.linalg.norm(delta))}  # fmt: skip
    return out


def many_edits_step(lm: Any, sizes: tuple[int, ...]) -> dict:
    """K independent ROME edits in one program for each K of `sizes` (1, 8, 32): edits per second, and the
    largest K's throughput against K = 1's."""
    hp, c, _ = rome_setup(lm)
    requests = [{"prompt": r, "subject": s, "target_new": CITIES[(i + j) % len(CITIES)]}
                for i, s in enumerate(SUBJECTS) for j, r in enumerate(RELATIONS)]  # fmt: skip
    out = {}
    for k in sizes:
        run = lambda k=k: jrome.rome.edit_each(lm, requests[:k], hp, stats=c, per_program=k, progress=False)  # noqa: E731
        first, _ = clock(run)
        steady, _ = clock(run)
        out[f"K={k}"] = {"first_s": first, "steady_s": steady, "edits_per_s": k / steady}
    out[f"throughput_{sizes[-1]}_vs_1"] = out[f"K={sizes[-1]}"]["edits_per_s"] / out["K=1"]["edits_per_s"]
    return out


def corpus(folder: Path, n_words: int) -> Path:
    """A text file of the tokenizer's words in random order (every word is one token)."""
    words = " ".join([PROMPT, *SUBJECTS, *CITIES]).split()
    path = folder / "corpus.txt"
    path.write_text(" ".join(np.random.default_rng(0).choice(words, n_words)))
    return path


def statistics_step(lm: Any, orig: Any, model: Any, folder: Path, n_tokens: int, batch: int) -> dict:
    """Key statistics at the edit layer over n_tokens: jrome's one pass against the original's hooks and
    SecondMoment over the very same windows; tokens per second."""
    import torch

    from jrome.editing.stats import key_statistics
    from jrome.editing.windows import corpus_windows

    hp, _, _ = rome_setup(lm)
    path, window = corpus(folder, 2 * n_tokens), 128
    run = partial(key_statistics, lm, hp.layer, path, n_tokens, window=window, batch_size=batch, cache=False,
                  progress=False)  # fmt: skip
    first, _ = clock(run)
    steady, stats = clock(run)
    out = {"jrome_first_s": first, "jrome_tokens_per_s": n_tokens / steady}
    if orig is not None:
        ids = torch.from_numpy(corpus_windows(lm.tokenizer, [path], n_tokens, window)).to(
            next(model.parameters()).device
        )
        moment = orig["runningstats"].SecondMoment()

        def original() -> None:
            with torch.no_grad():
                for rows in ids.split(batch):
                    name = f"transformer.h.{hp.layer}.mlp.c_proj"
                    with orig["nethook"].Trace(model, name, retain_input=True, retain_output=False, stop=True) as tr:
                        model(input_ids=rows)
                    moment.add(tr.input.reshape(-1, tr.input.shape[-1]).float())

        seconds, _ = original_clock(original)
        c_ours = stats[hp.layer].covariance
        out |= {"original_tokens_per_s": ids.numel() / seconds,
                "speedup": out["jrome_tokens_per_s"] / (ids.numel() / seconds),
                "c_rel_diff": float(np.linalg.norm(c_ours - moment.moment().cpu().numpy()) / np.linalg.norm(c_ours))}  # fmt: skip
    return out


def decoding_step(lm: Any, model: Any, new_tokens: int) -> dict:
    """Greedy decoding of new_tokens at batch 1 and 8: jrome's compiled loop against transformers' generate."""
    import torch

    out = {}
    for batch in (1, 8):
        prompts = [PROMPT] * batch
        run = lambda p=prompts: jrome.generation.generate(lm, p, new_tokens, stop_at_eos=False)  # noqa: E731
        first, _ = clock(run)
        steady, _ = clock(run)
        row = {"jrome_first_s": first, "jrome_tokens_per_s": batch * new_tokens / steady}
        if model is not None:
            ids = torch.tensor([lm.tokenizer(p)["input_ids"] for p in prompts], device=next(model.parameters()).device)
            gen = partial(model.generate, ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)  # fmt: skip
            original_clock(gen)
            seconds, _ = original_clock(gen)
            row |= {"transformers_tokens_per_s": batch * new_tokens / seconds, "speedup": seconds / steady}
        out[f"batch {batch}"] = row
    return out


def fig2_step(lm: Any, n_facts: int, folder: Path) -> dict:
    """trace_dataset over n_facts facts (every kind, 10 samples) the model answers (its own top token is the
    attribute), and Fig. 2's 1,000 facts extrapolated from it."""
    from jrome.prediction import next_tokens
    from jrome.tracing.dataset import trace_dataset

    pairs = [(r.format(s), s) for r in RELATIONS for s in SUBJECTS + CITIES][:n_facts]
    tops = next_tokens(lm, [p for p, _ in pairs]).top[:, 0]
    facts = [{"prompt": p, "subject": s, "attribute": lm.tokenizer.decode([int(t)])} for (p, s), t in zip(pairs, tops, strict=True)]  # fmt: skip
    seconds, summary = clock(lambda: trace_dataset(lm, facts, samples=10, noise=SCALE, out=folder / "fig2", progress=False))  # fmt: skip
    return {"facts": n_facts, "traced": summary.n_correct, "seconds": seconds,
            "fig2_1000_facts_minutes": seconds * 1000 / max(summary.n_correct, 1) / 60}  # fmt: skip


def summary(results: dict) -> None:
    """Every number measured, one line per step (nested measurements flattened)."""

    def flat(record: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in record.items():
            out |= flat(v, f"{prefix}{k} ") if isinstance(v, dict) else {f"{prefix}{k}": v}
        return out

    for dtype, steps in results.items():
        if dtype in ("machine", "settings"):
            continue
        for name, record in steps.items():
            shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in flat(record).items())
            print(f"{dtype:8s} {name:15s} {shown}")


def steps(
    lm: Any, torch_model: Any, orig: Any, folder: Path, args: argparse.Namespace
) -> list[list[tuple[str, Callable]]]:
    """The measurements of one dtype in three phases (the goals first, so a short budget keeps them)."""
    tiny = args.shape == "tiny"  # the smoke test's sizes: every step, a few seconds each
    mt = orig["causal_trace"].ModelAndTokenizer(model=torch_model, tokenizer=lm.tokenizer) if orig else None
    tokens, batch = (2048, 8) if tiny else (65536, 64)
    sizes = (1, 2) if tiny else (1, 8, 32)
    return [
        [(f"trace {k}", partial(trace_step, lm, k, orig, mt)) for k in ("hidden", "mlp", "attn")]
        + [("ROME edit", partial(edit_step, lm, orig, torch_model))],
        [("K edits", partial(many_edits_step, lm, sizes)),
         ("Fig. 2", partial(fig2_step, lm, 4 if tiny else args.facts, folder))],
        [("decoding", partial(decoding_step, lm, torch_model, 8 if tiny else 64)),
         ("key statistics", partial(statistics_step, lm, orig, torch_model, folder, tokens, batch))],
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="gpt2-xl")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--original", type=Path, help="a checkout of kmeng01/rome (benchmarks/original/rome)")
    parser.add_argument("--out", type=Path, default=Path("device.json"))
    parser.add_argument("--budget", type=float, default=450, help="seconds after which the remaining steps are skipped")
    parser.add_argument("--facts", type=int, default=100, help="facts of the dataset trace")
    args = parser.parse_args()
    import copy
    import tempfile

    import jax
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    jax.config.update("jax_default_matmul_precision", "highest")  # float32 as torch's (no TF32), for the diffs
    orig = load_original(args.original, device) if args.original else None
    rec = Recorder(args.out, args.budget)
    rec.results["settings"] = {"shape": args.shape, "device": device, "original": bool(orig), "jax": jax.__version__,
                               "torch": torch.__version__, "jax_devices": str(jax.devices())}  # fmt: skip
    model, config, weights = build(args.shape, device)
    tok, folder = word_tokenizer(), Path(tempfile.mkdtemp())
    plan = {}
    for dtype in args.dtypes:
        lm = jrome.load(weights, dtype, config=config, tokenizer=tok)
        torch_model = model if dtype == "float32" else copy.deepcopy(model).to(torch.bfloat16)
        plan[dtype] = steps(lm, torch_model, orig, folder, args)
    for phase in range(3):
        for dtype in args.dtypes:
            for name, fn in plan[dtype][phase]:
                rec.step(dtype, name, fn)
    summary(rec.results)


if __name__ == "__main__":
    main()
