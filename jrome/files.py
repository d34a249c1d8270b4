"""Files that survive interruptions: atomic writes (a result is wholly on disk or absent) and append-only JSONL
logs of finished work, which a resumed run reads back."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def user_mode(path: str | os.PathLike, folder: bool = False) -> None:
    """Give a file or folder made by tempfile (0600 / 0700) the permissions a plain open() or mkdir would have."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


def check_output(path: str | os.PathLike, flag: str, *, folder: bool = False, replace: bool = True) -> None:
    """Say before any work starts whether `path` can be written, naming the user's `flag` and path.

    A file path must not be a folder; a folder path must not be a file, and an existing one is an error unless
    `replace` (say how the caller lets it be replaced). The nearest existing folder above must take a new file."""
    target = Path(path).absolute()
    if folder and target.is_file():
        raise ValueError(f"{flag} {path} is a file; a folder is expected there")
    if not folder and target.is_dir():
        raise ValueError(f"{flag} {path} is a folder; a file path is expected (such as {Path(path) / 'out.json'})")
    if folder and target.exists() and not replace:
        raise FileExistsError(f"{flag} {path} exists; add --overwrite to replace it, or choose another path")
    above = target if folder and target.is_dir() else target.parent
    while not above.exists():
        above = above.parent
    if not above.is_dir():
        raise ValueError(f"{flag} {path} cannot be written: {above} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=above, prefix=".jrome-write-check.")
    except OSError as err:
        raise PermissionError(
            f"{flag} {path} cannot be written: {above} does not take new files ({err.strerror})"
        ) from None
    os.close(fd)
    os.unlink(probe)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename over `path` (atomic on POSIX); the file gets the
    user's umask, as open() would give it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        user_mode(tmp)
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


def read_jsonl(path: str | os.PathLike, key: str, rewrite: bool = True) -> dict:
    """The records of a JSONL log by their `key` field (the first of repeats); a line cut short by an interruption
    is dropped, so that work is redone. With `rewrite`, the file is rewritten without such lines and repeats."""
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
    if rewrite and len(done) != len(lines):
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in done.values()))
    return done


def setting_diffs(saved: dict, current: dict) -> list[str]:
    """What differs between recorded settings and these (compared as JSON), as "key X there, Y now"; a setting the
    recorded run did not note (made by an older jrome) is not compared."""
    current = json.loads(json.dumps(current))
    return [f"{k} {saved[k]!r} there, {v!r} now" for k, v in current.items() if k in saved and saved[k] != v]


def json_safe(value: Any) -> Any:
    """`value` with every NaN or infinite float as None, so that json.dumps writes valid JSON (null, not NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def check_settings(folder: str | os.PathLike, settings: dict, log: str) -> None:
    """Record a resumable run's settings in folder/settings.json, or check that the run already there used the same
    ones, so that a resumed run never mixes results made differently. `log` is the run's JSONL of finished work."""
    folder = Path(folder)
    path = folder / "settings.json"
    fresh = "; to start fresh, use a new folder or delete " + str(folder)
    if path.is_file():
        diffs = setting_diffs(json.loads(path.read_text()), settings)
        if diffs:
            raise ValueError(f"{folder} holds a run with other settings ({'; '.join(diffs)}){fresh}")
    elif (folder / log).is_file():
        raise ValueError(f"{folder} holds {log} but no settings.json, so it cannot be resumed safely{fresh}")
    else:
        atomic_write_text(path, json.dumps(settings, indent=2))


def read_json_list(path: str | os.PathLike, what: str) -> list:
    """A JSON file holding a list (of `what`); a file that is not JSON, or not a list, is one line naming it."""
    try:
        records = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    if not isinstance(records, list):
        raise ValueError(f"{path} must hold a JSON list of {what}")
    return records
