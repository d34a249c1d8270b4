"""The command line, as a user would run it. The commands run in this process (`jrome.cli.main`), so they share
its compiled programs; tests/test_sharding.py runs `python -m jrome.cli` as a separate process."""

from __future__ import annotations

import dataclasses
import json

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


def test_bad_model_is_a_clear_error(jrome):
    out = jrome("predict", "--model", "/nonexistent/model", "--prompt", "x")
    assert out.returncode == 2
    assert "model '/nonexistent/model' not found" in out.stderr


@pytest.mark.slow
def test_trace_writes_every_kind_to_json_and_heatmaps(jrome, tmp_path):
    import matplotlib.image

    out = jrome(
        "trace", "--prompt", "The Eiffel Tower is in", "--subject", "Eiffel Tower", "--kind", "all",
        "--samples", "2", "--json", str(tmp_path / "t.json"), "--plot", str(tmp_path / "t.png"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "t.json").read_text())
    assert sorted(result) == ["attn", "hidden", "mlp"]
    fields = {"scores", "low_score", "high_score", "answer", "tokens", "subject_range", "kind", "window", "noise_std"}
    for kind, r in result.items():
        assert fields <= set(r) and r["kind"] == kind and len(r["scores"]) == len(r["tokens"]) == 6
        image = matplotlib.image.imread(tmp_path / f"t_{kind}.png")
        assert image.shape[0] > 200 and image.shape[1] > 400
        assert (tmp_path / f"t_{kind}.pdf").read_bytes()[:5] == b"%PDF-"


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


@pytest.mark.slow
def test_trace_bad_subject_is_a_clear_error(jrome):
    out = jrome("trace", "--prompt", "The Eiffel Tower is in", "--subject", "Louvre", "--kind", "hidden")
    assert out.returncode == 2 and "subject 'Louvre' is not in the prompt" in out.stderr


@pytest.mark.slow
def test_edit_prints_and_writes_before_and_after(jrome, tmp_path):
    out = jrome(
        "edit", "--prompt", "{} is located in the city of", "--subject", "The Eiffel Tower", "--target", "Rome",
        "--check", "The Louvre is located in the city of", "--stats-tokens", "20000", "--json", str(tmp_path / "e.json"),
        "--save", str(tmp_path / "ck"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "e.json").read_text())
    edit_row, louvre = result["checks"]
    assert result["old_answer"] == " Paris" and result["layer"] == 4 and result["seconds"] > 0
    assert edit_row["before"]["top"] == " Paris" and edit_row["after"]["top"] == " Rome"
    assert edit_row["after"]["p_target"] > 0.5 > edit_row["before"]["p_target"]
    assert louvre["after"]["top"] == " Paris"
    assert (tmp_path / "ck" / "jrome.json").is_file() and "p(target)" in out.stdout


@pytest.mark.slow
def test_demo_traces_edits_and_summarises(jrome, tmp_path):
    import matplotlib.image

    out = jrome("demo", "--out", str(tmp_path), "--samples", "3", "--stats-tokens", "20000", "--tokens", "8")
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [p.rsplit("/", 1)[-1] for p in summary["pictures"]] == [
        "trace_hidden.png",
        "trace_mlp.png",
        "trace_attn.png",
    ]
    for path in summary["pictures"]:
        assert path in out.stdout  # it says where the pictures are
        image = matplotlib.image.imread(path)
        height, width = image.shape[:2]
        assert 600 < width < 1600 and 300 < height < width  # 30 layers across, a dozen tokens down, at 150 dpi
        assert image[..., :3].std() > 0.05  # a heatmap, not a blank canvas
    assert summary["trace"]["answer"] == " Paris" and summary["trace"]["high_score"] > summary["trace"]["low_score"]
    edit = summary["edit"]
    assert edit["succeeded"] and edit["checks"]["prompt"]["after"]["top"] == " Rome"
    assert edit["checks"]["prompt"]["after"]["p_target"] > 0.5 > edit["checks"]["prompt"]["before"]["p_target"]
    assert edit["checks"]["neighbour"]["after"]["top"] == " Paris"  # the Louvre stays in Paris


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


def test_overwrite_lets_an_existing_folder_be_replaced(jrome, tmp_path):
    out = jrome(
        "edit", "--prompt", "{} is", "--subject", "a", "--target", "b", "--save", str(tmp_path), "--overwrite",
        "--model", "/nonexistent/model",
    )  # fmt: skip
    assert out.returncode == 2 and "model '/nonexistent/model' not found" in out.stderr  # past the output check
