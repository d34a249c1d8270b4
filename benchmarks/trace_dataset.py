"""Fig. 2's dataset trace on SmolLM2: facts batched per length bucket (this tree) against one fact at a time
(the code before batching, `--baseline`, run from `git archive` of that commit) in the same run.

    python benchmarks/trace_dataset.py [--n 100] [--samples 2] [--kinds hidden mlp attn] [--baseline e87f7ce]

Each side runs in a fresh process with no compilation cache on disk: the first `trace_dataset` over the first
N known facts is *cold* (every program compiled), the second, over the same facts into a new folder, *warm*.
Prints wall and CPU seconds, programs compiled (JAX's compile log), the ratios, and the largest difference
of the averaged effects between the two sides.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _compile_log():
    """jrome.compilation.CompileLog from this tree, whichever jrome the worker imports."""
    spec = importlib.util.spec_from_file_location("jrome_compilation", REPO / "jrome" / "compilation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CompileLog


def worker(args: argparse.Namespace) -> None:
    """One side: load, trace twice, print a JSON line."""
    import numpy as np

    import jrome
    from jrome.data import load_known
    from jrome.tracing.dataset import trace_dataset

    CompileLog = _compile_log()
    lm = jrome.load("smollm2")
    facts = load_known()[: args.n]
    subjects = [f["subject"] for f in load_known()]
    out: dict = {"jrome": str(Path(jrome.__file__).parent)}
    for run in ("cold", "warm"):
        with tempfile.TemporaryDirectory() as folder, CompileLog() as log:
            wall, cpu = time.perf_counter(), time.process_time()
            summary = trace_dataset(lm, facts, tuple(args.kinds), samples=args.samples, noise_subjects=subjects,
                                    out=folder, progress=False)  # fmt: skip
            out[run] = {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu, "programs": len(log),
                        "by_name": log.counts()}  # fmt: skip
    out["n_correct"] = summary.n_correct
    out["aie"] = {k: np.nan_to_num(v).tolist() for k, v in summary.aie.items()}
    print(json.dumps(out))


def run_side(args: argparse.Namespace, tree: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"} | {"PYTHONPATH": str(tree)}
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        "--n",
        str(args.n),
        "--samples",
        str(args.samples),
        "--kinds",
        *args.kinds,
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--kinds", nargs="+", default=["hidden", "mlp", "attn"])
    parser.add_argument("--baseline", default="e87f7ce", help="the commit of the one-fact-at-a-time path")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    sys.path.insert(0, str(REPO / "benchmarks"))
    from common import machine

    print(machine(), f"| load {os.getloadavg()[0]:.1f}")
    print(f"{args.n} known facts, kinds {' '.join(args.kinds)}, {args.samples} noise samples\n")
    with tempfile.TemporaryDirectory() as old:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", args.baseline, "jrome"], capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", old], input=archive.stdout, check=True)
        base = run_side(args, Path(old))
    new = run_side(args, REPO)
    print("side                        | cold wall   cpu  programs | warm wall   cpu  programs")
    for name, side in ((f"one fact at a time ({args.baseline})", base), ("batched per bucket (this tree)", new)):
        c, w = side["cold"], side["warm"]
        print(
            f"{name:27s} | {c['wall']:8.1f} {c['cpu']:6.1f} {c['programs']:6d}    | {w['wall']:8.1f} {w['cpu']:6.1f} {w['programs']:6d}"
        )
    for run in ("cold", "warm"):
        wall, cpu = (base[run][k] / new[run][k] for k in ("wall", "cpu"))
        print(f"{run}: {wall:.2f}x wall, {cpu:.2f}x CPU")
    import numpy as np

    diff = max(float(np.abs(np.subtract(base["aie"][k], new["aie"][k])).max()) for k in new["aie"])
    print(f"facts answered: {base['n_correct']} / {new['n_correct']}; largest AIE difference {diff:.1e}")
    print("programs compiled (this tree, cold):", new["cold"]["by_name"])


if __name__ == "__main__":
    main()
