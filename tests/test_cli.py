"""The command line, as a user would run it. The commands run in this process (`jrome.cli.main`), so they share
its compiled programs; tests/test_sharding.py runs `python -m jrome.cli` as a separate process."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest

from jrome.cli import main


@dataclasses.dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def jrome(capsys):
    """Run `jrome ARGS...` and return its exit status and what it printed."""

    def run(*args: str) -> Run:
        code = main(list(args))
        out = capsys.readouterr()
        return Run(code, out.out, out.err)

    return run


@pytest.mark.slow
def test_predict_prints_and_writes_json(jrome, tmp_path):
    out = jrome("predict", "--prompt", "The capital of France is", "--top", "3", "--json", str(tmp_path / "p.json"))
    assert out.returncode == 0, out.stderr
    assert "' Paris'" in out.stdout
    rows = json.loads((tmp_path / "p.json").read_text())
    assert rows[0]["top"][0]["token"] == " Paris" and len(rows[0]["top"]) == 3


@pytest.mark.slow
def test_trace_dataset_with_n_larger_than_the_facts(jrome, tmp_path):
    facts = [{"prompt": "The capital of Roman Republic is", "subject": "Roman Republic", "attribute": "Rome"}]
    (tmp_path / "facts.json").write_text(json.dumps(facts))
    out = jrome(
        "trace-dataset", "--facts", str(tmp_path / "facts.json"), "--n", "5", "--kinds", "hidden",
        "--samples", "2", "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "--n 5 is more than the 1 facts there are" in out.stdout
    assert "1 of 1 facts answered correctly" in out.stdout


def test_compiled_programs_are_kept_in_the_cache_folder(monkeypatch, tmp_path):
    import jax

    from jrome.cli import keep_compiled_programs

    before = jax.config.jax_compilation_cache_dir
    monkeypatch.setenv("JROME_CACHE_DIR", str(tmp_path))
    try:
        jax.config.update("jax_compilation_cache_dir", None)
        keep_compiled_programs()
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla")
        jax.config.update("jax_compilation_cache_dir", "/somewhere/else")
        keep_compiled_programs()  # a folder the user chose is kept
        assert jax.config.jax_compilation_cache_dir == "/somewhere/else"
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("trace-dataset", "--n", "-1", "--out", "x"), "argument --n: -1 is out of range (accepted: >= 1)"),
        (
            ("eval", "--method", "rome", "--dataset", "zsre", "--n", "0", "--out", "x"),
            "argument --n: 0 is out of range",
        ),
        (("predict", "--prompt", "x", "--top", "-1"), "argument --top: -1 is out of range (accepted: >= 1)"),
        (
            ("trace", "--prompt", "a b", "--subject", "a", "--samples", "two"),
            "'two' is not a whole number (accepted: >= 1)",
        ),
        (("eval", "--method", "none", "--dataset", "zsre", "--out", "x", "--max-out-len", "-5"), "(accepted: >= 0)"),
    ],
)
def test_counts_out_of_range_stop_before_any_work(jrome, capsys, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        jrome(*args)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_every_count_says_its_range_in_help():
    from jrome.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        for action in sub._actions:
            if getattr(action.type, "__qualname__", "").startswith("count."):
                assert ">= " in (action.help or ""), f"jrome {name} {action.option_strings[0]} does not say its range"


def _outputs_checked_cases():
    """(argv after the model, message): each names a bad output; the model does not exist, so an error about the
    output shows the check came before any work (loading the model is the first)."""
    return [
        (("predict", "--prompt", "x", "--json", "{tmp}"), "--json {tmp} is a folder; a file path is expected"),
        (("edit", "--prompt", "{{}} is", "--subject", "a", "--target", "b", "--save", "{tmp}"),
         "--save {tmp} exists; add --overwrite to replace it"),
        (("edit", "--prompt", "{{}} is", "--subject", "a", "--target", "b", "--export-hf", "{tmp}"),
         "--export-hf {tmp} exists; add --overwrite"),
        (("edit", "--prompt", "{{}} is", "--subject", "a", "--target", "b", "--json", "/sys/jrome/e.json"),
         "--json /sys/jrome/e.json cannot be written: /sys does not take new files"),
        (("trace", "--prompt", "a b", "--subject", "a", "--plot", "{tmp}/file.txt/t.png"),
         "--plot {tmp}/file.txt/t_hidden.png cannot be written: {tmp}/file.txt is a file, not a folder"),
        (("eval", "--method", "rome", "--dataset", "zsre", "--out", "{tmp}/file.txt"),
         "--out {tmp}/file.txt is a file; a folder is expected there"),
        (("trace-dataset", "--out", "{tmp}/file.txt"), "--out {tmp}/file.txt is a file; a folder is expected there"),
    ]  # fmt: skip


@pytest.mark.parametrize(("args", "message"), _outputs_checked_cases())
def test_outputs_are_checked_before_any_work(jrome, tmp_path, args, message):
    (tmp_path / "file.txt").write_text("keep me")
    before = sorted(p.name for p in tmp_path.iterdir())
    out = jrome(*(a.format(tmp=tmp_path) for a in args), "--model", "/nonexistent/model")
    assert out.returncode == 2
    line = f"jrome {args[0]}: error: " + message.format(tmp=tmp_path)
    assert out.stderr.startswith(line) and out.stderr.count("\n") == 1, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before and (tmp_path / "file.txt").read_text() == "keep me"


def test_overwrite_lets_an_existing_folder_pass_the_output_check(jrome, tmp_path):
    out = jrome(
        "edit", "--prompt", "{} is", "--subject", "a", "--target", "b", "--save", str(tmp_path), "--overwrite",
        "--model", "/nonexistent/model",
    )  # fmt: skip
    assert out.returncode == 2 and "model '/nonexistent/model' not found" in out.stderr  # past the output check


def option_help(capsys, command: str) -> dict[str, str]:
    """`jrome COMMAND --help` as a user reads it: each option's flag → its help, whitespace collapsed."""
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    options = capsys.readouterr().out.split("options:")[1]
    entries = re.split(r"\n  (?=-)", "\n" + options)[1:]
    return {entry.split()[0].rstrip(","): " ".join(entry.split()) for entry in entries}


