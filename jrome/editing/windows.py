"""Reading a corpus for key statistics: by tokens (the corpus text as one stream, cut into fixed-length windows, no
padding) or by samples (the original's `layer_stats`: records chosen at random with seed 1, each truncated to the
model's context, padded in batches whose padding is masked out)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from ..corpus import Corpus
from ..tokens import padded_width


def corpus_windows(tokenizer, pieces: Iterable[str], n_tokens: int, window: int) -> np.ndarray:
    """[n, window] token ids: the corpus text (`Corpus.pieces()`, newlines included) tokenised as one stream and cut
    into full windows; pieces are read only until enough tokens are there."""
    stream: list[int] = []
    need = -(-n_tokens // window) * window
    for piece in pieces:
        stream.extend(tokenizer(piece, add_special_tokens=False)["input_ids"])
        if len(stream) >= need:
            break
    n = min(len(stream), need) // window
    if n == 0:
        raise ValueError(f"the corpus has fewer than {window} tokens")
    return np.asarray(stream[: n * window], np.int32).reshape(n, window)


def corpus_records(corpus: Corpus, n_samples: int, seed: int = 1) -> list[str]:
    """n_samples records of the corpus: of a local one, all of them or a random n_samples (seed 1, as the original's
    sampler; PyTorch draws another subset); of one streamed from the hub, the first n_samples (the original samples
    all of Wikipedia, which would mean fetching all of it)."""
    if corpus.streamed:
        return list(itertools.islice(corpus.records(), n_samples))
    records = list(corpus.records())
    if n_samples < len(records):
        chosen = np.random.RandomState(seed).permutation(len(records))[:n_samples]
        records = [records[i] for i in sorted(chosen)]
    return records


def record_batches(
    tokenizer, records: Sequence[str], max_len: int, batch_tokens: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, mask) [B, W]: records tokenised and truncated to max_len, sorted by length and right-padded to W, a
    multiple of 64 (so few shapes compile), with B·W at most batch_tokens (or one record)."""
    rows = [ids[:max_len] for ids in tokenizer(list(records), add_special_tokens=True)["input_ids"] if ids]
    rows.sort(key=len, reverse=True)
    i = 0
    while i < len(rows):
        width = min(padded_width(len(rows[i]), 64), padded_width(max_len, 64))
        count = max(1, batch_tokens // width)
        chunk = rows[i : i + count]
        ids = np.zeros((len(chunk), width), np.int32)
        mask = np.zeros((len(chunk), width), np.int32)
        for j, r in enumerate(chunk):
            ids[j, : len(r)], mask[j, : len(r)] = r, 1
        yield ids, mask
        i += len(chunk)
