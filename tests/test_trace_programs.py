"""Tracing's compiled programs: one per length bucket for every kind, many facts per call with the same numbers
as each alone, lanes run together as one at a time, and what `jrome trace-dataset` compiles in all."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import tiny_tokenizer

import jrome
from jrome.compilation import CompileLog
from jrome.tracing import corrupt_and_clean, restore, restore_many, run_facts, trace
from jrome.tracing.runs import corruption

PROMPTS = [  # 10, 9 and 7 words: the first two share the bucket of 10 columns
    ("a famous old museum the eiffel tower is in paris", "the eiffel tower"),
    ("the big river of the city of rome is old", "the big river"),
    ("the louvre is a museum in paris", "the louvre"),
]


def _fresh(lm: jrome.LM, marker: int) -> jrome.LM:
    """lm under a config no other test uses, so its programs cannot come from JAX's in-memory cache."""
    return lm.replace(config=dataclasses.replace(lm.config, max_positions=lm.config.max_positions - marker))


def test_every_kind_of_a_length_bucket_runs_one_compiled_program(tiny_lm):
    lm = _fresh(tiny_lm("llama"), 7)
    with CompileLog() as log:
        for prompt, subject in PROMPTS[:2]:
            trace(lm, prompt, subject, kind="all", samples=2, noise=1.0, progress=False)
            for module in ("mlp", "attn"):
                trace(lm, prompt, subject, sever=module, samples=2, noise=1.0, window=3, progress=False)
    assert log.counts().get("jit(restoration_probs)") == 1, log.counts()
    assert log.counts().get("jit(run_prompts)") == 1, log.counts()
    with CompileLog() as log:  # a longer prompt is another bucket: one more of each
        trace(lm, *PROMPTS[0], kind="all", samples=2, noise=1.0, progress=False, token_range=[1, 2, 3])
        trace(lm, PROMPTS[0][0] + " and rome", PROMPTS[0][1], samples=2, noise=1.0, progress=False)
    assert log.counts().get("jit(restoration_probs)") == 1 and log.counts().get("jit(run_prompts)") == 1, log.counts()


def test_facts_traced_together_equal_each_traced_alone(tiny_lm):
    lm = tiny_lm("gpt2")  # learned positions: right padding must not move them
    how = corruption(lm, 1.0, samples=3)
    together = run_facts(lm, [p for p, _ in PROMPTS], [s for _, s in PROMPTS], how)
    assert len({r.arrays.embed_add.shape for r in together}) == 1 and together[2].slot == 2
    for kind, sever in [("hidden", None), ("mlp", None), ("hidden", "attn")]:
        grids = restore_many(lm, together, kind, window=2, sever=sever)
        for (prompt, subject), grid, runs in zip(PROMPTS, grids, together, strict=True):
            alone = corrupt_and_clean(lm, prompt, subject, samples=3, noise=1.0)
            assert alone.arrays.embed_add.shape[2] <= runs.arrays.embed_add.shape[2]  # padded less, or as much
            assert runs.low_score == pytest.approx(alone.low_score, abs=1e-6)
            want = restore(lm, alone, kind, window=2, sever=sever).scores
            np.testing.assert_allclose(grid, want, atol=1e-5, err_msg=f"{prompt!r} {kind} sever={sever}")
            assert np.ptp(want[runs.subject_range[0] :]) > 1e-3  # restorations matter


def test_lanes_run_together_equal_lanes_run_one_at_a_time(tiny_lm):
    lm = tiny_lm("gpt_neox")  # 3 layers: 2 lanes
    runs = run_facts(lm, [p for p, _ in PROMPTS], [s for _, s in PROMPTS], corruption(lm, 1.0, samples=2))
    for kind, sever in [("attn", None), ("hidden", "mlp")]:
        one = restore_many(lm, runs, kind, window=2, sever=sever, chunk=1)
        for chunk in (2, 5):  # all lanes vmapped; more than there are
            together = restore_many(lm, runs, kind, window=2, sever=sever, chunk=chunk)
            for a, b in zip(one, together, strict=True):
                np.testing.assert_allclose(b, a, atol=1e-6, err_msg=f"{kind} sever={sever} chunk={chunk}")


def test_a_memory_budget_must_be_a_positive_number_of_bytes(tiny_lm):
    lm = tiny_lm("llama")
    for bad in (0, -5, 1.5, "8G", True):
        with pytest.raises(ValueError, match=r"max_batch_bytes=.*; accepted: a positive number of bytes"):
            trace(lm, *PROMPTS[0], samples=2, noise=1.0, max_batch_bytes=bad, progress=False)


def test_trace_dataset_on_the_command_line_compiles_few_programs(tiny_dir, tiny_lm, tmp_path):
    """Forty facts of many lengths (attributes are the tiny model's own answers, so every fact is traced):
    everything the command compiles, loading included, is a handful of programs per length bucket."""
    model = tmp_path / "model"
    shutil.copytree(tiny_dir("llama"), model)
    tiny_tokenizer().save_pretrained(model)
    lm = tiny_lm("llama")
    words = "the big old famous museum of the city of paris is in france and the river"
    prompts = [" ".join(words.split()[: 4 + i % 7]) for i in range(40)]
    tops = [int(np.argmax(jrome.forward(lm, lm.tokenizer(p)["input_ids"], logits_at="last").logits[0, -1])) for p in prompts]  # fmt: skip
    facts = [{"prompt": p, "subject": "the big old", "attribute": lm.tokenizer.decode([t])} for p, t in zip(prompts, tops, strict=True)]  # fmt: skip
    (tmp_path / "facts.json").write_text(json.dumps(facts))
    env = os.environ | {"JAX_LOG_COMPILES": "1"}  # JAX logs a program read from the compilation cache too
    cmd = [sys.executable, "-m", "jrome.cli", "trace-dataset", "--model", str(model), "--facts", str(tmp_path / "facts.json"),
           "--n", "40", "--samples", "2", "--noise", "1.0", "--out", str(tmp_path / "out")]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "40 of 40 facts answered correctly and traced" in done.stdout
    programs = [line for line in done.stderr.splitlines() if line.startswith("Compiling ")]
    restorations = sum("jit(restoration_probs)" in line for line in programs)
    assert restorations == 4, programs  # lengths 4..10 fall into 4 buckets of even length (4, 6, 8, 10)
    assert len(programs) <= 30, "\n".join(programs)
    names = {line.split()[1] for line in programs}  # no eager jnp work on per-fact shapes: only the named programs
    assert names <= {"jit(forward_tokens)", "jit(run_prompts)", "jit(restoration_probs)"}, names