@pytest.mark.parametrize(
    ("command", "says", "quiet"),
    [
        (
            "trace",
            {"--samples": 10, "--noise": "s3", "--kind": "all", "--seed": 1},
            ["--mesh", "--replace", "--answer"],
        ),
        ("edit", {"--seed": 0, "--model": "smollm2"}, ["--hparam", "--check", "--no-stats", "--layer"]),
        ("generate", {"--temperature": 0.0, "--max-new-tokens": 30}, ["--prompt", "--top-k"]),
        ("trace-dataset", {"--kinds": ["hidden", "mlp", "attn"]}, ["--out"]),
    ],
)
def test_help_says_each_default_that_means_something_once(capsys, command, says, quiet):
    """A value the option takes when left out is shown, zero included; no value (None), an unset flag (False) or
    an empty list is not; an option whose help already tells its default is left as written."""
    helps = option_help(capsys, command)
    for flag, default in says.items():
        assert helps[flag].endswith(f"(default: {default})") and helps[flag].count("default") == 1, helps[flag]
    for flag in quiet:
        assert "default" not in helps[flag], helps[flag]
    if command == "trace":  # its help tells the default in words
        assert helps["--max-batch-bytes"].endswith("(default: half of what the parameters leave free)")
        assert helps["--max-batch-bytes"].count("default") == 1


