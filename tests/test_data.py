"""jrome.data and jrome.corpus against a real HTTP server on 127.0.0.1 (tests/hub.py) serving files the tests write,
as the original's site and as the Hugging Face hub: fetch on first use, a resume after a cut connection, a wrong
digest, a 404, the offline switches, the data folder winning over the network, the CLI, and corpora streamed from
the hub file by file."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA_DIR, data_file
from hub import COMMIT, Mirror, closed_port, parquet, wikitext_rows

import jrome
import jrome.data as data
from jrome.cli import main
from jrome.corpus import open_corpus
from jrome.editing import MemitHparams, RomeHparams, key_statistics
from jrome.editing.published import statistics_for
from jrome.evaluation import load_dataset

WIKITEXT_2 = "datasets/Salesforce/wikitext/resolve/" + COMMIT + "/wikitext-2-v1/"


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A served folder, an empty data folder and cache, jrome online and pointed at the server."""
    server = Mirror(tmp_path / "served").start()
    monkeypatch.delenv("JROME_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("JROME_DATA_URL", server.url)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("JROME_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("JROME_CACHE_DIR", str(tmp_path / "cache"))
    yield server
    server.stop()


def cache_files(tmp_path: Path, under: str = "data") -> list[str]:
    root = tmp_path / "cache" / under
    return sorted(str(p.relative_to(tmp_path / "cache")) for p in root.rglob("*") if p.is_file())


def test_a_published_file_is_fetched_on_first_use_checked_and_then_found_without_the_network(mirror, tmp_path):
    known = data_file("known_1000.json").read_bytes()  # the published file, whose digest jrome pins
    assert hashlib.sha256(known).hexdigest() == data.FILES["known_1000"].sha256
    mirror.serve("dsets/known_1000.json", known)
    assert jrome.data.load_known()[0]["subject"] == "Vinson Massif"  # fetched on first use
    path = tmp_path / "cache" / "data" / "dsets" / "known_1000.json"
    assert path.read_bytes() == known and cache_files(tmp_path) == ["data/dsets/known_1000.json"]  # no .part left
    assert data.fetch("known_1000.json") == data.fetch("known_1000") == path  # one file, by either name
    assert len(mirror.requests) == 1  # later from the cache


def test_a_cut_connection_is_resumed_from_what_arrived(mirror):
    from huggingface_hub.constants import DOWNLOAD_CHUNK_SIZE  # what arrived is written in chunks of this size

    body = np.random.default_rng(0).bytes(3 * DOWNLOAD_CHUNK_SIZE)
    name = "stats/tiny/wikipedia_stats/model.layers.1.mlp.down_proj_float32_mom2_100000.npz"
    mirror.serve(name, body)
    mirror.cut.add(name)  # 1.5 chunks arrive
    assert data.fetch(name, progress=False).read_bytes() == body
    assert mirror.requests == [(name, None), (name, f"bytes={DOWNLOAD_CHUNK_SIZE}-")]  # the second asked for the rest


def test_a_download_interrupted_in_an_earlier_run_continues_from_its_part_file(mirror, tmp_path):
    body = bytes(range(256)) * 100
    mirror.serve("dsets/tfidf_vocab.json", body)
    part = tmp_path / "cache" / "data" / "dsets" / "tfidf_vocab.json.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(body[:1000])  # what a Ctrl-C left
    assert data.fetch("tfidf_vocab", progress=False).read_bytes() == body
    assert mirror.requests == [("dsets/tfidf_vocab.json", "bytes=1000-")]
    assert cache_files(tmp_path) == ["data/dsets/tfidf_vocab.json"]


def test_a_wrong_digest_is_rejected_and_nothing_is_left_behind(mirror, tmp_path):
    known = data_file("known_1000.json").read_bytes()
    mirror.serve("dsets/known_1000.json", known.replace(b"Paris", b"Rome!"))  # same size, other bytes
    with pytest.raises(ValueError, match="sha256 .* not the published 61daca"):
        data.fetch("known_1000", progress=False)
    assert cache_files(tmp_path) == []
    mirror.serve("dsets/known_1000.json", known[:-1])
    with pytest.raises(ValueError, match="343228 bytes, not the published 343229"):
        data.fetch("known_1000", progress=False)
    assert cache_files(tmp_path) == []


@pytest.mark.parametrize("switch", ["JROME_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_a_missing_file_is_one_line_naming_the_command_that_fetches_it(mirror, monkeypatch, switch):
    mirror.serve("dsets/counterfact.json", b"[]")
    monkeypatch.setenv(switch, "1")
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("counterfact")
    assert str(err.value).count("\n") == 0 and mirror.requests == []
    assert str(err.value).endswith(f"and jrome is offline ({switch}=1); get it with: jrome data fetch counterfact")
    with pytest.raises(FileNotFoundError, match="download=False; get it with: jrome data fetch idf$"):
        data.fetch("idf.npy", download=False)
    assert len(load_dataset("counterfact", download=True)) == 0 and len(mirror.requests) == 1  # asked: fetched


def test_missing_unreachable_and_unknown_files_each_say_what_to_do(mirror, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="answered 404: counterfact is not published there"):
        data.fetch("counterfact", progress=False)
    with pytest.raises(ValueError, match="unknown data file 'counterfactual'; accepted: known_1000, counterfact, zsre"):
        data.fetch("counterfactual")
    monkeypatch.setenv("JROME_DATA_URL", f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(OSError, match=r"cannot reach http://127.0.0.1:\d+/dsets/idf.npy .*JROME_OFFLINE=1"):
        data.fetch("idf", progress=False)
    assert cache_files(tmp_path) == []


def test_the_data_folder_wins_over_the_cache_and_the_network(mirror, tmp_path):
    records = data_file("counterfact/counterfact-edit.json").read_text()
    mirror.serve("dsets/counterfact.json", records.encode())
    assert len(load_dataset("counterfact")) == 10_000 and len(mirror.requests) == 1
    local = tmp_path / "data" / "counterfact.json"
    local.parent.mkdir()
    local.write_text(json.dumps(json.loads(records)[:1]))  # one record
    assert len(load_dataset("counterfact")) == 1 and len(mirror.requests) == 1


def test_the_cli_fetches_by_the_one_name_and_refuses_an_unknown_one_in_one_line(mirror, tmp_path, capsys):
    mirror.serve("dsets/idf.npy", b"\x93NUMPY fake")
    assert main(["data", "fetch", "idf", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == f"idf: {tmp_path / 'cache' / 'data' / 'dsets' / 'idf.npy'}"
    assert main(["data", "fetch", "idf.npy", "bogus.json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and err[0].startswith("jrome data: error: unknown data file 'bogus.json'; accepted:")
    assert len(mirror.requests) == 1  # the bad name stopped the command before any download


def test_published_statistics_are_fetched_on_first_use_and_offline_computed_with_a_word(
    mirror, tmp_path, tiny_lm, capsys, monkeypatch
):
    lm = tiny_lm("gpt2")  # keys of width 48 at transformer.h.{}.mlp.c_proj
    rng = np.random.default_rng(0)
    keys = rng.normal(size=(500, 48)) * rng.uniform(0.2, 3.0, size=48)  # far from the identity
    name = "stats/tiny-gpt2/wikipedia_stats/transformer.h.1.mlp.c_proj_float32_mom2_100000.npz"
    buf = io.BytesIO()
    np.savez(buf, **{"mom2.mom2": (keys.T @ keys).astype(np.float32), "mom2.count": np.int64(500)})
    mirror.serve(name, buf.getvalue())
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the eiffel tower is in paris and the louvre is a museum in paris\n" * 40)
    hp = RomeHparams(
        layer=1, context_templates=("{}", "a new {}"), v_num_grad_steps=3, mom2_published="tiny-gpt2",
        mom2_corpus=str(corpus), mom2_n_tokens=200,
    )  # fmt: skip
    request = {"prompt": "{} is located in the city of", "subject": "the eiffel tower", "target_new": "rome"}

    monkeypatch.setenv("JROME_OFFLINE", "1")
    _, undo = jrome.rome.edit(lm, request, hp)  # offline: computed over the corpus, and said so
    assert mirror.requests == [] and "layer 1: no published file" in capsys.readouterr().err
    computed = undo.edits[0]
    monkeypatch.delenv("JROME_OFFLINE")

    stats = statistics_for(lm, hp, [0, 1])  # layer 0 is not published: computed
    assert [r[0] for r in mirror.requests] == [name.replace(".1.", ".0."), name]
    np.testing.assert_array_equal(stats[1].mom2, (keys.T @ keys).astype(np.float32))
    assert stats[1].count == 500 and stats[0].count != 500
    err = capsys.readouterr().err
    assert "layer 0: no published file" in err and f"layer 1: the original's published {tmp_path}" in err

    _, undo = jrome.rome.edit(lm, request, hp)  # now cached: the published C, no new request
    published = undo.edits[0]
    assert len(mirror.requests) == 2
    c = keys.T @ keys / 500
    want = np.linalg.solve(c, published.k_star)
    np.testing.assert_allclose(published.u_hat, want / np.linalg.norm(want), rtol=1e-4, atol=1e-6)
    assert np.abs(computed.u_hat - published.u_hat).max() > 1e-2  # the corpus's C gives another direction

    memit_hp = MemitHparams(layers=(1,), context_templates=("{}",), v_num_grad_steps=2, mom2_published="tiny-gpt2")
    jrome.memit.edit(lm, [request], memit_hp)
    assert f"layer 1: the original's published {tmp_path}" in capsys.readouterr().err


def publish_wikitext_2(mirror: Mirror, lines: int) -> None:
    """WikiText-2's test and validation text as the hub has it (wikitext-2-v1), cut to `lines` lines each."""
    for split, local in (("test", "test.txt"), ("validation", "valid.txt")):
        rows = wikitext_rows(DATA_DIR / "wikitext-2" / local, lines)
        mirror.publish("Salesforce/wikitext", f"wikitext-2-v1/{split}-00000-of-00001.parquet", parquet(rows))
    mirror.publish("Salesforce/wikitext", "wikitext-103-raw-v1/train-00000-of-00002.parquet", parquet(["unread"]))


def test_wikitext_2_from_the_hub_is_the_local_text_read_file_by_file_and_cached(mirror, tmp_path, tiny_lm, monkeypatch):
    data_file("wikitext-2/test.txt")
    publish_wikitext_2(mirror, 400)
    lm = tiny_lm("llama")
    hub = key_statistics(lm, 1, "wikitext-2", n_tokens=300, window=16, progress=False)[1]
    fetched = [path for path, _ in mirror.requests if "/resolve/" in path]
    assert set(fetched) == {WIKITEXT_2 + "test-00000-of-00001.parquet"}  # enough tokens there: validation not read
    assert hub.corpus == "wikitext-2" and hub.count == 304

    folder = tmp_path / "local" / "wikitext-2"  # the same lines as text files: the statistics are the same
    folder.mkdir(parents=True)
    for local in ("test.txt", "valid.txt"):
        lines = (DATA_DIR / "wikitext-2" / local).read_text(encoding="utf-8").splitlines(keepends=True)[:400]
        (folder / local).write_text("".join(lines), encoding="utf-8")
    here = key_statistics(lm, 1, folder, n_tokens=300, window=16, cache=False, progress=False)[1]
    np.testing.assert_array_equal(hub.mom2, here.mom2)

    monkeypatch.setenv("JROME_OFFLINE", "1")  # what was read is there offline; what was not is one line
    served = len(mirror.requests)
    text = (folder / "test.txt").read_text(encoding="utf-8")
    assert next(open_corpus("wikitext-2").pieces()) == text
    with pytest.raises(FileNotFoundError, match="validation-00000-of-00001.parquet of the wikitext-2 .* jrome data fetch wikitext-2$"):  # fmt: skip
        list(open_corpus("wikitext-2").records())
    assert len(mirror.requests) == served
    monkeypatch.delenv("JROME_OFFLINE")
    assert main(["data", "fetch", "wikitext-2"]) == 0  # 800 rows: both files
    monkeypatch.setenv("JROME_OFFLINE", "1")
    assert list(open_corpus("wikitext-2").records()) == list(open_corpus(folder).records())


def test_hub_corpora_by_the_originals_names_and_an_unreachable_hub(mirror, tmp_path, monkeypatch, capsys):
    articles = [f"Article {i}.\n\nIts second paragraph." for i in range(5)]
    mirror.publish("wikimedia/wikipedia", "20231101.en/train-00000-of-00002.parquet", parquet(articles[:3]))
    mirror.publish("wikimedia/wikipedia", "20231101.en/train-00001-of-00002.parquet", parquet(articles[3:]))
    mirror.publish("wikimedia/wikipedia", "20231101.fr/train-00000-of-00001.parquet", parquet(["Un article."]))
    wiki = open_corpus("wikipedia")
    assert list(wiki.records()) == articles  # one record per article, the English files in order
    assert "".join(wiki.pieces()) == "".join(a + "\n\n" for a in articles)
    assert main(["data", "fetch", "wikipedia"]) == 0
    assert capsys.readouterr().out.startswith("wikipedia: 2 files in ")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(OSError, match=r"cannot reach http://127.0.0.1:\d+ \(.*\); offline\?"):
        open_corpus("wikitext")


def test_with_neither_corpus_nor_network_an_edit_says_what_it_needs_and_the_command(tmp_path, tiny_lm, monkeypatch):
    monkeypatch.setenv("JROME_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("JROME_CACHE_DIR", str(tmp_path / "cache"))
    hp = RomeHparams(layer=1, context_templates=("{}",), v_num_grad_steps=2, mom2_n_tokens=200)
    request = {"prompt": "{} is located in the city of", "subject": "the eiffel tower", "target_new": "rome"}
    with pytest.raises(FileNotFoundError) as err:
        jrome.rome.edit(tiny_lm("llama"), request, hp, progress=False)
    assert str(err.value) == (
        f"the wikitext-2 text corpus (for key statistics) is not in {tmp_path / 'data' / 'wikitext-2'} nor cached, "
        "and jrome is offline (JROME_OFFLINE=1); get it with: jrome data fetch wikitext-2"
    )
