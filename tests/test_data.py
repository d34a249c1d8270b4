"""jrome.data against a real HTTP server on 127.0.0.1 serving files the tests write: a download, a resume after a
cut connection, a wrong digest, a 404, offline, the data folder winning over the network, and the CLI."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import data_file

import jrome
import jrome.data as data
from jrome.cli import main
from jrome.editing import MemitHparams, RomeHparams
from jrome.editing.stats import statistics_for
from jrome.evaluation import load_dataset


class Site(http.server.ThreadingHTTPServer):
    """Serves files from `root` with byte ranges; `cut` names paths whose next answer stops halfway."""

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.root, self.cut, self.requests = root, set(), []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(http.server.BaseHTTPRequestHandler):
    server: Site

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        path = self.path.lstrip("/")
        self.server.requests.append((path, self.headers.get("Range")))
        file = self.server.root / path
        if not file.is_file():
            self.send_error(404)
            return
        body = file.read_bytes()
        start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0]) if self.headers["Range"] else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if path in self.server.cut:  # announce it all, send half, hang up
            self.server.cut.discard(path)
            self.wfile.write(body[start : start + (len(body) - start) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body[start:])


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A served folder, an empty data folder and cache, and JROME_DATA_URL pointing at the server."""
    served = tmp_path / "site"
    server = Site(served)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("JROME_DATA_URL", server.url)
    monkeypatch.setenv("JROME_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("JROME_CACHE_DIR", str(tmp_path / "cache"))
    yield server
    server.shutdown()
    server.server_close()


def serve(site: Site, path: str, body: bytes) -> None:
    (site.root / path).parent.mkdir(parents=True, exist_ok=True)
    (site.root / path).write_bytes(body)


def cache_files(tmp_path: Path) -> list[str]:
    return sorted(str(p.relative_to(tmp_path / "cache")) for p in (tmp_path / "cache").rglob("*") if p.is_file())


def test_a_published_file_is_downloaded_checked_and_then_found_without_the_network(site, tmp_path):
    known = data_file("known_1000.json").read_bytes()  # the published file, whose digest jrome pins
    assert hashlib.sha256(known).hexdigest() == data.FILES["known_1000.json"].sha256
    serve(site, "dsets/known_1000.json", known)
    path = data.fetch("known_1000.json", progress=False)
    assert path == tmp_path / "cache" / "data" / "dsets" / "known_1000.json"
    assert path.read_bytes() == known
    assert cache_files(tmp_path) == ["data/dsets/known_1000.json"]  # no .part left
    assert data.fetch("known_1000.json") == path and len(site.requests) == 1  # the second time from the cache
    assert data.load_known()[0]["subject"] == "Vinson Massif"


def test_a_cut_connection_is_resumed_from_what_arrived(site, tmp_path):
    body = bytes(range(256)) * 4000
    name = "stats/tiny/wikipedia_stats/model.layers.1.mlp.down_proj_float32_mom2_100000.npz"
    serve(site, name, body)
    site.cut.add(name)
    path = data.fetch(name, progress=False)
    assert path.read_bytes() == body
    assert site.requests == [(name, None), (name, f"bytes={len(body) // 2}-")]  # the second asked only for the rest


def test_a_wrong_digest_is_rejected_and_nothing_is_left_behind(site, tmp_path):
    known = data_file("known_1000.json").read_bytes()
    serve(site, "dsets/known_1000.json", known.replace(b"Paris", b"Rome!"))  # same size, other bytes
    with pytest.raises(ValueError, match="sha256 .* not the published 61daca"):
        data.fetch("known_1000.json", progress=False)
    assert cache_files(tmp_path) == []
    serve(site, "dsets/known_1000.json", known[:-1])
    with pytest.raises(ValueError, match="343228 bytes, not the published 343229"):
        data.fetch("known_1000.json", progress=False)
    assert cache_files(tmp_path) == []


def test_missing_offline_and_unknown_files_each_say_what_to_do(site, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="answered 404 .*counterfact.json is not published there"):
        data.fetch("counterfact.json", progress=False)
    with pytest.raises(ValueError, match="unknown data file 'counterfact'; accepted: known_1000.json, .*stats/"):
        data.fetch("counterfact")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setenv("JROME_DATA_URL", f"http://127.0.0.1:{closed}")
    with pytest.raises(OSError, match=f"cannot reach http://127.0.0.1:{closed}/dsets/idf.npy .*JROME_DATA_DIR.*JROME_DATA_URL"):  # fmt: skip
        data.fetch("idf.npy", progress=False)
    assert cache_files(tmp_path) == []


def test_the_library_goes_online_only_when_asked_and_the_data_folder_wins(site, tmp_path):
    records = data_file("counterfact/counterfact-edit.json").read_text()
    serve(site, "dsets/counterfact.json", records.encode())
    with pytest.raises(
        FileNotFoundError,
        match=r"counterfact.json is not in .* nor cached; fetch it from .*\(jrome data fetch counterfact.json",
    ):
        load_dataset("counterfact")
    assert site.requests == []
    cases = load_dataset("counterfact", download=True)
    assert len(cases) == 10_000 and len(site.requests) == 1
    local = tmp_path / "data" / "counterfact.json"
    local.parent.mkdir()
    local.write_text(json.dumps(json.loads(records)[:1]))  # one record
    assert len(load_dataset("counterfact", download=True)) == 1 and len(site.requests) == 1


def test_the_cli_fetches_by_name_and_refuses_an_unknown_one_in_one_line(site, tmp_path, capsys):
    serve(site, "dsets/idf.npy", b"\x93NUMPY fake")
    assert main(["data", "fetch", "idf.npy", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == f"idf.npy: {tmp_path / 'cache' / 'data' / 'dsets' / 'idf.npy'}"
    assert main(["data", "fetch", "idf.npy", "bogus.json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and err[0].startswith("jrome data: error: unknown data file 'bogus.json'; accepted:")
    assert len(site.requests) == 1  # the bad name stopped the command before any download


def test_a_download_interrupted_in_an_earlier_run_continues_from_its_part_file(site, tmp_path):
    body = bytes(range(256)) * 100
    serve(site, "dsets/tfidf_vocab.json", body)
    part = tmp_path / "cache" / "data" / "dsets" / "tfidf_vocab.json.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(body[:1000])  # what a Ctrl-C left
    assert data.fetch("tfidf_vocab.json", progress=False).read_bytes() == body
    assert site.requests == [("dsets/tfidf_vocab.json", "bytes=1000-")]
    assert cache_files(tmp_path) == ["data/dsets/tfidf_vocab.json"]


def test_rome_and_memit_use_the_published_statistics_when_they_are_here(site, tmp_path, tiny_lm, capsys):
    lm = tiny_lm("gpt2")  # keys of width 48 at transformer.h.{}.mlp.c_proj
    rng = np.random.default_rng(0)
    keys = rng.normal(size=(500, 48)) * rng.uniform(0.2, 3.0, size=48)  # far from the identity
    name = "stats/tiny-gpt2/wikipedia_stats/transformer.h.1.mlp.c_proj_float32_mom2_100000.npz"
    buf = io.BytesIO()
    np.savez(buf, **{"mom2.mom2": (keys.T @ keys).astype(np.float32), "mom2.count": np.int64(500)})
    serve(site, name, buf.getvalue())
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the eiffel tower is in paris and the louvre is a museum in paris\n" * 40)
    hp = RomeHparams(
        layer=1, context_templates=("{}", "a new {}"), v_num_grad_steps=3, mom2_published="tiny-gpt2",
        mom2_corpus=str(corpus), mom2_n_tokens=200,
    )  # fmt: skip
    request = {"prompt": "{} is located in the city of", "subject": "the eiffel tower", "target_new": "rome"}

    _, undo = jrome.rome.edit(lm, request, hp)  # not fetched unasked: computed over the corpus, and said so
    assert site.requests == [] and "layer 1: no published file" in capsys.readouterr().err
    computed = undo.edits[0]

    stats = statistics_for(lm, hp, [0, 1], download=True)  # layer 0 is not published: computed
    assert [r[0] for r in site.requests] == [name.replace(".1.", ".0."), name]
    np.testing.assert_array_equal(stats[1].mom2, (keys.T @ keys).astype(np.float32))
    assert stats[1].count == 500 and stats[0].count != 500
    err = capsys.readouterr().err
    assert "layer 0: no published file" in err and f"layer 1: the original's published {tmp_path}" in err

    _, undo = jrome.rome.edit(lm, request, hp)  # now cached: the published C, no new request
    published = undo.edits[0]
    assert len(site.requests) == 2
    c = keys.T @ keys / 500
    want = np.linalg.solve(c, published.k_star)
    np.testing.assert_allclose(published.u_hat, want / np.linalg.norm(want), rtol=1e-4, atol=1e-6)
    assert np.abs(computed.u_hat - published.u_hat).max() > 1e-2  # the corpus's C gives another direction

    memit_hp = MemitHparams(layers=(1,), context_templates=("{}",), v_num_grad_steps=2, mom2_published="tiny-gpt2")
    _, undo = jrome.memit.edit(lm, [request], memit_hp)
    assert f"layer 1: the original's published {tmp_path}" in capsys.readouterr().err
