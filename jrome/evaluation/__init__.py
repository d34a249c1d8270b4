"""Evaluating edits as the original's evaluation code does: datasets, metrics, methods, and a resumable runner."""

from .consistency import Vectorizer, load_references, tfidf_similarity
from .datasets import DATASETS, EditCase, load_dataset
from .fluency import generate_texts, generation_entropy, ngram_entropy
from .methods import METHODS, Method
from .metrics import counterfact_nlls, counterfact_scores, score_targets, zsre_correct, zsre_scores
from .runner import run_eval
from .summary import markdown_table, summarise
from .words import word_tokenize

__all__ = [
    "DATASETS", "METHODS", "EditCase", "Method", "Vectorizer", "counterfact_nlls", "counterfact_scores",
    "generate_texts", "generation_entropy", "load_dataset", "load_references", "markdown_table", "ngram_entropy",
    "run_eval", "score_targets", "summarise", "tfidf_similarity", "word_tokenize", "zsre_correct", "zsre_scores",
]  # fmt: skip
