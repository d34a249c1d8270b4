"""Text corpora for key statistics, by name or path:

- "wikitext-2": WikiText-2's test and validation text from $JROME_DATA_DIR/wikitext-2/*.txt, else the same text from
  the hub (Salesforce/wikitext, wikitext-2-v1);
- "wikitext" and "wikipedia", the original's `mom2_dataset` names: WikiText-103 (Salesforce/wikitext,
  wikitext-103-raw-v1, train) and English Wikipedia (wikimedia/wikipedia, 20231101.en, train: the original's
  20200501.en is no longer on the hub);
- "hf:<dataset repo>": every .txt and .parquet file of a dataset on the hub;
- text files, or folders of them.

A hub corpus is read file by file, in order (a parquet file's "text" column, row by row), each file fetched on first
use into the cache through huggingface_hub ($HF_ENDPOINT honoured), and only as many files as are read. The list of
files and the commit are kept in the cache, so a corpus read once is the same corpus later, online or not.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from .data import cache_dir, data_dir, hub_endpoint, may_download, missing, unreachable
from .files import atomic_write_text

CHUNK_CHARS = 1_000_000  # text is tokenised in pieces of about this many characters, cut at line ends
FETCH_ROWS = 100_000  # `jrome data fetch` gets the files that hold this many rows (the original's sample size)


@dataclasses.dataclass(frozen=True)
class HubCorpus:
    """Files of a dataset on the hub: `{folder}/{split}-*.parquet` for each split in order, or with no folder every
    .txt and .parquet file. lines: the rows are a text file's lines (WikiText: a blank line is an empty row)."""

    repo: str
    folder: str = ""
    splits: tuple[str, ...] = ()
    lines: bool = False

    def order(self, path: str) -> tuple | None:
        """Where the file comes in the corpus, or None if it is not part of it."""
        if not self.folder:
            return (path,) if path.endswith((".txt", ".parquet")) else None
        head, _, base = path.rpartition("/")
        split = base.split("-", 1)[0]
        if head != self.folder or not base.endswith(".parquet") or split not in self.splits:
            return None
        return (self.splits.index(split), base)


HUB = {
    "wikitext-2": HubCorpus("Salesforce/wikitext", "wikitext-2-v1", ("test", "validation"), lines=True),
    "wikitext": HubCorpus("Salesforce/wikitext", "wikitext-103-raw-v1", ("train",), lines=True),
    "wikipedia": HubCorpus("wikimedia/wikipedia", "20231101.en", ("train",)),
}


@dataclasses.dataclass(frozen=True)
class Corpus:
    """A corpus as the statistics read it. `files()` yields its local files in order (a hub corpus fetches each as it
    is reached); `key` identifies its contents; `streamed`: read from the hub, so a sample is its first records."""

    name: str
    key: str
    files: Callable[[], Iterator[Path]]
    lines: bool = True
    streamed: bool = False

    def units(self) -> Iterator[str]:
        """The text as lines (each ending in a newline but perhaps the last); a Wikipedia article is one unit."""
        for path in self.files():
            yield from _units(path, self.lines)

    def pieces(self) -> Iterator[str]:
        """The text in pieces of just over CHUNK_CHARS characters, each cut after a line end or at a file's end."""
        for path in self.files():
            piece: list[str] = []
            size = 0
            for unit in _units(path, self.lines):
                piece.append(unit)
                size += len(unit)
                if size > CHUNK_CHARS:
                    yield "".join(piece)
                    piece, size = [], 0
            if piece:
                yield "".join(piece)

    def file_texts(self) -> Iterator[str]:
        """Each file's whole text, in order (WikiText-2: the test text, then the validation text)."""
        for path in self.files():
            yield "".join(_units(path, self.lines))

    def records(self) -> Iterator[str]:
        """The non-empty records (lines, or a hub dataset's rows), stripped."""
        return (r for r in (u.strip() for u in self.units()) if r)


def _units(path: Path, lines: bool) -> Iterator[str]:
    if path.suffix != ".parquet":
        with open(path, encoding="utf-8") as f:
            yield from f
        return
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(columns=["text"], batch_size=4096):
        for row in batch.column(0).to_pylist():
            yield (row or " \n") if lines else row + "\n\n"


