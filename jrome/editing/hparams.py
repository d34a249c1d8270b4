"""ROME, MEMIT and AlphaEdit hyperparameters: JSON presets shipped in the package (per model, and per family), overridable
per call. A preset's "source" entry says where its values come from (the original's hparams file, or how they
were chosen); it is documentation and not a field."""

from __future__ import annotations

import dataclasses
import json
import re
from importlib import resources
from typing import Any, ClassVar

from ..tokens import FACT_TOKENS


def checked_fields(cls: type, d: dict[str, Any], method: str) -> dict[str, Any]:
    """Checked keyword arguments for a hyperparameter dataclass: unknown keys are an error listing the known
    ones, a value of another kind than its field's default (a number, a flag, a name) is an error, and JSON
    lists become the tuples the frozen dataclass holds (so it stays hashable and static under jit)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ValueError(f"unknown {method} hyperparameters {unknown}; known: {', '.join(sorted(fields))}")
    kinds = {bool: ((bool,), "true or false"), int: ((int,), "a whole number"), float: ((int, float), "a number"), str: ((str,), "text")}  # fmt: skip
    for key, value in d.items():
        default = fields[key].default
        types, kind = kinds.get(type(default), (None, ""))
        if value is None or types is None:
            continue
        if not isinstance(value, types) or isinstance(value, bool) != (types == (bool,)):
            raise ValueError(f"{method} hyperparameter {key}={value!r}: expected {kind}, like {default!r}")
    d = dict(d)
    for key in ("layers", "context_templates"):
        if d.get(key) is not None:
            d[key] = tuple(d[key])
    if d.get("context_template_length_params") is not None:
        d["context_template_length_params"] = tuple(tuple(p) for p in d["context_template_length_params"])
    return d


class Hparams:
    """from_dict, to_dict and override, as every method's frozen hyperparameter dataclass has them (METHOD names
    the method in errors)."""

    METHOD: ClassVar[str]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        """From a dict of fields (unknown names are an error; lists become tuples)."""
        return cls(**checked_fields(cls, d, cls.METHOD))

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict (what a run saves)."""
        return dataclasses.asdict(self)

    def override(self, **changes: Any) -> Any:
        """A copy with some fields changed, checked as from_dict checks them."""
        return type(self).from_dict(self.to_dict() | changes)


@dataclasses.dataclass(frozen=True)
class RomeHparams(Hparams):
    """What one ROME edit needs to know. Field meanings follow the paper's implementation."""

    layer: int | None  # the MLP whose output projection is edited; None: choose it from a causal trace
    fact_token: str = "subject_last"  # where the key is read and v* is injected
    v_num_grad_steps: int = 20
    v_lr: float = 0.5
    v_loss_layer: int | None = None  # kept from the original's files; its ROME reads the loss from the logits anyway
    v_weight_decay: float = 0.5  # times |δ| / |v_init|²
    clamp_norm_factor: float = 4.0  # |δ| <= this times |v_init|
    kl_factor: float = 0.0625
    mom2_adjustment: bool = True  # use C^-1 k (False: k itself, i.e. C = I)
    mom2_corpus: str = "wikitext-2"
    mom2_n_tokens: int = 100_000  # key statistics over this many tokens (one stream cut into windows) ...
    mom2_n_samples: int | None = None  # ... or, when set, over this many corpus records (the original's mode)
    mom2_regularize: float = 0.0  # add this times mean(diag C) to C's diagonal
    mom2_published: str | None = None  # the model's folder among the original's published statistics (e.g. gpt2-xl)
    mom2_tolerance: float | None = None  # stop the statistics pass early once C⁻¹k of probe keys settles to this
    context_template_length_params: tuple[tuple[int, int], ...] = ((5, 10), (10, 10))  # (tokens, how many)
    context_templates: tuple[str, ...] | None = None  # explicit templates ("... {}") instead of generated ones
    rrome: bool = False  # r-ROME: the template-averaged key also in the closed form's denominator and W k
    METHOD: ClassVar[str] = "ROME"

    def __post_init__(self) -> None:
        if self.fact_token not in FACT_TOKENS:
            raise ValueError(f"fact_token={self.fact_token!r}; accepted: {', '.join(FACT_TOKENS)}")
        if self.v_num_grad_steps < 1:
            raise ValueError(f"v_num_grad_steps must be at least 1, got {self.v_num_grad_steps}")
        _check_templates(self.context_templates)
        _check_stats_size(self)
        if self.mom2_regularize < 0:
            raise ValueError(f"mom2_regularize must be non-negative, got {self.mom2_regularize}")


