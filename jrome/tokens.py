"""Tokenisation for batches of prompts, and where a subject's tokens lie inside a prompt."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np


def pad_id(tokenizer: Any) -> int:
    """The id used for padding: the tokenizer's pad token, else its end-of-sequence token, else 0."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def padded_width(length: int, multiple_of: int = 1) -> int:
    """`length` rounded up to a multiple: padding shapes to a few sizes lets jitted code be reused."""
    return -(-length // multiple_of) * multiple_of


def spaced(answer: str) -> str:
    """An answer as it follows a prompt, with a leading space: "Rome" is scored as " Rome", as the original scores
    its targets (BPE vocabularies give the two different tokens)."""
    return answer if answer[:1].isspace() else " " + answer


def one_start(tokenizer: Any, ids: list[int]) -> list[int]:
    """ids with one start token where a tokenizer that adds its BOS met a text that begins with it ("<s>" sampled
    from, as ROME's context templates are): two start tokens would be a prompt no model was trained on."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return ids[1:] if bos is not None and len(ids) > 1 and ids[0] == ids[1] == bos else ids


def encode(
    tokenizer: Any, texts: str | Sequence[str], *, padding_side: str = "left", multiple_of: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention mask [B, T] for a batch of texts, padded on the left (default) or right.

    Left padding keeps every prompt's last token in the last column, which is where next-token logits
    are read; positions are derived from the mask, so padding never shifts a real token's position. A text that
    begins with the BOS a tokenizer adds itself keeps one (`one_start`).
    multiple_of rounds T up (e.g. 8), so batches of slightly different lengths share compiled code.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side={padding_side!r}; accepted: 'left', 'right'")
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise ValueError("no texts to encode")
    rows = [one_start(tokenizer, tokenizer(t)["input_ids"]) for t in texts]
    empty = [t for t, r in zip(texts, rows, strict=True) if not r]
    if empty:
        raise ValueError(f"text {empty[0]!r} tokenises to nothing")
    width = padded_width(max(len(r) for r in rows), multiple_of)
    ids = np.full((len(rows), width), pad_id(tokenizer), np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        cols = slice(width - len(r), width) if padding_side == "left" else slice(0, len(r))
        ids[i, cols] = r
        mask[i, cols] = 1
    return ids, mask


def token_strings(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Each token decoded on its own, for display."""
    return [tokenizer.decode([int(i)]) for i in ids]


def check_prompt_end(prompt: str) -> None:
    """A prompt is continued by its next token, which carries its own leading space (" Paris"): a prompt ending in
    whitespace would be scored on a token after the space, where the answer cannot come. Such a prompt is an error."""
    if prompt != prompt.rstrip():
        raise ValueError(
            f"the prompt {prompt!r} ends with whitespace; remove it (the answer's token brings its own space)"
        )


def subject_range(tokenizer: Any, prompt: str, subject: str) -> tuple[int, int]:
    """The [start, end) token span of `subject` (its first occurrence, with a warning if there are more) in the
    tokenised `prompt`, which must not end with a space (see check_prompt_end).

    Works from character offsets, so a leading space, a BPE token that straddles the subject's edge and a
    BOS the tokenizer adds are all handled: every token that overlaps the subject's characters is in the span.
    """
    needle = subject.strip() if isinstance(subject, str) else ""
    if not needle:
        raise ValueError(f"the subject is empty (got {subject!r}); give the words of the prompt it refers to")
    check_prompt_end(prompt)
    if prompt.count(needle) > 1:
        warnings.warn(
            f"subject {needle!r} occurs {prompt.count(needle)} times in {prompt!r}; the first is the subject (as in "
            "the original)",
            stacklevel=2,
        )
    enc = tokenizer(prompt, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    first = prompt.find(needle)
    if first < 0:
        raise ValueError(
            f"subject {needle!r} is not in the prompt {prompt!r}; the prompt's tokens are "
            f"{token_strings(tokenizer, ids)}"
        )
    last = first + len(needle)
    hits = [i for i, (a, b) in enumerate(offsets) if b > a and a < last and b > first]
    return hits[0], hits[-1] + 1


FACT_TOKENS = ("subject_last", "subject_first", "last")


def placeholder_span(tokenizer: Any, template: str, subject: str) -> tuple[int, int]:
    """The [start, end) token span of `subject` written where `template` has its "{}".

    The original code finds the subject by the position of the placeholder, not by searching the text, so a
    context prefix that happens to contain the subject does not move it. Every token overlapping the subject's
    characters is in the span (a leading space and a BOS the tokenizer adds are handled as in subject_range).
    """
    if template.count("{}") != 1:
        raise ValueError(f"the template must contain '{{}}' exactly once where the subject goes; got {template!r}")
    needle = subject.strip()
    if not needle:
        raise ValueError(f"the subject is empty (got {subject!r}); give the words of the prompt it refers to")
    at = template.index("{}")
    text = template[:at] + subject + template[at + 2 :]
    first = at + len(subject) - len(subject.lstrip())
    last = first + len(needle)
    enc = tokenizer(text, return_offsets_mapping=True)
    hits = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a < last and b > first]
    if not hits:
        raise ValueError(f"subject {needle!r} covers no token of {text!r}")
    return hits[0], hits[-1] + 1


def fact_index(tokenizer: Any, template: str, subject: str, fact_token: str) -> int:
    """Token index, in the filled-in template, where ROME reads the key and writes the value (paper: the subject's
    last token). fact_token: "subject_last", "subject_first", or "last" (the prompt's last token)."""
    if fact_token not in FACT_TOKENS:
        raise ValueError(f"fact_token={fact_token!r}; accepted: {', '.join(FACT_TOKENS)}")
    start, end = placeholder_span(tokenizer, template, subject)
    if fact_token == "subject_last":
        return end - 1
    if fact_token == "subject_first":
        return start
    return len(tokenizer(template.replace("{}", subject))["input_ids"]) - 1
