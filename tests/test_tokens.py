"""Batch tokenisation and subject spans, on the real SmolLM2 tokenizer."""

from __future__ import annotations

import numpy as np
import pytest

import jrome
from jrome.models.gguf import GGUFFile, tokenizer_from_gguf
from jrome.models.loading import embedded_path

PROMPT = "The Eiffel Tower is located in the city of"


@pytest.fixture(scope="module")
def tok():
    return tokenizer_from_gguf(GGUFFile(embedded_path()))


def test_encode_pads_left_by_default_and_right_on_request(tok):
    ids, mask = jrome.encode(tok, [PROMPT, "Hello"])
    n = len(tok(PROMPT)["input_ids"])
    assert ids.shape == mask.shape == (2, n)
    assert mask[1].tolist() == [0] * (n - 1) + [1]
    assert ids[1, -1] == tok("Hello")["input_ids"][0]
    ids_r, mask_r = jrome.encode(tok, [PROMPT, "Hello"], padding_side="right")
    assert mask_r[1].tolist() == [1] + [0] * (n - 1)
    np.testing.assert_array_equal(ids_r[0], ids[0])


@pytest.mark.parametrize(
    ("subject", "span"),
    [
        ("The Eiffel Tower", (0, 4)),
        ("Eiffel Tower", (1, 4)),
        (" Eiffel Tower", (1, 4)),
        ("Eiffel Tower ", (1, 4)),
        ("Eiff", (1, 3)),  # "Eiff" ends inside the token "iffel": the straddling token is part of the span
        ("city of", (8, 10)),
    ],
)
def test_subject_range(tok, subject, span):
    assert jrome.subject_range(tok, PROMPT, subject) == span


def test_subject_range_with_a_tokenizer_that_adds_bos(tmp_path, tok):
    from gguf_helpers import write_gguf_tokenizer_only

    path = write_gguf_tokenizer_only(tmp_path / "bos.gguf", add_bos=True)
    bos_tok = tokenizer_from_gguf(GGUFFile(path))
    ids = bos_tok(PROMPT)["input_ids"]
    assert ids[0] == bos_tok.bos_token_id and ids[1:] == tok(PROMPT)["input_ids"]
    assert jrome.subject_range(bos_tok, PROMPT, "The Eiffel Tower") == (1, 5)
    assert jrome.subject_range(bos_tok, PROMPT, "Tower") == (4, 5)


def test_subject_not_in_prompt_shows_the_tokens(tok):
    with pytest.raises(ValueError, match=r"not in the prompt.*'The', ' E', 'iffel'"):
        jrome.subject_range(tok, PROMPT, "The Louvre")


@pytest.mark.parametrize("subject", ["", "   "])
def test_empty_subject(tok, subject):
    with pytest.raises(ValueError, match="subject is empty"):
        jrome.subject_range(tok, PROMPT, subject)


def test_encode_rejects_bad_input(tok):
    with pytest.raises(ValueError, match="padding_side"):
        jrome.encode(tok, [PROMPT], padding_side="middle")
    with pytest.raises(ValueError, match="tokenises to nothing"):
        jrome.encode(tok, [PROMPT, ""])