@dataclasses.dataclass(frozen=True)
class MemitHparams(Hparams):
    """MEMIT: the facts' residual targets are found at the last of `layers` (ROME's v* search on the residual)
    and the change is spread over the MLP output projections of all of them."""

    layers: tuple[int, ...] | None
    fact_token: str = "subject_last"
    v_num_grad_steps: int = 20
    v_lr: float = 0.5
    v_loss_layer: int | None = None  # the NLL is read from this layer's residual (None: the last layer)
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 0.75
    kl_factor: float = 0.0625
    mom2_corpus: str = "wikitext-2"
    mom2_n_tokens: int = 100_000
    mom2_n_samples: int | None = None
    mom2_update_weight: float = 15_000.0  # weight of the corpus statistics against the new keys
    mom2_published: str | None = None  # the model's folder among the original's published statistics (e.g. gpt2-xl)
    mom2_tolerance: float | None = None  # stop the statistics pass early once C⁻¹k of probe keys settles to this
    context_templates: tuple[str, ...] | None = None  # explicit templates: "{}" is one group, the rest another
    METHOD: ClassVar[str] = "MEMIT"

    def __post_init__(self) -> None:
        if self.fact_token not in ("subject_last", "subject_first"):
            raise ValueError(
                f"fact_token={self.fact_token!r}; MEMIT accepts subject_last or subject_first (the original's 'last' "
                "is unimplemented there)"
            )
        if self.layers is not None and (not self.layers or list(self.layers) != sorted(set(self.layers))):
            raise ValueError(f"MEMIT layers must be distinct and increasing, got {self.layers}")
        if self.mom2_update_weight <= 0:
            raise ValueError(f"mom2_update_weight must be positive, got {self.mom2_update_weight}")
        if self.v_num_grad_steps < 1:
            raise ValueError(f"v_num_grad_steps must be at least 1, got {self.v_num_grad_steps}")
        _check_templates(self.context_templates)
        _check_stats_size(self)


@dataclasses.dataclass(frozen=True)
class AlphaEditHparams(MemitHparams):
    """AlphaEdit: MEMIT's targets and layers, each update projected onto the null space of the corpus keys' second
    moment, with earlier batches' keys kept in the solve. mom2_update_weight is not read (as in the authors' code)."""

    nullspace_threshold: float = 2e-2  # eigenvalues of C below this span the null space the update lives in
    L2: float = 10.0  # the identity's weight in the solve (the authors' name)
    METHOD: ClassVar[str] = "AlphaEdit"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.nullspace_threshold > 0 or self.L2 < 0:
            raise ValueError(
                f"nullspace_threshold must be positive and L2 non-negative, got {self.nullspace_threshold}, {self.L2}"
            )


def _check_templates(templates: tuple[str, ...] | None) -> None:
    if templates is None:
        return
    bad = [t for t in templates if not isinstance(t, str) or t.count("{}") != 1]
    if bad or not templates:
        raise ValueError(f"every context template needs one '{{}}' where the prompt goes; got {bad or '[]'}")


def _check_stats_size(hp: Any) -> None:
    if hp.mom2_published is not None and not re.fullmatch(r"[\w.-]+", str(hp.mom2_published)):
        raise ValueError(f"mom2_published={hp.mom2_published!r}: expected a model folder name like 'gpt2-xl', or null")
    if hp.mom2_tolerance is not None and not (isinstance(hp.mom2_tolerance, int | float) and hp.mom2_tolerance > 0):
        raise ValueError(
            f"mom2_tolerance={hp.mom2_tolerance!r}: expected a positive relative change like 0.01, or null"
        )
    if hp.mom2_n_tokens < 1 or (hp.mom2_n_samples is not None and hp.mom2_n_samples < 1):
        raise ValueError(
            f"mom2_n_tokens ({hp.mom2_n_tokens}) and mom2_n_samples ({hp.mom2_n_samples}) must be positive counts"
        )


METHOD_HPARAMS = {"rome": RomeHparams, "memit": MemitHparams, "alphaedit": AlphaEditHparams}


def presets(method: str = "rome") -> list[str]:
    """Names of the shipped presets for a method: models (e.g. 'smollm2', 'gpt2-xl') and families ('llama', ...)."""
    folder = resources.files("jrome").joinpath(f"hparams/{method}")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def load_preset(name: str, method: str = "rome") -> Any:
    """A shipped preset as RomeHparams, MemitHparams or AlphaEditHparams."""
    if method not in METHOD_HPARAMS:
        raise ValueError(f"no presets for method {method!r}; methods with presets: {', '.join(METHOD_HPARAMS)}")
    path = resources.files("jrome").joinpath(f"hparams/{method}/{name}.json")
    if not path.is_file():
        raise ValueError(f"no {method.upper()} preset {name!r}; presets: {', '.join(presets(method))}")
    fields = json.loads(path.read_text())
    fields.pop("source", None)
    return METHOD_HPARAMS[method].from_dict(fields)


def preset_name(model_name: str, family: str, method: str) -> str:
    """The preset of `method` a model uses: its own (matched on the last part of its name or hub id), else its
    family's."""
    base = model_name.rstrip("/").rsplit("/", 1)[-1].lower().removesuffix(".gguf")
    return base if base in presets(method) else family


def hparams_for(model_name: str, family: str, method: str = "rome") -> Any:
    """The preset for this model (matched on the last part of its name or hub id), else its family's."""
    return load_preset(preset_name(model_name, family, method), method)


def given_or_preset(lm: Any, hparams: Any, kind: type, method: str) -> Any:
    """An edit's hyperparameters: `hparams` itself when it is a `kind`, else the model's preset of `method` with
    hparams (a dict of overrides, or None) over it. The caller checks them against the model."""
    if isinstance(hparams, kind):
        return hparams
    hp = hparams_for(lm.name, lm.config.family, method)
    return hp.override(**hparams) if hparams else hp
