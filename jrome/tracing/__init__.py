"""Causal tracing: where in the network a fact's recall depends on the subject (paper §2)."""

from .causal import Runs, TraceResult, corrupt_and_clean, draw_noise, noise_scale, noise_std, restore, trace
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
    "trace",
    "window_bounds",
]
