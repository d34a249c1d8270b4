"""A real HTTP server on 127.0.0.1 that serves what jrome fetches: the original's site (files under `site/`, byte
ranges, a connection that can be cut halfway) and the Hugging Face hub's routes for datasets (`/api/datasets/<repo>/
revision/<rev>` and `/datasets/<repo>/resolve/<rev>/<path>`, files under `hub/<repo>/`). Tests write the files."""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import threading
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class Mirror(http.server.ThreadingHTTPServer):
    """`root/site` as the original's site, `root/hub/<owner>/<name>/...` as hub datasets at COMMIT; `cut` names
    site paths whose next answer stops halfway; `requests` logs (path, Range header)."""

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.root, self.cut, self.requests = root, set(), []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def serve(self, path: str, body: bytes) -> Path:
        """Publish `body` on the site at `path`."""
        return write(self.root / "site" / path, body)

    def publish(self, repo: str, path: str, body: bytes) -> Path:
        """Publish `body` as the file `path` of the hub dataset `repo`."""
        return write(self.root / "hub" / repo / path, body)

    def start(self) -> Mirror:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def write(path: Path, body: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    return path


class Handler(http.server.BaseHTTPRequestHandler):
    server: Mirror

    def log_message(self, *args) -> None:
        pass

    def do_HEAD(self) -> None:
        self.answer(head=True)

    def do_GET(self) -> None:
        self.answer(head=False)

    def answer(self, head: bool) -> None:
        path = self.path.split("?", 1)[0].lstrip("/")
        self.server.requests.append((path, self.headers.get("Range")))
        parts = path.split("/")
        if parts[:2] == ["api", "datasets"] and len(parts) >= 6 and parts[4] == "revision":
            return self.listing("/".join(parts[2:4]))
        if parts[:1] == ["datasets"] and len(parts) >= 6 and parts[3] == "resolve":
            return self.file(self.server.root / "hub" / parts[1] / parts[2] / "/".join(parts[5:]), head, hub=True)
        return self.file(self.server.root / "site" / path, head, hub=False)

    def listing(self, repo: str) -> None:
        folder = self.server.root / "hub" / repo
        if not folder.is_dir():
            self.send_error(404)
            return
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        body = json.dumps({"id": repo, "sha": COMMIT, "siblings": [{"rfilename": f} for f in files]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def file(self, file: Path, head: bool, hub: bool) -> None:
        if not file.is_file():
            self.send_error(404)
            return
        body = file.read_bytes()
        start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0]) if self.headers["Range"] else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        if hub:
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if head:
            return
        rel = str(file.relative_to(self.server.root / "site")) if not hub else None
        if rel in self.server.cut:  # announce it all, send half, hang up
            self.server.cut.discard(rel)
            self.wfile.write(body[start : start + (len(body) - start) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body[start:])


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parquet(rows: list[str]) -> bytes:
    """A parquet file with one string column "text", as the hub's datasets are stored."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table({"text": rows}), buf, row_group_size=1000)
    return buf.getvalue()


def wikitext_rows(path: Path, limit: int | None = None) -> list[str]:
    """A WikiText text file as the hub stores it: one row per line, a blank line (" \\n") as an empty row."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)[:limit]
    return [line if line.strip() else "" for line in lines]
