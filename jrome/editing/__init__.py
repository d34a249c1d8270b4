"""Editing facts: key statistics, ROME's rank-one edit, and its hyperparameters."""

from . import memit, rome
from .hparams import MemitHparams, RomeHparams, hparams_for, load_preset, presets
from .rome import Edit, Request, Undo, edit
from .stats import KeyStats, key_statistics

__all__ = [
    "Edit", "KeyStats", "MemitHparams", "Request", "RomeHparams", "Undo", "edit", "hparams_for", "key_statistics", "load_preset",
    "memit", "presets", "rome",
]  # fmt: skip
