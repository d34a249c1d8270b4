"""Causal tracing: where in the network a fact's recall depends on the subject (paper §2)."""

from .causal import TraceResult, corrupt_and_clean, restore, restore_many, trace
from .noise import draw_noise, noise_scale, noise_std
from .runs import Runs, run_facts
from .schedule import KINDS, window_bounds

__all__ = [
    "KINDS",
    "Runs",
    "TraceResult",
    "corrupt_and_clean",
    "draw_noise",
    "noise_scale",
    "noise_std",
    "restore",
    "restore_many",
    "run_facts",
    "trace",
    "window_bounds",
]