def open_corpus(corpus: str | os.PathLike | Sequence[str | os.PathLike], *, download: bool | None = None) -> Corpus:
    """A corpus by name ("wikitext-2", "wikitext", "wikipedia", "hf:<repo>") or as text files and folders.

    download: as jrome.data.fetch (None: fetch hub files on first use unless offline)."""
    if isinstance(corpus, str) and (corpus in HUB or corpus.startswith("hf:")):
        local = data_dir() / "wikitext-2"
        if corpus == "wikitext-2" and sorted(local.glob("*.txt")):
            return _local("wikitext-2", sorted(local.glob("*.txt")))
        spec = HUB.get(corpus) or HubCorpus(corpus[3:])
        commit, paths = _listing(corpus, spec, download)
        key = hashlib.sha1(f"{spec.repo}@{commit}:{','.join(paths)}:{spec.lines}".encode()).hexdigest()[:12]
        files = lambda: (_hub_file(corpus, spec.repo, commit, p, download) for p in paths)  # noqa: E731
        return Corpus(corpus, key, files, spec.lines, streamed=True)
    paths = [corpus] if isinstance(corpus, str | os.PathLike) else list(corpus)
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(p.rglob("*.txt"))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"corpus path {p} does not exist; corpora by name: {', '.join(HUB)}, hf:<repo>")
    if not files:
        raise FileNotFoundError(f"no .txt files in corpus {corpus!r}")
    return _local(",".join(map(str, files)) if not isinstance(corpus, str) else corpus, files)


def _local(name: str, files: list[Path]) -> Corpus:
    digest = hashlib.sha1()
    for f in files:
        digest.update(f.name.encode() + f.read_bytes())
    return Corpus(name, digest.hexdigest()[:12], lambda: iter(files))


def _slug(name: str) -> str:
    return re.sub(r"[^\w.-]+", "--", name)


def _listing(name: str, spec: HubCorpus, download: bool | None) -> tuple[str, list[str]]:
    """(commit, the corpus's files in order): kept in the cache after the first listing from the hub."""
    saved = cache_dir() / "hub" / "corpora" / f"{_slug(name)}.json"
    if saved.is_file():
        record = json.loads(saved.read_text())
        return record["commit"], record["files"]
    where = f"{data_dir() / 'wikitext-2'} nor cached" if name == "wikitext-2" else "cached"
    if not may_download(download):
        raise missing(f"the {name} text corpus (for key statistics) is not in {where}", name, download)
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    endpoint = hub_endpoint()
    try:
        info = HfApi(endpoint=endpoint).dataset_info(spec.repo, revision="main")
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"the hub at {endpoint or 'huggingface.co'} has no dataset {spec.repo}") from None
    except Exception as err:  # the transport's errors are not OSErrors
        raise unreachable(endpoint or "https://huggingface.co", err, f"the {name} corpus") from None
    found = sorted((spec.order(s.rfilename), s.rfilename) for s in info.siblings or () if spec.order(s.rfilename))
    if not found:
        raise FileNotFoundError(f"{spec.repo} on the hub has no files for the {name} corpus ({spec.folder or '*.txt'})")
    paths = [path for _, path in found]
    atomic_write_text(saved, json.dumps({"repo": spec.repo, "commit": info.sha, "files": paths}, indent=1))
    return info.sha, paths


def _hub_file(name: str, repo: str, commit: str, path: str, download: bool | None) -> Path:
    """One file of a hub corpus: from the cache, else fetched (resumed by huggingface_hub if the connection drops)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    where = dict(repo_id=repo, filename=path, repo_type="dataset", revision=commit, cache_dir=cache_dir() / "hub")
    try:
        return Path(hf_hub_download(**where, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    if not may_download(download):
        raise missing(f"{path} of the {name} text corpus (for key statistics) is not cached", name, download)
    try:
        return Path(hf_hub_download(**where, endpoint=hub_endpoint()))
    except Exception as err:
        raise unreachable(hub_endpoint() or "https://huggingface.co", err, f"the {name} corpus") from None


def fetch_corpus(name: str) -> list[Path]:
    """`jrome data fetch <corpus>`: the corpus's files, in order, until they hold FETCH_ROWS rows (all of a local one)."""
    import pyarrow.parquet as pq

    corpus = open_corpus(name, download=True)
    out: list[Path] = []
    rows = 0
    for path in corpus.files():
        out.append(path)
        rows += pq.ParquetFile(path).metadata.num_rows if path.suffix == ".parquet" else 0
        if rows >= FETCH_ROWS:
            break
    return out
