"""The paper's probability metrics, as the original's evaluation code computes them.

CounterFact (`eval_utils_counterfact.test_batch_prediction`): the NLL of " target_new" and of " target_true"
after each prompt, as the mean over the target's tokens of -log p (teacher forcing). zsRE
(`eval_utils_zsre`): whether each token of the answer is the argmax after the prompt and the answer's
earlier tokens. Per-case scores follow `summarize.py`. Targets are scored in padded batches inside jit: one
forward per batch of (prompt, target) pairs, with logits computed only at the target positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ..editing.undo import RankOne, row_edits
from ..interventions import Interventions, RowEdits
from ..models.config import ModelConfig
from ..models.forward import forward_tokens
from ..models.lm import LM
from ..tokens import pad_id, padded_width

BATCH = 16
GROUPS = ("rewrite", "paraphrase", "neighborhood")  # the original's prompt groups, in its order


def target_token_scores(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    """From logits [B, P, V] at the target slots and the targets [B, P]: each target's log-prob, and whether it
    is the argmax (teacher-forced token accuracy)."""
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    return picked, jnp.argmax(logits, axis=-1) == targets


@partial(jax.jit, static_argnums=0)
def _token_scores(cfg: ModelConfig, params: dict, ids, mask, cols, targets, row_edits: RowEdits | None):
    iv = Interventions(row_edits=row_edits)
    return target_token_scores(forward_tokens(cfg, params, ids, mask, iv, cols).logits, targets)


def target_ids(lm: LM, target: str) -> list[int]:
    """Token ids of an answer as it follows a prompt: f" {target}", as the original tokenises it."""
    ids = lm.tokenizer(f" {target}", add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"target {target!r} tokenises to nothing")
    return ids


def token_scores(
    lm: LM, prompts: Sequence[str], targets: Sequence[str], edits: Sequence[RankOne | None] | None = None
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per (prompt, target) pair: each target token's log-prob and whether it is the argmax, given the prompt
    and the target's earlier tokens (prompt and target tokenised apart; the original reads the target's own
    tokens after the prompt's, see docs/evaluation.md).

    edits: per pair, the rank-one edit of lm it is scored on (None: lm itself), so that the pairs of several
    edited models share forwards. Batches are padded to multiples of 8 tokens and of BATCH rows, so repeated
    calls reuse compiled code.
    """
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    if edits is not None and len(edits) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(edits)} edits")
    like = next((e for e in edits or () if e is not None), None)  # the edits' layers and shapes
    answers = [target_ids(lm, t) for t in targets]
    rows = [lm.tokenizer(p)["input_ids"] + a[:-1] for p, a in zip(prompts, answers, strict=True)]
    log_probs: list[np.ndarray] = []
    hits: list[np.ndarray] = []
    pad = pad_id(lm.tokenizer)
    for start in range(0, len(rows), BATCH):
        chunk, ans = rows[start : start + BATCH], answers[start : start + BATCH]
        width, n_out = padded_width(max(map(len, chunk)), 8), padded_width(max(map(len, ans)), 4)
        ids = np.full((BATCH, width), pad, np.int32)
        mask = np.zeros((BATCH, width), np.int32)
        cols = np.full((BATCH, n_out), width - 1, np.int32)
        tgt = np.zeros((BATCH, n_out), np.int32)
        for i, (r, a) in enumerate(zip(chunk, ans, strict=True)):
            ids[i, width - len(r) :], mask[i, width - len(r) :] = r, 1
            cols[i, : len(a)] = np.arange(width - len(a), width)
            tgt[i, : len(a)] = a
        per_row = None
        if like is not None:
            chunk_edits = list(edits[start : start + BATCH])
            per_row = row_edits(chunk_edits + [None] * (BATCH - len(chunk_edits)), like)
        scores = _token_scores(lm.config, lm.params, ids, mask, cols, tgt, per_row)
        picked, argmax_hits = (np.asarray(x) for x in scores)
        log_probs += [picked[i, : len(a)].astype(np.float64) for i, a in enumerate(ans)]
        hits += [argmax_hits[i, : len(a)] for i, a in enumerate(ans)]
    return log_probs, hits


