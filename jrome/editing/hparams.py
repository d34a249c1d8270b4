"""ROME hyperparameters: JSON presets shipped in the package (per model, and per family), overridable per call."""

from __future__ import annotations

import dataclasses
import json
from importlib import resources
from typing import Any

FACT_TOKENS = ("subject_last", "subject_first", "last")


@dataclasses.dataclass(frozen=True)
class RomeHparams:
    """What one ROME edit needs to know. Field meanings follow the paper's implementation."""

    layer: int | None  # the MLP whose output projection is edited; None: choose it from a causal trace
    fact_token: str = "subject_last"  # where the key is read and v* is injected
    v_num_grad_steps: int = 20
    v_lr: float = 0.5
    v_loss_layer: int | None = None  # None: the last layer (the loss is always on the model's own logits)
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    mom2_adjustment: bool = True  # use C^-1 k (False: k itself, i.e. C = I)
    mom2_corpus: str = "wikitext-2"
    mom2_n_tokens: int = 100_000
    mom2_regularize: float = 0.0  # add this times mean(diag C) to C's diagonal
    context_template_length_params: tuple[tuple[int, int], ...] = ((5, 10), (10, 10))  # (tokens, how many)
    context_templates: tuple[str, ...] | None = None  # explicit templates ("... {}") instead of generated ones
    rrome: bool = False  # r-ROME: the template-averaged key also in the closed form's denominator and W k

    def __post_init__(self) -> None:
        if self.fact_token not in FACT_TOKENS:
            raise ValueError(f"fact_token={self.fact_token!r}; accepted: {', '.join(FACT_TOKENS)}")
        if self.v_num_grad_steps < 1:
            raise ValueError(f"v_num_grad_steps must be at least 1, got {self.v_num_grad_steps}")
        if self.context_templates is not None:
            bad = [t for t in self.context_templates if "{}" not in t]
            if bad or not self.context_templates:
                raise ValueError(f"every context template needs a '{{}}' where the prompt goes; got {bad or '[]'}")
        if self.mom2_n_tokens < 1 or self.mom2_regularize < 0:
            raise ValueError("mom2_n_tokens must be positive and mom2_regularize non-negative")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RomeHparams:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ROME hyperparameters {unknown}; known: {', '.join(sorted(known))}")
        d = dict(d)
        if d.get("context_template_length_params") is not None:
            d["context_template_length_params"] = tuple(tuple(p) for p in d["context_template_length_params"])
        if d.get("context_templates") is not None:
            d["context_templates"] = tuple(d["context_templates"])
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def override(self, **changes: Any) -> RomeHparams:
        return RomeHparams.from_dict(self.to_dict() | changes)


def presets() -> list[str]:
    """Names of the shipped presets: models (e.g. 'smollm2', 'gpt2-xl') and families ('llama', ...)."""
    return sorted(
        p.name[:-5] for p in resources.files("jrome").joinpath("hparams/rome").iterdir() if p.name.endswith(".json")
    )


def load_preset(name: str) -> RomeHparams:
    path = resources.files("jrome").joinpath(f"hparams/rome/{name}.json")
    if not path.is_file():
        raise ValueError(f"no ROME preset {name!r}; presets: {', '.join(presets())}")
    return RomeHparams.from_dict(json.loads(path.read_text()))


def hparams_for(model_name: str, family: str) -> RomeHparams:
    """The preset for this model (matched on the last part of its name or hub id), else its family's."""
    base = model_name.rstrip("/").rsplit("/", 1)[-1].lower().removesuffix(".gguf")
    return load_preset(base if base in presets() else family)
