"""Generation metrics' texts and fluency (GE), as the original's `generate_fast` and `compute_n_gram_entropy`.

Each prompt is continued by top-5 sampling until prompt and continuation are `max_out_len` tokens together
(100 in the original's evaluation), with no stop at the end-of-text token; the text is the whole sequence
decoded, NFKD-normalised, blank lines joined and "<|endoftext|>" removed. Fluency is the weighted mean of
the bi- and trigram entropies (bits; weights 2/3 and 4/3) of that text's words, averaged over the texts.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

from ..generation import generate_fast
from ..models.lm import LM
from .words import word_tokenize

MAX_OUT_LEN = 100
TOP_K = 5


def generate_texts(
    lm: LM, prompts: Sequence[str], max_out_len: int = MAX_OUT_LEN, *, top_k: int = TOP_K, seed: int = 0
) -> list[str]:
    """The texts fluency and consistency are measured on: generate_fast to max_out_len tokens, prompt included."""
    return generate_fast(lm, prompts, max_out_len, top_k=top_k, seed=seed)


def ngram_entropy(text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """The original's compute_n_gram_entropy: the mean over n of weight_n times the entropy (bits) of the text's
    word n-grams (0 when the text has fewer than n words)."""
    words = word_tokenize(text)
    weighted = []
    for n, w in zip(ns, weights, strict=True):
        counts = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        total = sum(counts.values())
        weighted.append(w * -sum(c / total * math.log2(c / total) for c in counts.values()))
    return float(np.mean(weighted))


def generation_entropy(texts: Sequence[str]) -> float:
    """The original's n_gram_entropy: the mean n-gram entropy of the texts."""
    return float(np.mean([ngram_entropy(t) for t in texts]))
