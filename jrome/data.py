"""The paper's public files (datasets and published key statistics): found in $JROME_DATA_DIR, else in the cache
($JROME_CACHE_DIR/data), else — only when asked — fetched from the original's site ($JROME_DATA_URL) into the cache:
resumably (a cut download continues from its `.part` file), atomically (a file is whole or absent) and checked
(size, and sha256 where the published file is fixed and its digest is known)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

BASE_URL = "https://rome.baulab.info/data"  # the original's REMOTE_ROOT_URL + "/data"
VARIABLES = "JROME_DATA_DIR (a folder holding the file) or JROME_DATA_URL (a mirror of " + BASE_URL + ")"


@dataclasses.dataclass(frozen=True)
class Remote:
    """Where a file lives under the base URL (and under the cache), and what it must be where that is known."""

    path: str
    size: int | None = None
    sha256: str | None = None


# The original's dataset files. Only known_1000.json has a pinned digest (taken from a copy of the published file);
# for the others this project had no copy, so they are checked against the size the server announces.
FILES = {
    "known_1000.json": Remote(
        "dsets/known_1000.json", 343_229, "61daca55318bb5260c1e62e133debef9102c7b278bbc7b19dd2ac655543f333a"
    ),
    "counterfact.json": Remote("dsets/counterfact.json"),
    "zsre_mend_eval.json": Remote("dsets/zsre_mend_eval.json"),
    "attribute_snippets.json": Remote("dsets/attribute_snippets.json"),
    "idf.npy": Remote("dsets/idf.npy"),
    "tfidf_vocab.json": Remote("dsets/tfidf_vocab.json"),
}
# The original's published key statistics: stats/<model>/wikipedia_stats/<module>_<precision>_mom2_<samples>.npz
STATS = re.compile(r"stats/[\w.-]+/wikipedia_stats/[\w.-]+_float(16|32|64)_mom2_\d+\.npz")
CHUNK = 1 << 20


def data_dir() -> Path:
    """The folder named by JROME_DATA_DIR (default: ./data)."""
    return Path(os.environ.get("JROME_DATA_DIR", "data"))


def cache_dir() -> Path:
    """Where jrome keeps what it fetched or computed: $JROME_CACHE_DIR, else ~/.cache/jrome."""
    return Path(os.environ.get("JROME_CACHE_DIR", Path.home() / ".cache" / "jrome"))


def base_url() -> str:
    return os.environ.get("JROME_DATA_URL", BASE_URL).rstrip("/")


def remote(name: str) -> Remote:
    """The published file `name` (a FILES name or a stats/... path); anything else is an error listing the names."""
    if name in FILES:
        return FILES[name]
    if STATS.fullmatch(name):
        return Remote(name)
    raise ValueError(
        f"unknown data file {name!r}; accepted: {', '.join(FILES)}, all, or "
        "stats/<model>/wikipedia_stats/<module>_float32_mom2_100000.npz"
    )


def published_stats_name(model: str, module: str, n_samples: int = 100_000, precision: str = "float32") -> str:
    """The path of a layer's published statistics, e.g. stats/gpt2-xl/wikipedia_stats/transformer.h.17.mlp.c_proj_
    float32_mom2_100000.npz (the original's `layer_stats` names; `model` as its folder there, e.g. gpt2-xl)."""
    return f"stats/{model}/wikipedia_stats/{module}_{precision}_mom2_{n_samples}.npz"


def find(name: str) -> Path | None:
    """The file if it is already here: under $JROME_DATA_DIR (by name, or by its path on the site), else cached."""
    entry = remote(name)
    for path in (data_dir() / name, data_dir() / entry.path, cache_dir() / "data" / entry.path):
        if path.is_file():
            return path
    return None


def fetch(name: str, *, download: bool = True, progress: bool = True) -> Path:
    """The local path of a published file: found here (see `find`), else downloaded into the cache when `download`.

    Without `download`, or offline, a missing file is one FileNotFoundError/OSError naming the URL and the two
    variables that point jrome at a local copy or a mirror. A wrong size or digest deletes the download."""
    entry = remote(name)
    found = find(name)
    if found is not None:
        return found
    url = f"{base_url()}/{entry.path}"
    if not download:
        raise FileNotFoundError(
            f"{name} is not in {data_dir()} nor cached; fetch it from {url} (jrome data fetch {name}, or "
            "download=True), or set JROME_DATA_DIR to a folder that has it"
        )
    dest = cache_dir() / "data" / entry.path
    _download(url, dest, entry, name, progress)
    return dest


def fetch_all(*, download: bool = True, progress: bool = True) -> list[Path]:
    """Every dataset file of FILES (published statistics are per model and layer: fetch those by name)."""
    return [fetch(name, download=download, progress=progress) for name in FILES]


def _total(response: Any, start: int) -> int | None:
    """The whole file's size from a 206's Content-Range or a 200's Content-Length."""
    span = response.headers.get("Content-Range", "")
    if "/" in span and span.rsplit("/", 1)[1].isdigit():
        return int(span.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return start + int(length) if length and length.isdigit() else None


def _download(url: str, dest: Path, entry: Remote, name: str, progress: bool, attempts: int = 4) -> None:
    """Download into dest + ".part", continuing a part that is there (HTTP Range), up to `attempts` connections;
    check size and digest, then rename into place."""
    from tqdm.auto import tqdm

    part = dest.with_name(dest.name + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    total = entry.size
    for _ in range(attempts):
        have = part.stat().st_size if part.is_file() else 0
        if total is not None and have >= total:
            break
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            response = urllib.request.urlopen(request, timeout=60)
        except urllib.error.HTTPError as err:
            if err.code == 416 and have:  # the part is already whole (or longer than the file): check it below
                break
            raise FileNotFoundError(f"{url} answered {err.code} {err.reason}: {name} is not published there") from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise OSError(f"cannot reach {url} ({reason}); offline? set {VARIABLES}") from None
        with response:
            if have and response.status != 206:  # the server ignored the range: start over
                have = 0
            total = _total(response, have) or total
            with (
                open(part, "ab" if have else "wb") as f,
                tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=name, disable=not progress) as bar,
            ):
                try:
                    while chunk := response.read(CHUNK):
                        f.write(chunk)
                        bar.update(len(chunk))
                except (OSError, ValueError):  # a cut connection: continue from what arrived
                    continue
        if total is None or part.stat().st_size >= total:
            break
    _check(part, entry, total, url)
    os.replace(part, dest)


def _check(part: Path, entry: Remote, total: int | None, url: str) -> None:
    """The download has the announced size and the known size and digest; else it is deleted and an error says so."""
    size = part.stat().st_size if part.is_file() else 0
    problem = None
    if total is not None and size != total:
        problem = f"got {size} bytes of {total} (the connection kept breaking; run again to continue)"
    elif entry.size is not None and size != entry.size:
        problem = f"it has {size} bytes, not the published {entry.size}"
    elif entry.sha256 is not None:
        digest = hashlib.sha256()
        with open(part, "rb") as f:
            while block := f.read(CHUNK):
                digest.update(block)
        if digest.hexdigest() != entry.sha256:
            problem = f"its sha256 is {digest.hexdigest()}, not the published {entry.sha256}"
    if problem is None:
        return
    if total is None or size >= total:  # whole but wrong: nothing of it is kept
        part.unlink(missing_ok=True)
    raise ValueError(f"download of {url} rejected: {problem}")


def data_path(relative: str) -> Path:
    """A dataset file under the data folder or fetched into the cache, else FileNotFoundError saying where to get it."""
    path = data_dir() / relative
    if path.is_file():
        return path
    if relative in FILES:
        return fetch(relative, download=False)
    raise FileNotFoundError(
        f"{relative} is not in {data_dir()} (set JROME_DATA_DIR to the folder that holds it; see data/README.md)"
    )


def load_known(path: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """ROME's known facts: dicts with subject, attribute, template, prompt, relation_id, known_id."""
    records = json.loads(Path(path or data_path("known_1000.json")).read_text())
    for i, record in enumerate(records):
        missing = [k for k in ("subject", "attribute", "prompt") if k not in record]
        if missing:
            raise ValueError(f"known-facts record {i} has no field {missing[0]!r}")
    return records
