"""Words for the fluency metric, as `nltk.word_tokenize` (NLTK 3.6, the original's version) splits them, without
NLTK or its Punkt data: sentences first, then NLTK's improved Treebank rules within each sentence.

The Treebank rules are NLTK's, applied in its order. Sentence splitting stands in for Punkt's English model
(trained, with a learned list of abbreviations) with its main rules: a break after "?" or "!", and after a
period that ends a word unless the word is a common abbreviation or an initial, or a number followed by a
lower-case word; an ellipsis breaks only before a capital. docs/evaluation.md lists what still differs.
"""

from __future__ import annotations

import re

# (pattern, replacement) in NLTK's order: starting quotes, punctuation, brackets and dashes (then the text is
# padded with a space on each side), ending quotes and clitics, and the split contractions.
_BEFORE_PADDING = [
    (r"([«“‘„]|[`]+)", r" \1 "),
    (r'^"', r"``"),
    (r"(``)", r" \1 "),
    (r"""([ (\[{<])("|'{2})""", r"\1 `` "),
    (r"(?i)(')(?!re|ve|ll|m|t|s|d|n)(\w)\b", r"\1 \2"),
    (r"""([^.])(\.)([\])}>"'»”’ ]*)\s*$""", r"\1 \2 \3 "),
    (r"([:,])([^\d])", r" \1 \2"),
    (r"([:,])$", r" \1 "),
    (r"\.{2,}", r" \g<0> "),
    (r"[;@#$%&]", r" \g<0> "),
    (r"""([^.])(\.)([\])}>"']*)\s*$""", r"\1 \2\3 "),
    (r"[?!]", r" \g<0> "),
    (r"([^'])' ", r"\1 ' "),
    (r"[*]", r" \g<0> "),
    (r"[\][(){}<>]", r" \g<0> "),
    (r"--", r" -- "),
]
_AFTER_PADDING = [
    (r"([»”’])", r" \1 "),
    (r'"', r" '' "),
    (r"(\S)('')", r"\1 \2 "),
    (r"([^' ])('[sSmMdD]|') ", r"\1 \2 "),
    (r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) ", r"\1 \2 "),
    *[(r"(?i)\b(" + a + r")(" + b + r")\b", r" \1 \2 ") for a, b in
      [("can", "not"), ("d", "'ye"), ("gim", "me"), ("gon", "na"), ("got", "ta"), ("lem", "me"), ("more", "'n")]],
    (r"(?i)\b(wan)(na)\s", r" \1 \2 "),
    (r"(?i) ('t)(is)\b", r" \1 \2 "),
    (r"(?i) ('t)(was)\b", r" \1 \2 "),
]  # fmt: skip
_RULES = [(re.compile(p), r) for p, r in _BEFORE_PADDING], [(re.compile(p), r) for p, r in _AFTER_PADDING]

# Abbreviations after which a period does not end a sentence (a common subset of Punkt's English list).
ABBREVIATIONS = frozenset([
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "ft", "gen", "gov", "sen", "rep", "col", "lt", "capt",
    "sgt", "maj", "rev", "hon", "pres", "vs", "etc", "al", "inc", "ltd", "co", "corp", "bros", "dept", "univ",
    "assn", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "no", "nos", "vol",
    "pp", "fig", "approx", "ca", "est", "e.g", "i.e", "u.s", "u.k", "u.n", "a.m", "p.m", "ph.d", "d.c", "n.y", "l.a",
    "b.c", "a.d",
])  # fmt: skip
# A run of sentence-ending punctuation with its closing quotes and brackets, then space and the next word.
_CANDIDATE = re.compile(r"""(\S*?)([.?!]+)(["')\]}»”’]*)(\s+)(?=(\S))""")


def _ends_sentence(word: str, punct: str, following: str) -> bool:
    if "?" in punct or "!" in punct:
        return True
    if len(punct) > 1:  # an ellipsis
        return following[:1].isupper()
    base = word.lower().lstrip("\"'([{«“‘")
    if base in ABBREVIATIONS or base.rsplit("-", 1)[-1] in ABBREVIATIONS:
        return False
    if re.fullmatch(r"[^\W\d_]", base):  # an initial
        return False
    return not (re.fullmatch(r"[\d.,]*\d", base) and following[:1].islower())


def sentences(text: str) -> list[str]:
    """The text cut into sentences (Punkt's main rules; see the module's docstring)."""
    out, start = [], 0
    for m in _CANDIDATE.finditer(text):
        following = re.match(r"\S+", text[m.end() :]).group()
        if _ends_sentence(m.group(1), m.group(2), following):
            out.append(text[start : m.end(3)].strip())
            start = m.end()
    out.append(text[start:].strip())
    return [s for s in out if s]


def treebank_words(sentence: str) -> list[str]:
    """One sentence split by NLTK's improved Treebank rules (NLTKWordTokenizer.tokenize)."""
    before, after = _RULES
    for pattern, replacement in before:
        sentence = pattern.sub(replacement, sentence)
    sentence = f" {sentence} "
    for pattern, replacement in after:
        sentence = pattern.sub(replacement, sentence)
    return sentence.split()


def word_tokenize(text: str) -> list[str]:
    """Words and punctuation of a text, as nltk.word_tokenize splits them (up to Punkt; see the module)."""
    return [word for s in sentences(text) for word in treebank_words(s)]
