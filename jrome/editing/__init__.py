"""Editing facts: requests, context templates, keys and key statistics, the v* search, ROME's rank-one edit,
MEMIT, AlphaEdit, streams of batches (sequential), fine-tuning baselines, and their hyperparameters."""

from . import alphaedit, memit, rome, sequential
from .hparams import AlphaEditHparams, MemitHparams, RomeHparams, hparams_for, load_preset, presets
from .published import read_layer_stats
from .requests import Request
from .rome import Edit, edit
from .solver import KeyStats
from .stats import key_statistics
from .undo import Undo

__all__ = [
    "AlphaEditHparams", "Edit", "KeyStats", "MemitHparams", "Request", "RomeHparams", "Undo", "alphaedit", "edit",
    "hparams_for", "key_statistics", "load_preset", "memit", "presets", "read_layer_stats", "rome", "sequential",
]  # fmt: skip
