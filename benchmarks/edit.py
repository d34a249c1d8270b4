"""ROME on SmolLM2: seconds per edit and key statistics per 10k tokens, against straightforward versions.

    python benchmarks/edit.py [--torch] [--repeats 3]

One edit (The Eiffel Tower → Rome) at the preset's layer, with 6 explicit context templates and 20 Adam
steps. Prints compile and steady seconds of `jrome.rome.edit`, the same edit with the v* search done as full
forwards (`fast=False`), and the statistics pass. --torch adds the hook-based PyTorch implementation of the
same algorithm on transformers' own model (full forward per Adam step, a hook adding δ to the MLP output,
a hook reading the keys) with the same statistics, templates and hyperparameters.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import machine  # noqa: E402

import jrome  # noqa: E402
from jrome.corpus import open_corpus  # noqa: E402
from jrome.editing import edit, key_statistics, load_preset  # noqa: E402
from jrome.editing.requests import Request  # noqa: E402
from jrome.tokens import fact_index  # noqa: E402

TEMPLATES = (
    "{}",
    "The weather is nice today. {}",
    "I read about it in a book. {}",
    "Because of what happened next, {}",
    "You will not believe this, but {}",
    "Therefore, as everyone knows, {}",
)
REQUEST = Request("{} is located in the city of", "The Eiffel Tower", "Rome")


class Stop(Exception):
    """Raised by a hook to end a forward pass early (the statistics need nothing above the layer)."""


def torch_statistics(model, tok, layer: int, windows: np.ndarray) -> float:
    """Seconds to accumulate Σ k kᵀ at `layer` over the windows, stopping each forward at that layer."""
    import torch

    total = torch.zeros(model.config.intermediate_size, model.config.intermediate_size, dtype=torch.float64)

    def grab(_module, inputs):
        k = inputs[0].reshape(-1, inputs[0].shape[-1])
        total.add_((k.T @ k).double())
        raise Stop

    handle = model.model.layers[layer].mlp.down_proj.register_forward_pre_hook(grab)
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(windows), 16):
            with contextlib.suppress(Stop):
                model(torch.tensor(windows[i : i + 16]))
    handle.remove()
    return time.perf_counter() - start


def torch_rome(model, tok, req: Request, hp, cov: np.ndarray) -> tuple[float, np.ndarray]:
    """ROME the hook-based way, with the original's loss: (seconds, v*). Right padding, full forwards, Adam on δ,
    then the rank-one update."""
    import torch

    start = time.perf_counter()
    mlp = model.model.layers[hp.layer].mlp
    text = req.prompt.replace("{}", req.subject)
    target = tok(" " + req.target_new)["input_ids"]
    texts = [t.replace("{}", text) for t in TEMPLATES] + [f"{req.subject} is a"]
    rows = [tok(t)["input_ids"] + (target[:-1] if i < len(TEMPLATES) else []) for i, t in enumerate(texts)]
    placeholders = [t.replace("{}", req.prompt) for t in TEMPLATES] + ["{} is a"]
    lookup = [fact_index(tok, t, req.subject, "subject_last") for t in placeholders]  # the subject's placeholder
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])

    keys = {}

    def read_keys(_module, inputs):
        keys["k"] = inputs[0].detach()

    handle = mlp.down_proj.register_forward_pre_hook(read_keys)
    with torch.no_grad():
        model(ids[: len(TEMPLATES)], attention_mask=mask[: len(TEMPLATES)])
    handle.remove()
    k_all = torch.stack([keys["k"][i, lookup[i]] for i in range(len(TEMPLATES))]).double()
    u = torch.linalg.solve(torch.tensor(cov), k_all.mean(0))
    u = u / u.norm()

    delta = torch.zeros(model.config.hidden_size, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=hp.v_lr)
    state = {}

    def add_delta(_module, _inputs, out):
        if "v_init" not in state:
            state["v_init"] = out[0, lookup[0]].detach().clone()
        for i, col in enumerate(lookup):
            out[i, col] += delta
        return out

    handle = mlp.register_forward_hook(add_delta)
    n_rw, n_t = len(TEMPLATES), len(target)
    for step in range(hp.v_num_grad_steps):
        opt.zero_grad()
        log_probs = model(ids, attention_mask=mask).logits.log_softmax(-1)
        nll = (
            -torch.stack([log_probs[i, len(rows[i]) - n_t + j, target[j]] for i in range(n_rw) for j in range(n_t)])
            .reshape(n_rw, n_t)
            .mean()
        )
        kl_lp = torch.stack([log_probs[i, lookup[i]] for i in range(n_rw, len(rows))])
        if step == 0:
            state["kl_init"] = kl_lp.detach().clone()
        kl = (kl_lp.exp() * (kl_lp - state["kl_init"])).sum(-1).mean()
        # the original's weight decay (compute_v.py): |δ| / |v_init|², whose gradient PyTorch takes as 0 at δ = 0
        loss = nll + hp.kl_factor * kl + hp.v_weight_decay * delta.norm() / state["v_init"].norm() ** 2
        if loss.item() < 5e-2 or step == hp.v_num_grad_steps - 1:
            break
        loss.backward()
        opt.step()
        with torch.no_grad():
            max_norm = hp.clamp_norm_factor * state["v_init"].norm()
            if delta.norm() > max_norm:
                delta.mul_(max_norm / delta.norm())
    handle.remove()
    v_star = (state["v_init"] + delta).detach().double()
    k = k_all[0]
    with torch.no_grad():
        w = mlp.down_proj.weight
        lam = (v_star - (w.double() @ k)) / (u @ k)
        w += torch.outer(lam, u).float()
    return time.perf_counter() - start, v_star.numpy()


def p_target(lm_or_model, tok, text: str, target: int) -> float:
    ids, mask = jrome.encode(tok, [text])
    if isinstance(lm_or_model, jrome.LM):
        logits = np.asarray(jrome.forward(lm_or_model, ids, mask, logits_at="last").logits[0, -1])
    else:
        import torch

        with torch.no_grad():
            logits = lm_or_model(torch.tensor(ids)).logits[0, -1].numpy()
    return float(np.exp(logits[target] - logits.max()) / np.exp(logits - logits.max()).sum())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--torch", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stats-tokens", type=int, default=40_000)
    args = parser.parse_args()
    print(machine())
    lm = jrome.load("smollm2")
    hp = load_preset("smollm2").override(context_templates=TEMPLATES, v_num_grad_steps=20)
    layer = hp.layer
    start = time.perf_counter()
    stats = key_statistics(lm, layer, n_tokens=args.stats_tokens, cache=False, progress=False)[layer]
    stats_first = time.perf_counter() - start
    start = time.perf_counter()
    key_statistics(lm, layer, n_tokens=args.stats_tokens, cache=False, progress=False)
    stats_steady = time.perf_counter() - start
    per10k = stats_steady / stats.count * 1e4
    print(f"\nkey statistics, layer {layer}, {stats.count} wikitext-2 tokens: first run {stats_first:.1f} s, "
          f"steady {stats_steady:.1f} s = {per10k:.2f} s per 10k tokens")  # fmt: skip

    target = lm.tokenizer(" " + REQUEST.target_new)["input_ids"][0]
    text = REQUEST.prompt.replace("{}", REQUEST.subject)
    rows = {}
    for name, fast in (("jrome (fast v*)", True), ("jrome (full-forward v*)", False)):
        start = time.perf_counter()
        new, undo = edit(lm, REQUEST, hp, stats=stats, fast=fast)
        first = time.perf_counter() - start
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            new, undo = jax.block_until_ready(edit(lm, REQUEST, hp, stats=stats, fast=fast))
            times.append(time.perf_counter() - start)
        rows[name] = (first, statistics.median(times), p_target(new, lm.tokenizer, text, target), undo.edits[0].v_star)
    print(f"\nROME edit, layer {layer}, {len(TEMPLATES)} templates, {hp.v_num_grad_steps} Adam steps")
    fast_steady = rows["jrome (fast v*)"][1]
    for name, (first, steady, p, _) in rows.items():
        print(f"{name:26s} compile+first {first:6.2f} s   steady {steady:6.2f} s/edit   "
              f"ratio {steady / fast_steady:5.2f}   p(Rome) after {p:.4f}")  # fmt: skip
    v_fast, v_full = rows["jrome (fast v*)"][3], rows["jrome (full-forward v*)"][3]
    print(f"max |v*_fast - v*_full| / |v*| = {np.abs(v_fast - v_full).max() / np.abs(v_full).max():.1e}")

    if args.torch:
        import torch
        from transformers import AutoModelForCausalLM

        path = jrome.models.embedded_path()
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
        model.requires_grad_(False)
        windows = jrome.editing.windows.corpus_windows(
            lm.tokenizer, open_corpus("wikitext-2").pieces(), args.stats_tokens, 128
        )
        t_stats = torch_statistics(model, lm.tokenizer, layer, windows)
        print(f"\ntorch hooks: key statistics {t_stats:.1f} s = {t_stats / windows.size * 1e4:.2f} s per 10k tokens "
              f"(jrome {per10k:.2f}: {t_stats / windows.size * 1e4 / per10k:.2f}x)")  # fmt: skip
        times = []
        for _ in range(args.repeats):
            fresh = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
            fresh.requires_grad_(False)
            seconds, v_torch = torch_rome(fresh, lm.tokenizer, REQUEST, hp, stats.covariance)
            times.append(seconds)
        steady = statistics.median(times)
        print(f"torch hooks: ROME edit {steady:.2f} s/edit (jrome fast {fast_steady:.2f}: {steady / fast_steady:.2f}x), "
              f"p(Rome) after {p_target(fresh, lm.tokenizer, text, target):.4f}, "
              f"max |v*_torch - v*_jrome| / |v*| = {np.abs(v_torch - v_fast).max() / np.abs(v_fast).max():.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
