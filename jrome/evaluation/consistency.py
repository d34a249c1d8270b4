"""Consistency (RS): TF-IDF cosine between a case's generated texts and Wikipedia snippets about subjects that
truly have the new attribute, as the original's `tfidf_similarity` with its published vectorizer.

The reference texts are the attribute snippets for (relation_id, target_new id) (`attribute_snippets.json`);
the vectorizer is sklearn's TfidfVectorizer with its defaults (lower-casing, words of two or more word
characters, raw counts times idf, L2-normalised) and the published vocabulary and idf (`tfidf_vocab.json`,
`idf.npy`), reimplemented here with numpy.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..data import BASE_URL, fetch

FILES = {"attribute_snippets": "attribute_snippets.json", "idf": "idf.npy", "tfidf_vocab": "tfidf_vocab.json"}
SOURCE = f"{BASE_URL}/dsets/"
TOKEN = re.compile(r"(?u)\b\w\w+\b")  # TfidfVectorizer's default token_pattern


@dataclasses.dataclass(frozen=True)
class Vectorizer:
    """A fitted TF-IDF vectorizer: word -> column, and each column's idf."""

    vocabulary: dict[str, int]
    idf: np.ndarray

    def __post_init__(self) -> None:
        if self.vocabulary and max(self.vocabulary.values()) >= len(self.idf):
            raise ValueError(
                f"the TF-IDF vocabulary has columns up to {max(self.vocabulary.values())} but idf has {len(self.idf)}"
            )

    def transform(self, text: str) -> np.ndarray:
        """The text's TF-IDF vector: counts of vocabulary words times idf, scaled to unit length (zero if none)."""
        columns = [self.vocabulary[w] for w in TOKEN.findall(text.lower()) if w in self.vocabulary]
        v = np.bincount(np.asarray(columns, np.int64), minlength=len(self.idf)) * self.idf
        norm = np.linalg.norm(v)
        return v / norm if norm > 0 else v


def tfidf_similarity(text_a: str, text_b: str, vectorizer: Vectorizer) -> float:
    """Cosine of the two texts' TF-IDF vectors; NaN when either has no vocabulary word (0/0, as the original)."""
    a, b = vectorizer.transform(text_a), vectorizer.transform(text_b)
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norms) if norms > 0 else float("nan")


@dataclasses.dataclass(frozen=True)
class References:
    """What RS needs: the attribute snippets by (relation_id, target_id), and the vectorizer."""

    snippets: dict[tuple[str, str], list[str]]
    vectorizer: Vectorizer

    def score(self, texts: list[str], relation_id: str, target_id: str) -> float:
        """RS of one case: the generated texts joined against the joined snippets of its new attribute."""
        refs = self.snippets.get((relation_id, target_id))
        if not refs:
            raise ValueError(
                f"no attribute snippets for relation {relation_id!r} and object {target_id!r}: the original needs "
                "them for the consistency score"
            )
        return tfidf_similarity(" ".join(texts), " ".join(refs), self.vectorizer)


def load_references(folder: str | Path | None = None, *, download: bool | None = None) -> References:
    """The snippets and vectorizer from the folder, else from $JROME_DATA_DIR or the cache, fetched on first use
    (download: as jrome.data.fetch); FileNotFoundError names what is missing."""
    if folder is not None:
        paths = {name: Path(folder) / file for name, file in FILES.items()}
        missing = [FILES[name] for name, path in paths.items() if not path.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{', '.join(missing)} not in {folder} (the original's files, published at {SOURCE})"
            )
    else:
        paths = {name: fetch(name, download=download) for name in FILES}
    snippets: dict[tuple[str, str], list[str]] = defaultdict(list)
    for entry in json.loads(paths["attribute_snippets"].read_text()):
        for sample in entry["samples"]:
            snippets[(entry["relation_id"], entry["target_id"])].append(sample["text"])
    vocabulary = json.loads(paths["tfidf_vocab"].read_text())
    return References(dict(snippets), Vectorizer(vocabulary, np.load(paths["idf"])))
