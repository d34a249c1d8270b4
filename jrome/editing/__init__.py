"""Editing facts: key statistics, ROME's rank-one edit, and its hyperparameters."""

from . import rome
from .hparams import RomeHparams, hparams_for, load_preset, presets
from .rome import Edit, Request, Undo, edit
from .stats import KeyStats, key_statistics

__all__ = [
    "Edit", "KeyStats", "Request", "RomeHparams", "Undo", "edit", "hparams_for", "key_statistics", "load_preset",
    "presets", "rome",
]  # fmt: skip
