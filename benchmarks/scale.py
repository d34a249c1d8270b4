"""Real model sizes on this machine: random weights in the shapes of GPT-2 XL and GPT-J 6B, written as sharded
safetensors, loaded with `jrome.load`, then one causal trace (2 samples) and one ROME edit (C given) timed.

    python benchmarks/scale.py --model gpt2-xl --dtype float32 [--kinds hidden] [--folder /tmp/jrome-scale]

The configs are transformers' own (built locally, nothing downloaded) and the weights are N(0, 0.02) draws
written shard by shard, so the host never holds the model twice; the tokenizer is SmolLM2's (its ids fit both
vocabularies). Each run is a fresh process; it prints (and with --json writes) the parameters' bytes, the
peak resident memory after loading, tracing and editing, and the seconds of each step (first call, which
compiles, and a second call).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import machine  # noqa: E402

PROMPT, SUBJECT = "The Eiffel Tower is located in the city of", "The Eiffel Tower"
SHAPES = {  # transformers config class and arguments, ROME layer (the paper's presets)
    "gpt2-xl": ("GPT2Config", dict(n_layer=48, n_embd=1600, n_head=25, vocab_size=50257, n_positions=1024), 17),
    "gpt-j-6b": ("GPTJConfig", dict(n_layer=28, n_embd=4096, n_head=16, rotary_dim=64, vocab_size=50400, n_positions=2048), 5),
}  # fmt: skip
SHARD_BYTES = 2 << 30


def peak_gib() -> float:
    """Peak resident memory of this process so far, GiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)


def write_checkpoint(name: str, dtype: str, folder: Path) -> int:
    """Random weights of `name`'s shapes in `folder` (config, sharded safetensors, tokenizer); their bytes."""
    import torch
    import transformers
    from safetensors.torch import save_file

    config_cls, kwargs, _ = SHAPES[name]
    config = getattr(transformers, config_cls)(**kwargs, dtype=dtype)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in transformers.AutoModelForCausalLM.from_config(config).state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    torch_dtype, gen = getattr(torch, dtype), torch.Generator().manual_seed(0)
    shard, weight_map, size, total = {}, {}, 0, 0
    names = [k for k in shapes if not k.endswith((".attn.bias", ".attn.masked_bias"))]  # GPT-2's causal buffers

    def flush() -> None:
        nonlocal shard, size
        if shard:
            file = f"model-{len(set(weight_map.values())) + 1:05d}.safetensors"
            save_file(shard, folder / file, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, file))
            shard, size = {}, 0

    for key in names:
        t = (0.02 * torch.randn(shapes[key], generator=gen)).to(torch_dtype)
        if key.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            t = torch.ones_like(t)
        shard[key], size, total = t, size + t.numel() * t.element_size(), total + t.numel() * t.element_size()
        if size >= SHARD_BYTES:
            flush()
    flush()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    import jrome

    jrome.load("smollm2").tokenizer.save_pretrained(folder)
    return total


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def measure(args: argparse.Namespace, folder: Path) -> dict:
    import jax

    import jrome
    from jrome.editing import RomeHparams

    out = {"model": args.model, "dtype": args.dtype, "machine": machine(), "peak_gib": {}, "seconds": {}}
    seconds, lm = timed(lambda: jrome.load(str(folder), dtype=args.dtype))
    out["param_gib"] = sum(x.nbytes for x in jax.tree.leaves(lm.params)) / (1 << 30)
    out["seconds"]["load"], out["peak_gib"]["load"] = seconds, peak_gib()
    print(json.dumps(out), flush=True)  # after each step: a run that dies later (memory) keeps what it measured
    for kind in args.kinds:
        for call in ("first", "second"):
            seconds, _ = timed(
                lambda k=kind: jrome.trace(lm, PROMPT, SUBJECT, kind=k, samples=2, noise=0.1, progress=False)
            )
            out["seconds"][f"trace {kind} ({call})"] = seconds
        out["peak_gib"][f"trace {kind}"] = peak_gib()
        print(json.dumps(out), flush=True)
    layer = SHAPES[args.model][2]
    hp = RomeHparams(layer=layer, v_num_grad_steps=args.steps, v_loss_layer=lm.config.n_layers - 1,
                     context_templates=("{}", "The weather is nice today. {}"))  # fmt: skip
    rng = np.random.default_rng(0)
    a = rng.standard_normal((lm.config.d_mlp, 64)).astype(np.float32)
    c = np.eye(lm.config.d_mlp, dtype=np.float32) + a @ a.T / 64  # a positive definite C
    request = {"prompt": "{} is located in the city of", "subject": SUBJECT, "target_new": "Rome"}
    for call in ("first", "second"):
        seconds, _ = timed(lambda: jrome.rome.edit(lm, request, hp, stats=c, progress=False))
        out["seconds"][f"ROME edit ({call})"] = seconds
    out["peak_gib"]["edit"] = peak_gib()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=sorted(SHAPES), default="gpt2-xl")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--kinds", nargs="+", default=["hidden"])
    parser.add_argument("--steps", type=int, default=20, help="Adam steps of the v* search")
    parser.add_argument("--folder", default="/tmp/jrome-scale", help="where the checkpoint is written (reused)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = Path(args.folder) / f"{args.model}-{args.dtype}"
    if not args.measure:
        if not (folder / "model.safetensors.index.json").exists():
            seconds, total = timed(lambda: write_checkpoint(args.model, args.dtype, folder))
            print(f"wrote {total / (1 << 30):.2f} GiB of random {args.dtype} weights to {folder} in {seconds:.0f} s")
        sys.exit(subprocess.run([sys.executable, __file__, *sys.argv[1:], "--measure"]).returncode)  # a fresh process
    out = measure(args, folder)
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
