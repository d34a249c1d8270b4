"""Evaluating edits: datasets, the paper's metrics, the methods compared, and a resumable runner."""

from .datasets import DATASETS, EditCase, load_dataset
from .metrics import counterfact_scores, ngram_entropy, score_targets, tfidf_similarity, zsre_scores
from .runner import METHODS, markdown_table, run_eval, summarise

__all__ = [
    "DATASETS", "METHODS", "EditCase", "counterfact_scores", "load_dataset", "markdown_table", "ngram_entropy",
    "run_eval", "score_targets", "summarise", "tfidf_similarity", "zsre_scores",
]  # fmt: skip
