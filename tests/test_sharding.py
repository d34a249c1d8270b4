"""Sharded forward, trace and edit on 8 simulated CPU devices equal one device's; bad meshes are clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import separate_compiled_programs

from jrome.models.config import config_from_hf
from jrome.models.placement import check_divides, param_shardings
from jrome.sharding import make_mesh, parse_mesh

WORKER = Path(__file__).with_name("sharded_worker.py")


@pytest.mark.parametrize(("name", "data", "model"), [("llama", 4, 2), ("gpt_neox", 2, 4)])
def test_sharded_results_equal_one_device(tiny_dir, tmp_path, name, data, model):
    env = separate_compiled_programs({k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")})
    run = subprocess.run(
        [sys.executable, str(WORKER), str(tiny_dir(name)), str(data), str(model), str(tmp_path / "corpus.txt")],
        capture_output=True, text=True, env=env, cwd=WORKER.parent, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["devices"] == 8 and out["mesh"] == {"data": data, "model": model}
    assert out["kernel_shards"] == data * model  # the weights really are spread over the mesh
    # load(mesh=) places each tensor as shard() lays it out, from a checkpoint folder and from jrome.save's
    assert out["load_mesh_bitwise"] and out["load_mesh_layout"]
    for key in ("forward_logits", "forward_captured", "trace_low_high", "trace_hidden", "trace_mlp", "trace_attn",
                "trace_severed", "stats_mom2", "memit_kernel"):  # fmt: skip
        assert out[key] <= 1e-5, (key, out[key])
    assert out["rome_kernel"] <= 1e-5 * out["rome_kernel_scale"]
    assert out["rome_still_sharded"] and out["rome_undo"] == 0.0


def test_parse_mesh():
    assert parse_mesh("data=2,model=4") == {"data": 2, "model": 4}
    assert parse_mesh("model=8") == {"data": 1, "model": 8}
    for bad in ("tensor=2", "model=0", "model=two", "data"):
        with pytest.raises(ValueError, match="accepted: axis=size with axes data and model"):
            parse_mesh(bad)


def test_a_mesh_that_does_not_divide_the_model_names_the_dimension(tiny_dir):
    cfg = config_from_hf(json.loads((tiny_dir("llama") / "config.json").read_text()))  # 6 heads, 2 kv heads
    check_divides(cfg, 2)
    with pytest.raises(ValueError, match="model axis of 4 does not divide n_heads=6"):
        check_divides(cfg, 4)
    with pytest.raises(ValueError, match="model axis of 3 does not divide n_kv_heads=2"):
        check_divides(cfg, 3)
    with pytest.raises(ValueError, match="needs 16 devices, but 1 are available"):
        make_mesh(4, 4)


def test_a_leaf_the_layout_does_not_have_is_an_error_not_left_unsplit(tiny_lm):
    lm = tiny_lm("llama")
    params = {**lm.params, "blocks": {**lm.params["blocks"], "adapter": {"kernel": lm.params["blocks"]["mlp"]["up"]["kernel"]}}}  # fmt: skip
    with pytest.raises(ValueError, match="blocks.adapter.kernel is not a parameter of jrome's layout"):
        param_shardings(lm.config, params, make_mesh(1, 1))


@pytest.mark.slow
def test_cli_mesh_that_does_not_divide_the_real_model():
    """(tests/test_docs.py runs the README's mesh command, which does divide it.)"""
    env = separate_compiled_programs(
        os.environ | {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    )
    base = [sys.executable, "-m", "jrome.cli", "predict", "--prompt", "The Eiffel Tower is located in the city of"]
    bad = subprocess.run([*base, "--mesh", "model=2"], capture_output=True, text=True, env=env, timeout=900)
    assert bad.returncode == 2 and "model axis of 2 does not divide n_heads=9" in bad.stderr
