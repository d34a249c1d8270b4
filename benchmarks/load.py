"""Loading a sharded safetensors checkpoint: time and peak host memory of `jrome.load` (tensors read one at a time,
stacked parameters filled layer by layer on their device) against the straightforward way (every shard read into
host memory, then the stacked tree put on the device, as jrome loaded before) and against transformers'
`from_pretrained`, each in a fresh process, on a synthetic Llama checkpoint of >= 1 GB this script writes.

On a CPU the device is host memory too, so the model's own bytes are part of every peak; the number to read is
the peak above the process's RSS before loading minus the model's bytes (what loading needed on the side).

    python benchmarks/load.py [--dir /tmp/jrome-load-bench] [--layers 12] [--no-torch]
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

CONFIG = dict(
    architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=2048, intermediate_size=5632,
    num_attention_heads=16, num_key_value_heads=16, vocab_size=32000, max_position_embeddings=2048,
    rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, torch_dtype="bfloat16",
    bos_token_id=1, eos_token_id=2,
)  # fmt: skip
SHARD_BYTES = 400 << 20


def write_checkpoint(folder: Path, layers: int) -> int:
    """A random Llama checkpoint in bfloat16, split into ~400 MB shards with an index; returns its bytes."""
    import ml_dtypes
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    d, f, v = CONFIG["hidden_size"], CONFIG["intermediate_size"], CONFIG["vocab_size"]
    shapes = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,), "lm_head.weight": (v, d)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {p + f"self_attn.{n}_proj.weight": (d, d) for n in "qkvo"}
        shapes |= {
            p + "mlp.gate_proj.weight": (f, d),
            p + "mlp.up_proj.weight": (f, d),
            p + "mlp.down_proj.weight": (d, f),
        }
        shapes |= {p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,)}
    rng = np.random.default_rng(0)
    shards, current, size, total = [], {}, 0, 0
    for name, shape in shapes.items():
        current[name] = (0.02 * rng.standard_normal(shape, np.float32)).astype(ml_dtypes.bfloat16)
        size += current[name].nbytes
        if size >= SHARD_BYTES:
            shards.append(current)
            current, size = {}, 0
    shards.append(current)
    weight_map = {}
    for k, tensors in enumerate(shards):
        file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, str(folder / file), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(tensors, file)
        total += sum(t.nbytes for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "config.json").write_text(json.dumps(CONFIG | {"num_hidden_layers": layers}))
    return total


def rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def child(way: str, folder: str) -> None:
    """Load once in this process and print {"seconds", "before", "peak", "model"} as JSON."""
    import jax

    if way == "transformers":
        import torch
        import transformers

        before = current_rss()
        start = time.perf_counter()
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.bfloat16)
        with torch.no_grad():  # its tensors may still be lazy views of the files: read every one, as jrome does
            sum(float(p.sum()) for p in model.parameters())
        seconds = time.perf_counter() - start
        nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    else:
        import jax.numpy as jnp

        import jrome
        from jrome.models.config import config_from_hf
        from jrome.models.placement import Placer
        from jrome.models.weights import params_from_checkpoint

        jnp.zeros(1).block_until_ready()  # the backend is up before the baseline
        before = current_rss()
        start = time.perf_counter()
        if way == "jrome":
            params = jrome.load(folder, dtype="bfloat16").params
        else:  # straightforward: all shards into host memory, stacked on the host, then put on the device
            from safetensors.numpy import load_file

            tensors = {}
            for file in sorted(Path(folder).glob("*.safetensors")):
                tensors |= load_file(str(file))
            cfg = config_from_hf(json.loads((Path(folder) / "config.json").read_text()))

            class Host(Placer):
                def array(self, path, x):
                    return np.asarray(x).astype(jnp.bfloat16)

                def stack(self, paths, read, n):
                    layers = [read(i) for i in range(n)]
                    return [np.stack([layer[j] for layer in layers]).astype(jnp.bfloat16) for j in range(len(paths))]

            host = params_from_checkpoint(cfg, set(tensors), tensors.__getitem__, Host(cfg, jnp.bfloat16))
            params = jax.device_put(host)
            del host, tensors
        jax.block_until_ready(params)
        seconds = time.perf_counter() - start
        nbytes = sum(x.nbytes for x in jax.tree.leaves(params))
    print(json.dumps({"seconds": seconds, "before": before, "peak": rss_bytes(), "model": nbytes}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="/tmp/jrome-load-bench")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--no-torch", action="store_true", help="skip transformers (no torch installed)")
    parser.add_argument("--child", nargs=2, metavar=("WAY", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    sys.path.insert(0, str(Path(__file__).parent))
    from common import machine

    folder = Path(args.dir)
    if not (folder / "model.safetensors.index.json").is_file():
        print(f"writing a {args.layers}-layer Llama checkpoint to {folder} ...", flush=True)
        write_checkpoint(folder, args.layers)
    on_disk = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    shards = len(list(folder.glob("*.safetensors")))
    print(f"{machine()}\ncheckpoint: {on_disk / 2**30:.2f} GiB in {shards} shards (bfloat16), loaded as bfloat16")
    ways = ["jrome", "straightforward"] + ([] if args.no_torch else ["transformers"])
    results = {}
    for way in ways:
        out = subprocess.run(
            [sys.executable, __file__, "--child", way, str(folder)], capture_output=True, text=True, check=True
        )
        results[way] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{'way':16s} {'seconds':>8s} {'peak RSS GiB':>13s} {'added GiB':>10s} {'on the side GiB':>16s}")
    for way, r in results.items():
        added = r["peak"] - r["before"]
        print(
            f"{way:16s} {r['seconds']:8.1f} {r['peak'] / 2**30:13.2f} {added / 2**30:10.2f} {(added - r['model']) / 2**30:16.2f}"
        )
    base = results["jrome"]
    for way, r in results.items():
        if way != "jrome":
            time_ratio = r["seconds"] / base["seconds"]
            memory_ratio = (r["peak"] - r["before"]) / (base["peak"] - base["before"])
            print(f"{way} / jrome: {time_ratio:.2f}x the seconds, {memory_ratio:.2f}x the memory added by loading")


if __name__ == "__main__":
    main()
