"""Context templates: short texts the model writes itself, put before a prompt so that ROME's key k* and value
v* hold in many contexts, not only after the bare prompt.

Both schemes follow the original code:

* ROME (`rome_main.get_context_templates`): "{}" plus, for each (length, count), `count` samples of `length`
  tokens — the start-of-text token counted — drawn with top-5 sampling from the start-of-text token alone.
* MEMIT (`memit_main.get_context_templates`): two groups, ["{}"] and one sample of 10 tokens from each of the
  starters "The", "Therefore", "Because", "I", "You" (the starter's tokens counted); keys are averaged within
  each group, then over the groups (`compute_ks`).

Every sample is decoded whole and cleaned as the original's generate_fast cleans it (NFKD, blank lines joined,
"<|endoftext|>" removed); braces are removed and ". {}" appended. The start-of-text token is "<|endoftext|>" where the vocabulary has it as one token (GPT-2,
GPT-J, GPT-NeoX, SmolLM2: what the original feeds), else the tokenizer's BOS, else its EOS. Sampling is seeded;
PyTorch's sampler draws other numbers, so the texts differ from the original's while their distribution
does not. Templates are cached per model name, configuration, scheme and seed, like the original's
process-wide cache: an edited model keeps the templates its unedited version wrote.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ..generation import generate_fast, sample_to_length, tidy
from ..models.lm import LM

MEMIT_STARTERS = ("The", "Therefore", "Because", "I", "You")
MEMIT_LENGTH = 10
TOP_K = 5

_CACHE: dict[tuple, tuple] = {}


def start_text(tokenizer) -> str:
    """The text whose single token starts ROME's samples: "<|endoftext|>" if the vocabulary has it, else BOS/EOS."""
    if len(tokenizer("<|endoftext|>", add_special_tokens=False)["input_ids"]) == 1:
        return "<|endoftext|>"
    for token in (tokenizer.bos_token, tokenizer.eos_token):
        if token is not None:
            return token
    raise ValueError("the tokenizer has no start-of-text, BOS or EOS token to sample context templates from")


def sample_texts(lm: LM, prompts: Sequence[str], length: int, seed: int) -> list[str]:
    """The original's samples: generate_fast to `length` tokens, start token included, top-5. Where the start is a
    BOS rather than "<|endoftext|>" (which generate_fast's clean-up removes), the sample is decoded from after its
    start token (one: `tokens.one_start`), so no start token stays in a template's text."""
    tok = lm.tokenizer
    start = start_text(tok)
    if start == "<|endoftext|>":
        return generate_fast(lm, prompts, length, top_k=TOP_K, seed=seed)
    starts = {tok.bos_token_id, tok.convert_tokens_to_ids(start)} - {None}
    rows = sample_to_length(lm, prompts, length, top_k=TOP_K, seed=seed)
    return [tidy(tok.decode(row[1:] if row and row[0] in starts else row, skip_special_tokens=False)) for row in rows]


def as_template(text: str) -> str:
    """A sampled text as a template: braces removed (they would be read as placeholders), then ". {}"."""
    return text.replace("{", " ").replace("}", " ") + ". {}"


def rome_templates(
    lm: LM, length_params: Sequence[Sequence[int]], seed: int = 0, progress: bool = False
) -> tuple[str, ...]:
    """ROME's templates: "{}" and `count` samples of `length` tokens from the start-of-text token, per pair."""
    key = ("rome", lm.name, lm.config, tuple(map(tuple, length_params)), seed)
    if key not in _CACHE:
        if progress:
            count = sum(int(c) for _, c in length_params)
            print(f"sampling {count} ROME context templates from the model (kept for this model in this process)",
                  file=sys.stderr, flush=True)  # fmt: skip
        start = start_text(lm.tokenizer)
        templates = ["{}"]
        for length, count in length_params:
            templates += [as_template(t) for t in sample_texts(lm, [start] * int(count), int(length), seed)]
        _CACHE[key] = tuple(templates)
    return _CACHE[key]


def memit_templates(lm: LM, seed: int = 0, progress: bool = False) -> tuple[tuple[str, ...], ...]:
    """MEMIT's template groups: ("{}",) and one 10-token sample from each of its five starters."""
    key = ("memit", lm.name, lm.config, seed)
    if key not in _CACHE:
        if progress:
            print("sampling 5 MEMIT context templates from the model (kept for this model in this process)",
                  file=sys.stderr, flush=True)  # fmt: skip
        samples = sample_texts(lm, list(MEMIT_STARTERS), MEMIT_LENGTH, seed)
        _CACHE[key] = (("{}",), tuple(as_template(t) for t in samples))
    return _CACHE[key]


def template_groups(templates: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    """Explicit MEMIT templates as the original groups them: "{}" on its own, the rest together."""
    rest = tuple(t for t in templates if t != "{}")
    return (("{}",), rest) if "{}" in templates and rest else (tuple(templates),)
