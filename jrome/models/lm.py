"""The `LM` value: config, parameters and tokenizer of one language model."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import struct

from .config import ModelConfig


@struct.dataclass
class LM:
    """A language model as a value: a static config, a parameter pytree, and the tokenizer that goes with it.

    It is a pytree whose only leaves are the parameters, so it passes through jit, vmap and grad; an edit
    returns a new LM with new parameters and leaves this one as it was.
    """

    config: ModelConfig = struct.field(pytree_node=False)
    params: dict = struct.field(pytree_node=True)
    tokenizer: Any = struct.field(pytree_node=False, default=None)
    name: str = struct.field(pytree_node=False, default="")

    @property
    def dtype(self) -> jnp.dtype:
        return self.params["embed"]["tokens"].dtype
