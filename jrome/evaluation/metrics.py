"""The paper's metrics: CounterFact efficacy, paraphrase and neighbourhood scores and magnitudes, fluency
(n-gram entropy of generations), consistency (TF-IDF reference score), and zsRE token accuracies.

Targets are scored with teacher forcing in padded batches inside jit: one forward per batch of
(prompt, target) pairs, with logits computed only at the target positions.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ..interventions import Interventions
from ..models.config import ModelConfig
from ..models.forward import forward_tokens
from ..models.lm import LM
from ..tokens import pad_id

BATCH = 16


def _bucket(n: int, step: int = 8) -> int:
    return -(-n // step) * step


def target_totals(logits: jax.Array, targets: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """From logits [B, P, V] at the target slots: per row, the sum of the targets' log-probs and the number of
    targets that are the argmax (teacher-forced token accuracy), counting only valid slots."""
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    hits = jnp.argmax(logits, axis=-1) == targets
    return jnp.sum(jnp.where(valid, picked, 0.0), axis=1), jnp.sum(hits & valid, axis=1)


@partial(jax.jit, static_argnums=0)
def _target_scores(cfg: ModelConfig, params: dict, ids, mask, cols, targets, valid):
    return target_totals(forward_tokens(cfg, params, ids, mask, Interventions(), cols).logits, targets, valid)


def target_ids(lm: LM, target: str) -> list[int]:
    """Token ids of an answer as it follows a prompt (with one leading space)."""
    return lm.tokenizer(" " + target.strip(), add_special_tokens=False)["input_ids"]


def score_targets(lm: LM, prompts: Sequence[str], targets: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(mean token log-prob of each target after its prompt, fraction of its tokens predicted by argmax).

    Batches are padded to multiples of 8 tokens and of BATCH rows, so repeated calls reuse compiled code.
    """
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    rows, answers = [], []
    for prompt, target in zip(prompts, targets, strict=True):
        t = target_ids(lm, target)
        if not t:
            raise ValueError(f"target {target!r} tokenises to nothing")
        rows.append(lm.tokenizer(prompt)["input_ids"] + t[:-1])
        answers.append(t)
    mean_lp, acc = np.zeros(len(rows)), np.zeros(len(rows))
    pad = pad_id(lm.tokenizer)
    for start in range(0, len(rows), BATCH):
        chunk, ans = rows[start : start + BATCH], answers[start : start + BATCH]
        width, n_out = _bucket(max(map(len, chunk))), _bucket(max(map(len, ans)), 4)
        ids = np.full((BATCH, width), pad, np.int32)
        mask = np.zeros((BATCH, width), np.int32)
        cols = np.full((BATCH, n_out), width - 1, np.int32)
        tgt = np.zeros((BATCH, n_out), np.int32)
        valid = np.zeros((BATCH, n_out), bool)
        for i, (r, a) in enumerate(zip(chunk, ans, strict=True)):
            ids[i, width - len(r) :], mask[i, width - len(r) :] = r, 1
            cols[i, : len(a)] = np.arange(width - len(a), width)
            tgt[i, : len(a)], valid[i, : len(a)] = a, True
        total, hits = _target_scores(lm.config, lm.params, ids, mask, cols, tgt, valid)
        n = np.asarray([len(a) for a in ans])
        mean_lp[start : start + len(chunk)] = np.asarray(total)[: len(chunk)] / n
        acc[start : start + len(chunk)] = np.asarray(hits)[: len(chunk)] / n
    return mean_lp, acc


def compare(new_lp: np.ndarray, true_lp: np.ndarray) -> tuple[float, float]:
    """(fraction of prompts where the new object is more likely, mean P(new) - P(true)); P = exp(mean log-prob)."""
    return float(np.mean(new_lp > true_lp)), float(np.mean(np.exp(new_lp) - np.exp(true_lp)))


def counterfact_scores(lm: LM, case) -> dict[str, float]:
    """Efficacy, paraphrase and neighbourhood scores and magnitudes for one case, from one batched scoring."""
    groups = {
        "efficacy": [case.request.text],
        "paraphrase": list(case.paraphrase_prompts),
        "neighborhood": list(case.neighborhood_prompts),
    }
    prompts, news, trues = [], [], []
    for name, ps in groups.items():
        for i, p in enumerate(ps):
            true = case.neighborhood_answers[i] if name == "neighborhood" else case.target_true
            prompts += [p, p]
            news.append(case.request.target_new)
            trues.append(true)
    targets = [t for pair in zip(news, trues, strict=True) for t in pair]
    lp, _ = score_targets(lm, prompts, targets)
    new_lp, true_lp = lp[0::2], lp[1::2]
    out, at = {}, 0
    for name, ps in groups.items():
        n, p = len(ps), slice(at, at + len(ps))
        at += n
        if not n:
            continue
        if name == "neighborhood":
            score, magnitude = compare(true_lp[p], new_lp[p])
        else:
            score, magnitude = compare(new_lp[p], true_lp[p])
        out[f"{name}_score"], out[f"{name}_magnitude"] = score, magnitude
    return out


def zsre_scores(lm: LM, case) -> dict[str, float]:
    """zsRE token accuracy of the new answer on the question and its paraphrase, and of the unrelated answer."""
    prompts = [case.request.text, *case.paraphrase_prompts, *case.neighborhood_prompts]
    targets = [case.request.target_new] * (1 + len(case.paraphrase_prompts)) + list(case.neighborhood_answers)
    _, acc = score_targets(lm, prompts, targets)
    n_para = len(case.paraphrase_prompts)
    return {
        "edit_accuracy": float(acc[0]),
        "paraphrase_accuracy": float(np.mean(acc[1 : 1 + n_para])),
        "specificity": float(np.mean(acc[1 + n_para :])),
    }


WORDS = re.compile(r"\w+|[^\w\s]")


def ngram_entropy(text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """Fluency: weighted mean of the bi- and tri-gram entropies (bits) of a text's words, as in the paper."""
    words = WORDS.findall(text.lower())
    entropies = []
    for n, w in zip(ns, weights, strict=True):
        grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        total = sum(grams.values())
        h = -sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0
        entropies.append(w * h)
    return float(np.mean(entropies))


def tfidf_similarity(texts: Sequence[str], references: Sequence[str]) -> float:
    """Consistency: cosine similarity of the TF-IDF vectors of the generated texts and the reference texts.

    The inverse document frequencies come from the documents being compared (every text and reference).
    """
    docs = [Counter(WORDS.findall(t.lower())) for t in [*texts, *references]]
    df = Counter(word for d in docs for word in d)
    idf = {w: math.log((1 + len(docs)) / (1 + n)) + 1 for w, n in df.items()}

    def vector(counters: Sequence[Counter]) -> dict[str, float]:
        total: Counter = Counter()
        for c in counters:
            total.update(c)
        v = {w: n * idf[w] for w, n in total.items()}
        norm = math.sqrt(sum(x * x for x in v.values())) or 1.0
        return {w: x / norm for w, x in v.items()}

    a, b = vector(docs[: len(texts)]), vector(docs[len(texts) :])
    return float(sum(x * b.get(w, 0.0) for w, x in a.items()))
