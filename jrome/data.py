"""The public files jrome reads: the paper's datasets and published key statistics (from the original's site,
$JROME_DATA_URL) and text corpora for key statistics (from the Hugging Face hub, $HF_ENDPOINT; see jrome.corpus).

A file is found in $JROME_DATA_DIR, else in the cache ($JROME_CACHE_DIR), else fetched into the cache on first use
through huggingface_hub: with a progress bar, resumably (a cut download continues from its `.part` file), atomically
(a file is whole or absent) and checked (size, and sha256 where the published file is fixed and its digest known).
Offline (JROME_OFFLINE=1 or HF_HUB_OFFLINE=1, or download=False) a missing file is one line naming the command that
fetches it. Each file has one name, used by every function, command and message (`known_1000`, `counterfact`, ...).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .files import read_json_list

BASE_URL = "https://rome.baulab.info/data"  # the original's REMOTE_ROOT_URL + "/data"
OFFLINE_VARIABLES = ("JROME_OFFLINE", "HF_HUB_OFFLINE")


@dataclasses.dataclass(frozen=True)
class Remote:
    """Where a file lives under the base URL (and under the cache), and what it must be where that is known."""

    path: str
    size: int | None = None
    sha256: str | None = None


# The original's dataset files, by their one name. Only known_1000 has a pinned digest (taken from a copy of the
# published file); for the others this project had no copy, so they are checked against the size the server announces.
FILES = {
    "known_1000": Remote(
        "dsets/known_1000.json", 343_229, "61daca55318bb5260c1e62e133debef9102c7b278bbc7b19dd2ac655543f333a"
    ),
    "counterfact": Remote("dsets/counterfact.json"),
    "zsre": Remote("dsets/zsre_mend_eval.json"),
    "attribute_snippets": Remote("dsets/attribute_snippets.json"),
    "idf": Remote("dsets/idf.npy"),
    "tfidf_vocab": Remote("dsets/tfidf_vocab.json"),
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


def hub_endpoint() -> str | None:
    """The Hugging Face hub (or mirror) to read from: $HF_ENDPOINT, read at each call (None: huggingface_hub's)."""
    return os.environ.get("HF_ENDPOINT") or None


def offline_switch() -> str | None:
    """The variable that makes jrome offline ("JROME_OFFLINE=1"), or None when it may download."""
    for name in OFFLINE_VARIABLES:
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{name}={os.environ[name]}"
    return None


def may_download(download: bool | None) -> bool:
    """Whether a missing file is fetched: as `download` says, else (None) unless an offline switch is set."""
    return offline_switch() is None if download is None else download


def missing(what: str, name: str, download: bool | None) -> FileNotFoundError:
    """The one line for a file that is not here and may not be fetched: what, why, and the command that gets it."""
    why = "download=False" if download is False else f"jrome is offline ({offline_switch()})"
    return FileNotFoundError(f"{what}, and {why}; get it with: jrome data fetch {name}")


def unreachable(url: str, err: BaseException, name: str) -> OSError:
    """The one line for a server that did not answer."""
    return OSError(
        f"cannot reach {url} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); offline? "
        f"set JROME_OFFLINE=1 and JROME_DATA_DIR to a folder holding {name}, or JROME_DATA_URL / HF_ENDPOINT to a mirror"
    )


def file_name(name: str) -> str:
    """The one name of a published file: itself, or the FILES name whose file it is ("known_1000.json" is
    "known_1000"); a stats/... path is its own name; anything else is an error listing the names."""
    if name in FILES or STATS.fullmatch(name):
        return name
    by_file = {entry.path.rsplit("/", 1)[-1]: key for key, entry in FILES.items()}
    if name in by_file:
        return by_file[name]
    raise ValueError(
        f"unknown data file {name!r}; accepted: {', '.join(FILES)}, all, a corpus (wikitext-2, wikitext, wikipedia), "
        "or stats/<model>/wikipedia_stats/<module>_float32_mom2_100000.npz"
    )


def remote(name: str) -> Remote:
    """The published file `name` (see file_name)."""
    name = file_name(name)
    return FILES[name] if name in FILES else Remote(name)


def published_stats_name(model: str, module: str, n_samples: int = 100_000, precision: str = "float32") -> str:
    """The path of a layer's published statistics, e.g. stats/gpt2-xl/wikipedia_stats/transformer.h.17.mlp.c_proj_
    float32_mom2_100000.npz (the original's `layer_stats` names; `model` as its folder there, e.g. gpt2-xl)."""
    return f"stats/{model}/wikipedia_stats/{module}_{precision}_mom2_{n_samples}.npz"


def find(name: str) -> Path | None:
    """The file if it is already here: under $JROME_DATA_DIR (by its file name or its path on the site), else cached."""
    entry = remote(name)
    for path in (
        data_dir() / entry.path.rsplit("/", 1)[-1],
        data_dir() / entry.path,
        cache_dir() / "data" / entry.path,
    ):
        if path.is_file():
            return path
    return None


def fetch(name: str, *, download: bool | None = None, progress: bool = True) -> Path:
    """The local path of a published file: found here (see `find`), else downloaded into the cache on first use.

    download: None fetches unless jrome is offline (JROME_OFFLINE=1, HF_HUB_OFFLINE=1); False never; True always.
    A missing file that may not be fetched is one FileNotFoundError naming the command that gets it; a server that
    does not answer is one OSError. A wrong size or digest deletes the download."""
    name, entry = file_name(name), remote(name)
    found = find(name)
    if found is not None:
        return found
    if not may_download(download):
        raise missing(f"{name} is not in {data_dir()} nor cached", name, download)
    url = f"{base_url()}/{entry.path}"
    dest = cache_dir() / "data" / entry.path
    _download(url, dest, entry, name, progress)
    return dest


def fetch_all(*, download: bool | None = None, progress: bool = True) -> list[Path]:
    """Every dataset file of FILES (published statistics are per model and layer: fetch those by name)."""
    return [fetch(name, download=download, progress=progress) for name in FILES]


class Silent:
    """A progress bar class that shows nothing (huggingface_hub's downloads take one as `tqdm_class`)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        from tqdm.auto import tqdm

        return tqdm(*args, **(kwargs | {"disable": True}))


def _download(url: str, dest: Path, entry: Remote, name: str, progress: bool) -> None:
    """huggingface_hub's downloader into dest + ".part", continuing a part that is there (HTTP Range) and resuming a
    cut connection itself; then the size and digest are checked and the file renamed into place."""
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.file_download import http_get

    part = dest.with_name(dest.name + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.is_file() else 0
    quiet = {} if progress else {"tqdm_class": Silent}
    try:
        if entry.size is None or have < entry.size:
            with open(part, "ab") as f:
                http_get(url, f, resume_size=have, displayed_filename=name, **quiet)
    except HfHubHTTPError as err:
        status = getattr(err.response, "status_code", None)
        if status != 416:  # 416: the part is already whole (or longer than the file): checked below
            _drop_empty(part)
            raise FileNotFoundError(f"{url} answered {status}: {name} is not published there") from None
    except Exception as err:  # the transport's own errors (connection refused, DNS, timeouts) are not OSErrors
        _drop_empty(part)
        raise unreachable(url, err, name) from None
    _check(part, entry, url)
    os.replace(part, dest)


def _drop_empty(part: Path) -> None:
    """A .part that nothing arrived in is removed (what did arrive is kept, to be continued)."""
    if part.is_file() and part.stat().st_size == 0:
        part.unlink()


def _check(part: Path, entry: Remote, url: str) -> None:
    """The download has the known size and digest; else it is deleted and an error says so."""
    size = part.stat().st_size if part.is_file() else 0
    problem = None
    if entry.size is not None and size != entry.size:
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
    part.unlink(missing_ok=True)
    raise ValueError(f"download of {url} rejected: {problem}")


def load_known(path: str | os.PathLike | None = None, *, download: bool | None = None) -> list[dict[str, Any]]:
    """ROME's known facts (the published known_1000 unless `path`): dicts with subject, attribute, template, prompt,
    relation_id, known_id."""
    path = Path(path) if path is not None else fetch("known_1000", download=download)
    records = read_json_list(path, "facts")
    check_facts(records, where=f"{path}: ")
    return records


def check_facts(facts: Sequence[dict], *, where: str = "") -> None:
    """Every fact has the fields tracing reads (prompt, subject, attribute); else one line naming the first gap."""
    for i, fact in enumerate(facts):
        missing = [k for k in ("prompt", "subject", "attribute") if k not in fact]
        if missing:
            raise ValueError(f"{where}fact {i} has no field {missing[0]!r}; facts need prompt, subject and attribute")
