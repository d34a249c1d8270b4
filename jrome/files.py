"""Files that survive interruptions: atomic writes (a result is wholly on disk or absent) and append-only JSONL
logs of finished work, which a resumed run reads back."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename over `path` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Add one record as a line, flushed to disk before returning (an interruption can only cut the last line)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike, key: str) -> dict:
    """The records of a JSONL log by their `key` field (the first of repeats); a line cut short by an interruption
    is dropped, so that work is redone. The file is rewritten without such lines and repeats."""
    path = Path(path)
    if not path.is_file():
        return {}
    lines = path.read_text().splitlines()
    done: dict = {}
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        done.setdefault(record[key], record)
    if len(done) != len(lines):
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in done.values()))
    return done
