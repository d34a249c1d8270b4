"""The docs run: every `jrome` command in the command blocks of README.md and docs/cli.md runs as written (with
the smallest settings appended, in a fresh folder) and does what the docs say, and docs/cli.md's bad-input
table is exactly what those commands print."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import separate_compiled_programs

from jrome.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "docs/cli.md")
# Appended to a documented command so that it runs in seconds; argparse keeps the last value of an option.
SMALL = {
    "demo": ["--samples", "1", "--stats-tokens", "20000", "--tokens", "8", "--hparam", "context_template_length_params=[[5,3]]"],
    "trace": ["--samples", "1"],
    "trace-dataset": ["--samples", "1", "--n", "2"],
    "edit": ["--stats-tokens", "20000", "--hparam", "context_template_length_params=[[5,3]]"],
    "eval": ["--stats-tokens", "20000", "--n", "1", "--hparam", "context_template_length_params=[[5,3]]"],
}  # fmt: skip


def documented_commands() -> list[tuple[str, dict[str, str], list[str]]]:
    """(where, environment settings, argv after `jrome`) for each `jrome` command in the docs' bash blocks."""
    found = []
    for doc in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", (ROOT / doc).read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                while words:
                    part, words = (words[: words.index("&&")], words[words.index("&&") + 1 :]) if "&&" in words else (words, [])  # fmt: skip
                    env = {}
                    while part and re.fullmatch(r"[A-Z_]+=.*", part[0]):
                        key, value = part.pop(0).split("=", 1)
                        env[key] = value
                    if part and part[0] == "jrome":
                        found.append((doc, env, part[1:]))
    return found


COMMANDS = documented_commands()


def test_the_docs_show_every_command():
    shown = {argv[0] for _, _, argv in COMMANDS}
    assert shown >= {"demo", "predict", "trace", "trace-dataset", "edit", "eval"}, shown


