"""The `jrome` command line: one subcommand per job, each a thin layer over the library."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

DEMO_PROMPTS = (
    "The Eiffel Tower is located in the city of",
    "The Space Needle is located in the city of",
    "The mother tongue of Danielle Darrieux is",
    "Steve Jobs was the founder of",
    "The capital of Japan is",
)


def _top_predictions(lm, prompts: Sequence[str], k: int) -> list[dict]:
    """The k most likely next tokens of each prompt, with probabilities, from one batched forward."""
    import jax
    import numpy as np

    from .models.forward import forward
    from .tokens import encode

    ids, mask = encode(lm.tokenizer, prompts)
    probs = np.asarray(jax.nn.softmax(forward(lm, ids, mask, logits_at="last").logits[:, -1], axis=-1))
    rows = []
    for prompt, p in zip(prompts, probs, strict=True):
        top = np.argsort(-p)[:k]
        rows.append(
            {"prompt": prompt, "top": [{"token": lm.tokenizer.decode([int(i)]), "p": float(p[i])} for i in top]}
        )
    return rows


def _print_predictions(rows: list[dict]) -> None:
    for row in rows:
        print(row["prompt"])
        for item in row["top"]:
            print(f"  {item['p']:7.4f}  {item['token']!r}")


def cmd_predict(args: argparse.Namespace) -> int:
    from .models.loading import load

    lm = load(args.model, args.dtype)
    rows = _top_predictions(lm, args.prompt, args.top)
    if args.json:
        _write_json(args.json, rows)
    _print_predictions(rows)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from .generation import generate
    from .models.loading import load

    lm = load(args.model, args.dtype)
    outs = generate(
        lm, args.prompt, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, seed=args.seed
    )
    for prompt, out in zip(args.prompt, outs, strict=True):
        print(f"{prompt}{out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .models.loading import load, param_count

    start = time.perf_counter()
    lm = load(args.model)
    cfg = lm.config
    print(
        f"loaded {lm.name}: {cfg.family}, {cfg.n_layers} layers, d_model {cfg.d_model}, "
        f"{param_count(lm) / 1e6:.0f}M parameters in {time.perf_counter() - start:.1f}s"
    )
    start = time.perf_counter()
    rows = _top_predictions(lm, DEMO_PROMPTS, 5)
    print(f"top next-token predictions ({time.perf_counter() - start:.1f}s, compile included):")
    _print_predictions(rows)
    return 0


def _write_json(path: str, payload: object) -> None:
    from .io import atomic_write_text

    atomic_write_text(path, json.dumps(payload, indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jrome", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", default="smollm2", help="smollm2, a model directory, a hub id, or a .gguf file")
        p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])

    p = sub.add_parser("demo", help="the main job on the embedded model")
    p.add_argument("--model", default="smollm2")
    p.set_defaults(run=cmd_demo)

    p = sub.add_parser("predict", help="top next-token predictions for prompts")
    model_args(p)
    p.add_argument("--prompt", action="append", required=True)
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--json", help="also write the predictions to this JSON file")
    p.set_defaults(run=cmd_predict)

    p = sub.add_parser("generate", help="continue prompts, greedily or by sampling")
    model_args(p)
    p.add_argument("--prompt", action="append", required=True)
    p.add_argument("--max-new-tokens", type=int, default=30)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=cmd_generate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, OSError) as err:
        print(f"jrome {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