def test_every_option_has_help_and_none_shows_an_empty_default(capsys):
    from jrome.cli import build_parser

    for name, sub in build_parser()._subparsers._group_actions[0].choices.items():
        for action in sub._actions:
            assert action.help, f"jrome {name} {action.option_strings or action.dest} has no help"
        for text in option_help(capsys, name).values():
            assert not re.search(r"\(default: (None|False|\[\]|==SUPPRESS==)\)", text), (name, text)


@pytest.mark.slow
def test_edit_without_wikitext_says_how_and_runs_with_no_stats(jrome, tmp_path, monkeypatch):
    monkeypatch.setenv("JROME_DATA_DIR", str(tmp_path))  # no wikitext-2 here
    request = ("edit", "--prompt", "{} is located in the city of", "--subject", "The Eiffel Tower", "--target", "Rome")
    out = jrome(*request)
    assert out.returncode == 2 and out.stderr.strip().endswith("or add --no-stats to edit with C = I"), out.stderr
    small = ("--hparam", "context_template_length_params=[[5,3]]", "--hparam", "v_num_grad_steps=15")
    out = jrome(*request, "--no-stats", "--json", str(tmp_path / "e.json"), *small)
    assert out.returncode == 0, out.stderr
    assert "key statistics: none (--no-stats or mom2_adjustment=false), so C = I" in out.stderr
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["hparams"]["mom2_adjustment"] is False and result["checks"][0]["after"]["top"] == " Rome"
    assert result["hparams"]["context_template_length_params"] == [[5, 3]]  # --hparam reaches the edit
    assert result["hparams"]["v_num_grad_steps"] == 15 and len(result["losses"]) <= 15


@pytest.mark.slow
def test_ctrl_c_keeps_finished_cases_and_says_how_to_resume(jrome, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    args = [
        "eval",
        "--method",
        "none",
        "--dataset",
        "counterfact",
        "--n",
        "100",
        "--out",
        str(out),
        "--max-out-len",
        "0",
    ]

    # `python -m jrome.cli` as started from a terminal: a test runner started in the background ignores SIGINT and
    # its children inherit that, so the child sets Python's own SIGINT handler first
    start = "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); sys.argv[0] = 'jrome'"
    command = [sys.executable, "-c", f"{start}; runpy.run_module('jrome.cli', run_name='__main__')", *args]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    log, deadline = out / "cases.jsonl", time.monotonic() + 300
    while not (log.is_file() and log.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be interrupted"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert (
        last
        == f"jrome eval: interrupted; finished work is kept in {out}/cases.jsonl; resume with: jrome {' '.join(args)}"
    )
    kept = [json.loads(line) for line in log.read_text().splitlines()]  # every line whole
    assert 2 <= len(kept) < 100
    resumed = jrome(*[str(len(kept)) if a == "100" else a for a in args])  # the same run, cut to what was kept
    assert resumed.returncode == 0 and json.loads((out / "summary.json").read_text())["n"] == len(kept)
    assert log.read_text().count("\n") == len(kept)  # nothing was redone


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--method", "magic", "--dataset", "zsre"), "unknown method 'magic'; known methods: none, rome"),
        (("--method", "rome", "--dataset", "nope"), "unknown dataset 'nope'; known datasets: counterfact, zsre"),
    ],
)
def test_eval_checks_method_and_dataset_before_loading_the_model(jrome, tmp_path, args, message):
    out = jrome("eval", *args, "--n", "1", "--out", str(tmp_path / "o"), "--model", "/nonexistent/model")
    assert out.returncode == 2 and message in out.stderr and not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A Llama-family checkpoint without a preset layer, with its tokenizer, as a user's exported folder is."""
    from conftest import build_torch_model, tiny_tokenizer

    path = tmp_path_factory.mktemp("my-llama")
    build_torch_model("llama").save_pretrained(path, safe_serialization=True)
    tiny_tokenizer().save_pretrained(path)
    return str(path)


