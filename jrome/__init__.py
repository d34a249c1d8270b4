"""jrome: locate facts in a language model with causal tracing, and rewrite them with ROME — in JAX."""

from .interventions import CAPTURES, Interventions, Patch
from .models import LM, ForwardOutput, ModelConfig, forward, load
from .tokens import encode, subject_range

__version__ = "0.1.0"

__all__ = [
    "CAPTURES",
    "LM",
    "ForwardOutput",
    "Interventions",
    "ModelConfig",
    "Patch",
    "encode",
    "forward",
    "load",
    "subject_range",
]
