"""Decoding on SmolLM2: steady tokens/s of jrome's one-program decoder (prefill, KV cache, every new token in one
jitted scan) for batch 1 and 8 × 50 new tokens, greedy and top-5 sampled, against the same loop with
`lax.top_k` (what it used before: XLA's CPU backend sorts the vocabulary at every step) and against
transformers' `generate` on the same GGUF, in one run. Compile time is reported apart.

    python benchmarks/generate.py [--torch]
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import compile_seconds, machine, steady_seconds  # noqa: E402

import jrome  # noqa: E402
import jrome.generation as generation  # noqa: E402
from jrome.tokens import encode  # noqa: E402

PROMPTS = [
    "The Eiffel Tower is located in the city of",
    "My favourite food is",
    "Steve Jobs was the founder of",
    "The capital of Japan is",
    "Because it was raining,",
    "The mother tongue of Danielle Darrieux is",
    "I went to the shop and",
    "Therefore, the best way to",
]
NEW = 50


def sort_choose(logits, key, temperature, top_k):
    """The straightforward top-k: lax.top_k's k-th value as the cut."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_k is not None:
        logits = jnp.where(logits < jax.lax.top_k(logits, top_k)[0][..., -1:], -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def decoder(choose):
    """generate_ids compiled afresh with this token chooser (a new function object, so no compiled program is
    shared between the variants)."""
    f = generation.generate_ids.__wrapped__
    fn = types.FunctionType(f.__code__, dict(f.__globals__, _choose=choose), f.__name__, f.__defaults__, f.__closure__)
    return jax.jit(fn, static_argnums=(0, 4, 5, 6, 7))


def jrome_rate(lm, batch: int, temperature: float, top_k: int | None, choose=generation._choose):
    """(compile s, steady tokens/s) of generate_ids with this chooser."""
    ids, mask = encode(lm.tokenizer, PROMPTS[:batch], multiple_of=8)
    eos = None  # every row makes all 50 tokens, as transformers does below with min_new_tokens
    args = (lm.config, lm.params, ids, mask, NEW, temperature, top_k, eos, jax.random.key(0))
    fn = decoder(choose)
    compile_s, _ = compile_seconds(fn, *args)
    return compile_s, batch * NEW / steady_seconds(fn, *args, repeats=3)


def torch_rate(batch: int, temperature: float, top_k: int | None) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from jrome.models.loading import embedded_path

    path = embedded_path()
    if not hasattr(torch_rate, "model"):
        torch_rate.model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        torch_rate.tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, padding_side="left")
    model, tok = torch_rate.model.eval(), torch_rate.tok
    enc = tok(PROMPTS[:batch], return_tensors="pt", padding=True)
    kwargs = dict(max_new_tokens=NEW, min_new_tokens=NEW, pad_token_id=tok.eos_token_id)
    kwargs |= dict(do_sample=True, temperature=temperature, top_k=top_k) if temperature else dict(do_sample=False)
    with torch.no_grad():
        model.generate(**enc, **kwargs)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            model.generate(**enc, **kwargs)
            times.append(time.perf_counter() - start)
    return batch * NEW / float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--torch", action="store_true", help="also time transformers' generate (test extra)")
    args = parser.parse_args()
    lm = jrome.load("smollm2")
    print(f"# generate, SmolLM2-135M float32, {NEW} new tokens | {machine()}")
    print("| batch | decoding | jrome compile s | jrome tok/s | lax.top_k loop tok/s | transformers tok/s | jrome / top_k loop | jrome / transformers |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for batch in (1, 8):
        for name, temperature, top_k in (("greedy", 0.0, None), ("top-5 sampled", 1.0, 5)):
            compile_s, rate = jrome_rate(lm, batch, temperature, top_k)
            _, plain = jrome_rate(lm, batch, temperature, top_k, sort_choose)
            ref = torch_rate(batch, temperature, top_k) if args.torch else float("nan")
            print(f"| {batch} | {name} | {compile_s:.1f} | {rate:.0f} | {plain:.0f} | {ref:.0f} | {rate / plain:.2f} | {rate / ref:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
