"""ROME hyperparameters: JSON presets shipped in the package (per model, and per family), overridable per call."""

from __future__ import annotations

import dataclasses
import json
from importlib import resources
from typing import Any

FACT_TOKENS = ("subject_last", "subject_first", "last")


def _fields_from_dict(cls: type, d: dict[str, Any], method: str) -> dict[str, Any]:
    """Checked keyword arguments for a hyperparameter dataclass: unknown keys are an error, JSON lists become
    the tuples the frozen dataclass holds (so it stays hashable and static under jit)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {method} hyperparameters {unknown}; known: {', '.join(sorted(known))}")
    d = dict(d)
    for key in ("layers", "context_templates"):
        if d.get(key) is not None:
            d[key] = tuple(d[key])
    if d.get("context_template_length_params") is not None:
        d["context_template_length_params"] = tuple(tuple(p) for p in d["context_template_length_params"])
    return d


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
        return cls(**_fields_from_dict(cls, d, "ROME"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def override(self, **changes: Any) -> RomeHparams:
        return RomeHparams.from_dict(self.to_dict() | changes)


@dataclasses.dataclass(frozen=True)
class MemitHparams:
    """MEMIT: the facts' residual targets are found at the last of `layers` (ROME's v* search on the residual)
    and the change is spread over the MLP output projections of all of them."""

    layers: tuple[int, ...] | None
    fact_token: str = "subject_last"
    v_num_grad_steps: int = 20
    v_lr: float = 0.5
    v_loss_layer: int | None = None
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 0.75
    kl_factor: float = 0.0625
    mom2_corpus: str = "wikitext-2"
    mom2_n_tokens: int = 100_000
    mom2_update_weight: float = 15_000.0  # weight of the corpus statistics against the new keys
    context_template_length_params: tuple[tuple[int, int], ...] = ((5, 10), (10, 10))
    context_templates: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.layers is not None and (not self.layers or list(self.layers) != sorted(set(self.layers))):
            raise ValueError(f"MEMIT layers must be distinct and increasing, got {self.layers}")
        if self.mom2_update_weight <= 0:
            raise ValueError(f"mom2_update_weight must be positive, got {self.mom2_update_weight}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MemitHparams:
        return cls(**_fields_from_dict(cls, d, "MEMIT"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def override(self, **changes: Any) -> MemitHparams:
        return MemitHparams.from_dict(self.to_dict() | changes)

    def search(self) -> RomeHparams:
        """The v* search settings, as ROME's hyperparameters at the last layer."""
        fields = {f.name for f in dataclasses.fields(RomeHparams)} & {f.name for f in dataclasses.fields(self)}
        return RomeHparams.from_dict({k: getattr(self, k) for k in fields} | {"layer": self.layers[-1]})


METHOD_HPARAMS = {"rome": RomeHparams, "memit": MemitHparams}


def presets(method: str = "rome") -> list[str]:
    """Names of the shipped presets for a method: models (e.g. 'smollm2', 'gpt2-xl') and families ('llama', ...)."""
    folder = resources.files("jrome").joinpath(f"hparams/{method}")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def load_preset(name: str, method: str = "rome") -> Any:
    """A shipped preset as RomeHparams or MemitHparams."""
    if method not in METHOD_HPARAMS:
        raise ValueError(f"no presets for method {method!r}; methods with presets: {', '.join(METHOD_HPARAMS)}")
    path = resources.files("jrome").joinpath(f"hparams/{method}/{name}.json")
    if not path.is_file():
        raise ValueError(f"no {method.upper()} preset {name!r}; presets: {', '.join(presets(method))}")
    return METHOD_HPARAMS[method].from_dict(json.loads(path.read_text()))


def hparams_for(model_name: str, family: str, method: str = "rome") -> Any:
    """The preset for this model (matched on the last part of its name or hub id), else its family's."""
    base = model_name.rstrip("/").rsplit("/", 1)[-1].lower().removesuffix(".gguf")
    return load_preset(base if base in presets(method) else family, method)
