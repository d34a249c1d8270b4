"""Models: one config, one forward, and loaders that turn checkpoints into parameter trees."""

from .checkpoint import export_hf, save
from .config import FAMILIES, ModelConfig, config_from_hf
from .forward import ForwardOutput, forward
from .lm import LM
from .loading import embedded_path, load

__all__ = [
    "FAMILIES", "LM", "ForwardOutput", "ModelConfig", "config_from_hf", "embedded_path", "export_hf", "forward", "load",
    "save",
]  # fmt: skip
