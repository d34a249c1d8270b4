"""Models: one config, one forward, and loaders that turn checkpoints into parameter trees."""

from .config import FAMILIES, ModelConfig, config_from_hf
from .forward import ForwardOutput, forward
from .lm import LM
from .loading import embedded_path, load

__all__ = ["FAMILIES", "LM", "ForwardOutput", "ModelConfig", "config_from_hf", "embedded_path", "forward", "load"]