def test_edit_on_a_model_without_a_preset_layer_takes_the_peak_of_a_trace(jrome, tiny_folder, tmp_path):
    import re

    import jrome as jr

    out = jrome(
        "edit", "--model", tiny_folder, "--prompt", "{} is located in the city of", "--subject", "the eiffel tower",
        "--target", "paris rome", "--check", "{} is in the", "--no-stats", "--json", str(tmp_path / "e.json"),
        "--hparam", "context_templates=[\"{}\"]", "--hparam", "v_num_grad_steps=2",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    said = re.search(r"no preset layer for \S+: layer (\d+), the MLP peak of a causal trace", out.stderr)
    result = json.loads((tmp_path / "e.json").read_text())
    lm = jr.load(tiny_folder)
    trace = jr.trace(lm, "the eiffel tower is located in the city of", "the eiffel tower", kind="mlp", progress=False)
    assert said and int(said.group(1)) == result["layer"] == int(np.argmax(trace.scores[trace.subject_range[1] - 1]))
    assert result["checks"][1]["prompt"] == "the eiffel tower is in the"  # --check's {} is the subject
    assert result["target_token"] == "paris" and result["target_tokens"] == 2
    assert "p('paris') is the first of the target's 2 tokens" in out.stdout and "p('paris')=" in out.stdout


def test_eval_on_a_model_without_a_preset_layer_names_the_flag_before_any_case(jrome, tiny_folder, tmp_path):
    out = jrome("eval", "--model", tiny_folder, "--method", "rome", "--dataset", "zsre", "--n", "1",
                "--out", str(tmp_path / "o"))  # fmt: skip
    assert out.returncode == 2 and not (tmp_path / "o").exists()
    assert out.stderr.strip().splitlines() == [
        f"jrome eval: error: no rome preset layer for {tiny_folder}: add --layer N (e.g. the MLP peak at the last "
        "subject token of `jrome trace --kind mlp`)"
    ]


def test_trace_plot_suffix_sets_the_format_and_a_repeated_subject_is_said(jrome, tiny_folder, tmp_path):
    (tmp_path / "t.png").write_bytes(b"mine")
    out = jrome("trace", "--model", tiny_folder, "--prompt", "the tower and the tower is in", "--subject", "the tower",
                "--kind", "hidden", "--samples", "2", "--noise", "0.5", "--plot", str(tmp_path / "t.jpg"))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "t.png").read_bytes() == b"mine"  # not written over
    assert (tmp_path / "t.jpg").read_bytes()[:2] == b"\xff\xd8" and (tmp_path / "t.pdf").read_bytes()[:4] == b"%PDF"
    assert "jrome trace: warning: subject 'the tower' occurs 2 times in 'the tower and the tower is in'" in out.stderr


def test_offline_the_demo_goes_on_saying_the_line_that_edit_stops_with(tiny_lm, tmp_path, monkeypatch):
    from jrome.cli import DEMO_SUBJECTS, _key_statistics, _noise_subjects
    from jrome.editing import RomeHparams

    monkeypatch.setenv("JROME_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("JROME_CACHE_DIR", str(tmp_path / "cache"))
    lm, hp, said = tiny_lm("llama"), RomeHparams(layer=1, mom2_n_tokens=200), []
    with pytest.raises(FileNotFoundError) as stop:  # edit
        _key_statistics(lm, hp, said.append, fallback=False)
    line = str(stop.value).removesuffix("; or add --no-stats to edit with C = I")
    assert line.endswith("get it with: jrome data fetch wikitext-2") and said == []
    demo_hp, stats = _key_statistics(lm, hp, said.append, fallback=True)  # demo
    assert stats is None and not demo_hp.mom2_adjustment and said == [f"key statistics: {line}; meanwhile C = I"]
    subjects, source = _noise_subjects(said.append)
    assert subjects == list(DEMO_SUBJECTS) and source == "18 built-in subjects"
    assert said[-1].startswith("noise scale: known_1000 is not in") and "jrome data fetch known_1000;" in said[-1]
