"""jrome: locate facts in a language model with causal tracing, and rewrite them with ROME — in JAX."""

from . import compilation, editing, tracing
from .editing import memit, rome
from .interventions import CAPTURES, Interventions, Patch, RowEdits
from .models import LM, ForwardOutput, ModelConfig, export_hf, forward, load, save
from .tokens import encode, subject_range
from .tracing import trace

__version__ = "0.1.0"

__all__ = [
    "CAPTURES",
    "compilation",
    "editing",
    "export_hf",
    "memit",
    "rome",
    "save",
    "trace",
    "tracing",
    "LM",
    "ForwardOutput",
    "Interventions",
    "ModelConfig",
    "Patch",
    "RowEdits",
    "encode",
    "forward",
    "load",
    "subject_range",
]