def run(argv, capsys) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.slow
@pytest.mark.parametrize(("doc", "env", "argv"), COMMANDS, ids=[f"{d}:{' '.join(a)[:50]}" for d, _, a in COMMANDS])
def test_documented_command_runs_as_written(doc, env, argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = argv + SMALL.get(argv[0], [])
    if env:  # settings JAX reads when it starts: a process of its own
        run_env = os.environ | env | {"JAX_PLATFORMS": "cpu"}
        if "XLA_FLAGS" in env:
            run_env = separate_compiled_programs(run_env)
        done = subprocess.run(
            [sys.executable, "-m", "jrome.cli", *argv], capture_output=True, text=True, env=run_env, timeout=900
        )
        code, out, err = done.returncode, done.stdout, done.stderr
    else:
        code, out, err = run(argv, capsys)
    assert code == 0, err[-3000:]
    CHECKS[argv[0]](argv, out, err, tmp_path)


def option(argv: list[str], name: str) -> str:
    return argv[len(argv) - 1 - argv[::-1].index(name) + 1]


def check_demo(argv, out, err, folder):
    import matplotlib.image

    summary = json.loads((folder / "jrome-demo" / "summary.json").read_text())
    assert [p.rsplit("/", 1)[-1] for p in summary["pictures"]] == [
        "trace_hidden.png",
        "trace_mlp.png",
        "trace_attn.png",
    ]
    for path in summary["pictures"]:
        assert path in out  # it says where the pictures are
        image = matplotlib.image.imread(folder / path)
        height, width = image.shape[:2]
        assert 600 < width < 1600 and 300 < height < width  # 30 layers across, a dozen tokens down, at 150 dpi
        assert image[..., :3].std() > 0.05  # a heatmap, not a blank canvas
    assert summary["trace"]["answer"] == " Paris" and summary["trace"]["high_score"] > summary["trace"]["low_score"]
    edit = summary["edit"]
    assert edit["succeeded"] and edit["checks"]["prompt"]["after"]["top"] == " Rome"
    assert edit["checks"]["prompt"]["after"]["p_target"] > 0.5 > edit["checks"]["prompt"]["before"]["p_target"]
    assert edit["checks"]["neighbour"]["after"]["top"] == " Paris"  # the Louvre stays in Paris


def check_predict(argv, out, err, folder):
    assert out.splitlines()[1].endswith("' Paris'")  # the first prediction
    if "--mesh" in argv:
        assert f"data={option(argv, '--mesh')[5]} x model=" in err


def check_trace(argv, out, err, folder):
    import matplotlib.image

    kinds = ["hidden", "mlp", "attn"] if option(argv, "--kind") == "all" else [option(argv, "--kind")]
    result = json.loads((folder / option(argv, "--json")).read_text())
    assert sorted(result) == sorted(kinds)
    fields = {"scores", "low_score", "high_score", "answer", "tokens", "subject_range", "kind", "window", "noise_scale"}
    for kind, r in result.items():
        assert fields <= set(r) and r["kind"] == kind and len(r["scores"]) == len(r["tokens"]) == 10
        assert r["answer"] == " Paris" and r["high_score"] > r["low_score"]
        stem = option(argv, "--plot").removesuffix(".png") + (f"_{kind}" if len(kinds) > 1 else "")
        image = matplotlib.image.imread(folder / f"{stem}.png")
        assert image.shape[0] > 200 and image.shape[1] > 400
        assert (folder / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"


def check_trace_dataset(argv, out, err, folder):
    summary = json.loads((folder / option(argv, "--out") / "summary.json").read_text())
    assert summary["n_facts"] == 2 and f"{summary['n_correct']} of 2 facts answered correctly" in out


def check_edit(argv, out, err, folder):
    result = json.loads((folder / option(argv, "--json")).read_text())
    edit_row, louvre = result["checks"]
    assert result["old_answer"] == " Paris" and result["layer"] == 4 and result["seconds"] > 0
    assert edit_row["before"]["top"] == " Paris" and edit_row["after"]["top"] == " Rome"
    assert edit_row["after"]["p_target"] > 0.5 > edit_row["before"]["p_target"]
    assert louvre["after"]["top"] == " Paris"
    assert (folder / option(argv, "--save") / "jrome.json").is_file() and "p(' Rome')" in out  # a relative --save


def check_eval(argv, out, err, folder):
    summary = json.loads((folder / option(argv, "--out") / "summary.json").read_text())
    assert summary["n"] == 1 and summary["metrics"]["ES"]["post"]["mean"] == 1.0
    assert f"### {option(argv, '--method')} on {option(argv, '--dataset')}" in out


CHECKS = {
    "demo": check_demo, "predict": check_predict, "trace": check_trace, "trace-dataset": check_trace_dataset,
    "edit": check_edit, "eval": check_eval,
}  # fmt: skip


def bad_input_rows() -> list[tuple[str, str]]:
    """(command, the line it prints) from docs/cli.md's bad-input table."""
    text = (ROOT / "docs/cli.md").read_text().split("## Bad input", 1)[1]
    return re.findall(r"^\| `([^`]*jrome [^`]*)` \| `(.*)` \|$", text, re.M)


ROWS = bad_input_rows()


def test_the_bad_input_table_is_there():
    assert len(ROWS) >= 15


@pytest.mark.parametrize(("command", "line"), ROWS, ids=[c[:60] for c, _ in ROWS])
def test_bad_input_prints_the_documented_line(command, line, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "eiffel-in-rome").mkdir()
    (tmp_path / "empty").mkdir()
    (tmp_path / "results.txt").write_text("mine")
    (tmp_path / "broken.json").write_text('[{"case_id": 0, "src" "x"}]')
    (tmp_path / "rome-run").mkdir()
    context = {"method": "rome", "model": "smollm2", "hparams": {}}
    (tmp_path / "rome-run" / "context.json").write_text(json.dumps(context))
    words = shlex.split(command)
    while words[0] != "jrome":
        key, value = words.pop(0).split("=", 1)
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) if "argument --" in line else contextlib.nullcontext() as stop:
        code = main(words[1:])
    code = stop.value.code if stop is not None else code
    err = capsys.readouterr().err.strip().splitlines()
    pattern = ".*".join(re.escape(piece) for piece in line.split("..."))
    assert code == 2 and re.fullmatch(pattern, err[-1]), err[-1]
    assert (tmp_path / "results.txt").read_text() == "mine" and not list((tmp_path / "eiffel-in-rome").iterdir())


def python_blocks(doc: str) -> list[str]:
    """The ```python blocks of a doc, in order."""
    return re.findall(r"```python\n(.*?)```", (ROOT / doc).read_text(), re.S)


@pytest.fixture
def fresh_machine(tmp_path, monkeypatch):
    """A machine with nothing but the install: an empty data folder and cache, online, where the original's site and
    the hub are a loopback mirror serving the paper's known_1000 and a small WikiText-2 (tests/hub.py)."""
    from conftest import data_file
    from hub import Mirror, parquet, wikitext_rows

    mirror = Mirror(tmp_path / "served").start()
    mirror.serve("dsets/known_1000.json", data_file("known_1000.json").read_bytes())
    for split, local in (("test", "test.txt"), ("validation", "valid.txt")):
        rows = wikitext_rows(data_file(f"wikitext-2/{local}"), 100)  # ~7,000 tokens: a quick C
        mirror.publish("Salesforce/wikitext", f"wikitext-2-v1/{split}-00000-of-00001.parquet", parquet(rows))
    for name in ("JROME_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {"JROME_DATA_URL": mirror.url, "HF_ENDPOINT": mirror.url,
                        "JROME_DATA_DIR": str(tmp_path / "data"), "JROME_CACHE_DIR": str(tmp_path / "cache")}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    yield mirror
    mirror.stop()


@pytest.mark.slow
def test_the_readme_python_block_runs_as_written_on_a_fresh_machine(fresh_machine, capsys):
    (block,) = python_blocks("README.md")
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    fetched = {path.rsplit("/", 1)[-1] for path, _ in fresh_machine.requests}
    assert {"known_1000.json", "test-00000-of-00001.parquet"} <= fetched  # fetched on first use, nothing by hand
    err = capsys.readouterr().err
    assert "key statistics, layer 4" in err and "C = I" not in err  # the paper's method: C from the corpus
    lm, edited = namespace["lm"], namespace["edited"]
    assert namespace["result"].scores.shape == (10, 30) and namespace["result"].answer == " Paris"
    top = [lm.tokenizer.decode(int(i)) for i in namespace["both"].logits[:, -1].argmax(-1)]
    assert top == [" Rome", " Paris"]  # the edited and the unedited model as two rows of one forward
    undo = namespace["undo"]
    assert undo.edits[0].layer == 4 and jrome_equal(undo(edited).params, lm.params)


def jrome_equal(a, b) -> bool:
    import jax
    import numpy as np

    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


PYTHON_DOCS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md") if python_blocks(str(p.relative_to(ROOT))))  # fmt: skip
SMALL_DATA = {"known_1000.json": 6, "counterfact/counterfact-edit.json": 2}  # records the docs' examples read


@pytest.fixture
def small_data(tmp_path, monkeypatch):
    """A data folder with the shared files cut short (six known facts, two CounterFact cases, 200 lines of each
    WikiText-2 file), so each documented example runs as written in seconds: the smallest settings it allows."""
    from conftest import data_file

    folder = tmp_path / "data"
    for name, n in SMALL_DATA.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(json.loads(data_file(name).read_text())[:n]))
    (folder / "wikitext-2").mkdir()
    for name in ("test.txt", "valid.txt"):
        lines = data_file(f"wikitext-2/{name}").read_text(encoding="utf-8").splitlines(keepends=True)[:200]
        (folder / "wikitext-2" / name).write_text("".join(lines), encoding="utf-8")
    monkeypatch.setenv("JROME_DATA_DIR", str(folder))
    monkeypatch.setenv("JROME_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return folder


def test_every_doc_with_python_examples_is_run():
    assert PYTHON_DOCS == ["docs/architecture.md", "docs/editing.md", "docs/evaluation.md", "docs/scaling.md", "docs/tracing.md"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.docs_examples
@pytest.mark.parametrize("doc", PYTHON_DOCS)
def test_documented_python_runs_as_written(doc, small_data, tmp_path):
    """Each doc's Python blocks, in order, in one namespace; docs/scaling.md's mesh in a process of six CPU devices."""
    import matplotlib

    matplotlib.use("Agg")
    source = "\n".join(python_blocks(doc))
    if "make_mesh" in source:
        env = separate_compiled_programs(os.environ | {"XLA_FLAGS": "--xla_force_host_platform_device_count=6", "JAX_PLATFORMS": "cpu"})  # fmt: skip
        done = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, env=env, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        return
    exec(compile(source, doc, "exec"), {"__name__": "__main__"})
    for written in {"docs/tracing.md": ["eiffel_hidden.png", "trace_known/summary.json"],
                    "docs/editing.md": ["eiffel-in-rome/jrome.json", "eiffel-in-rome-hf/config.json"],
                    "docs/evaluation.md": ["eval_rome_cf/summary.md", "eval_ftl_cf/summary.md"]}.get(doc, []):  # fmt: skip
        assert (tmp_path / written).is_file(), written


def test_the_readme_speed_figures_are_quoted_from_benchmarks():
    """One source for each number: every figure in the README's Speed section (seconds, ratios, tokens/s) is in
    BENCHMARKS.md, so a re-measured benchmark that changes a figure fails here until the README quotes it again."""
    readme = (ROOT / "README.md").read_text().split("## Speed", 1)[1].split("\n## ", 1)[0]
    benchmarks = (ROOT / "BENCHMARKS.md").read_text()
    figures = re.findall(r"(\d+(?:\.\d+)?)(?:–(\d+(?:\.\d+)?))?(?= s\b|×| tokens/s| at batch| templates)", readme)
    numbers = {n for pair in figures for n in pair if n}
    assert len(numbers) >= 12, numbers  # the trace, edit, statistics and decoding figures
    missing = sorted(n for n in numbers if not re.search(rf"(?<![\d.]){re.escape(n)}(?![\d])", benchmarks))
    assert not missing, f"README quotes {missing}, which BENCHMARKS.md does not have"