def score_targets(lm: LM, prompts: Sequence[str], targets: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(mean token log-prob of each target after its prompt, fraction of its tokens predicted by argmax)."""
    log_probs, hits = token_scores(lm, prompts, targets)
    return np.array([lp.mean() for lp in log_probs]), np.array([h.mean() for h in hits])


def _counterfact_pairs(case) -> tuple[list[str], list[str]]:
    """The original's test_batch_prediction pairs: per group and prompt, (prompt, new object), (prompt, true one)."""
    prompts, targets = [], []
    groups = _group_prompts(case)
    for group in GROUPS:
        for i, prompt in enumerate(groups[group]):
            true = case.neighborhood_answers[i] if group == "neighborhood" else case.target_true
            prompts += [prompt, prompt]
            targets += [case.request.target_new, true]
    return prompts, targets


def _group_prompts(case) -> dict[str, list[str]]:
    """A CounterFact case's prompts per group, in the original's order."""
    return {
        "rewrite": [case.request.text],
        "paraphrase": list(case.paraphrase_prompts),
        "neighborhood": list(case.neighborhood_prompts),
    }


def _counterfact_nlls(case, log_probs: list[np.ndarray], _) -> dict[str, list[dict[str, float]]]:
    """The mean NLL of each pair of `_counterfact_pairs`, back in their groups."""
    nll = iter([-float(lp.mean()) for lp in log_probs])
    return {g: [{"target_new": next(nll), "target_true": next(nll)} for _ in _group_prompts(case)[g]] for g in GROUPS}


def _zsre_pairs(case) -> tuple[list[str], list[str]]:
    """A zsRE case's pairs: the question and each paraphrase with the new answer, each neighbour with its own."""
    prompts = [case.request.text, *case.paraphrase_prompts, *case.neighborhood_prompts]
    targets = [case.request.target_new] * (1 + len(case.paraphrase_prompts)) + list(case.neighborhood_answers)
    return prompts, targets


def _zsre_correct(case, _, hits: list[np.ndarray]) -> dict[str, list[bool]]:
    """The argmax hits of each pair of `_zsre_pairs`, flattened per group."""
    n_para = len(case.paraphrase_prompts)
    flat = [[bool(x) for h in part for x in h] for part in (hits[:1], hits[1 : 1 + n_para], hits[1 + n_para :])]
    return dict(zip(GROUPS, flat, strict=True))


def case_probabilities(lm: LM, cases: Sequence, edits: Sequence[RankOne | None] | None = None) -> list[dict]:
    """Each case's raw probability results — CounterFact: `counterfact_nlls`; zsRE: `zsre_correct` — with the
    (prompt, target) pairs of all cases scored in shared forwards; case i on lm edited by edits[i] (None: lm)."""
    edits = [None] * len(cases) if edits is None else list(edits)
    if len(edits) != len(cases):
        raise ValueError(f"{len(cases)} cases but {len(edits)} edits")
    prompts, targets, per_pair, sizes = [], [], [], []
    for case, e in zip(cases, edits, strict=True):
        p, t = (_zsre_pairs if case.dataset == "zsre" else _counterfact_pairs)(case)
        prompts, targets, per_pair, sizes = prompts + p, targets + t, per_pair + [e] * len(p), sizes + [len(p)]
    log_probs, hits = token_scores(lm, prompts, targets, per_pair)
    out, start = [], 0
    for case, size in zip(cases, sizes, strict=True):
        collect = _zsre_correct if case.dataset == "zsre" else _counterfact_nlls
        out.append(collect(case, log_probs[start : start + size], hits[start : start + size]))
        start += size
    return out


def counterfact_nlls(lm: LM, case) -> dict[str, list[dict[str, float]]]:
    """The original's test_batch_prediction for one case: per group (rewrite, paraphrase, neighbourhood) and
    prompt, the mean NLL of the new and of the true object, from one batched scoring."""
    return case_probabilities(lm, [case])[0]


def counterfact_case_scores(nlls: dict[str, list[dict[str, float]]]) -> dict[str, float]:
    """summarize.py's per-case step: per group, the share of prompts where the new object has the strictly lower
    NLL (neighbourhood: the true one), and the mean of exp(-NLL_new) - exp(-NLL_true) (neighbourhood: reversed)."""
    names = {"rewrite": "efficacy", "paraphrase": "paraphrase", "neighborhood": "neighborhood"}
    out = {}
    for group, name in names.items():
        pairs = nlls.get(group) or []
        if not pairs:
            continue
        new = np.array([p["target_new"] for p in pairs])
        true = np.array([p["target_true"] for p in pairs])
        if group == "neighborhood":
            wins, gap = true < new, np.exp(-true) - np.exp(-new)
        else:
            wins, gap = true > new, np.exp(-new) - np.exp(-true)
        out[f"{name}_score"], out[f"{name}_magnitude"] = float(np.mean(wins)), float(np.mean(gap))
    return out


def counterfact_scores(lm: LM, case) -> dict[str, float]:
    """Efficacy, paraphrase and neighbourhood scores and magnitudes of one case."""
    return counterfact_case_scores(counterfact_nlls(lm, case))


def zsre_correct(lm: LM, case) -> dict[str, list[bool]]:
    """The original's zsRE check for one case: for each token of the new answer after the question and after its
    paraphrases, and of loc_ans after the neighbourhood question, whether it is the argmax (teacher forcing)."""
    return case_probabilities(lm, [case])[0]


def zsre_case_scores(correct: dict[str, list[bool]]) -> dict[str, float]:
    """summarize.py's per-case step for zsRE: the mean token accuracy of each group."""
    names = {"rewrite": "edit_accuracy", "paraphrase": "paraphrase_accuracy", "neighborhood": "neighborhood_accuracy"}
    return {names[g]: float(np.mean(correct[g])) for g in GROUPS if correct.get(g)}


def zsre_scores(lm: LM, case) -> dict[str, float]:
    """zsRE token accuracy of the new answer on the question and its paraphrase, and of loc_ans on loc."""
    return zsre_case_scores(zsre_correct(lm, case))
