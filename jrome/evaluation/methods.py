"""The editing methods an evaluation compares, each a small object: `prepare` makes its own context once per run
(hyperparameters, context templates, key statistics), `edit_each` edits the unedited model for each of a few
cases (ROME, r-ROME, MEMIT and AlphaEdit compute the cases' v* searches as one batch). For ROME, r-ROME, MEMIT and
AlphaEdit the context is an `Editor` (`editing.sequential`), which also edits many cases at once and streams of
batches (`streams`).

A method's hyperparameters, generated context templates included, are saved with the run (context.json) the
first time, so a resumed run edits exactly as the first start would have.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from ..editing import alphaedit, memit, rome
from ..editing.baselines import FTHparams, finetune, ft_hparams_for
from ..editing.hparams import METHOD_HPARAMS, RomeHparams
from ..editing.published import statistics_for
from ..editing.requests import parse_requests
from ..editing.sequential import AlphaEditor, MemitEditor, RomeEditor
from ..editing.undo import RankOne
from ..files import atomic_write_text
from ..models.lm import LM
from .datasets import EditCase

CONTEXT_FILE = "context.json"


class Method(Protocol):
    """An editing method as the runner sees it."""

    name: str
    streams: bool  # prepare gives an Editor: the method edits many cases at once and streams of batches

    def check_overrides(self, overrides: dict[str, Any]) -> None:
        """Hyperparameters this method does not have, or values of the wrong kind, are an error before any work
        (whether a layer exists is checked when the model is known)."""
        ...

    def prepare(
        self,
        lm: LM,
        folder: Path | None,
        overrides: dict[str, Any],
        *,
        seed: int,
        progress: bool = True,
        download: bool = False,
    ) -> Any:
        """This method's context for a run: made once, saved in folder (if any), read back when resuming; progress
        says what its slow steps (statistics, templates) do; download fetches published key statistics."""
        ...

    def edit_each(self, lm: LM, cases: Sequence[EditCase], ctx: Any) -> Iterator[LM | RankOne]:
        """The model edited for each case, in order, each from the unedited lm (which is not changed), or the
        rank-one factors that edit it (the runner then scores those cases as rows of shared forwards). Work done
        for all cases together is done in this call; the rest as each model is taken."""
        ...


def saved_hparams(
    folder: Path | None, method: str, lm: LM, overrides: dict[str, Any], make: Callable[[], dict[str, Any] | None]
) -> dict[str, Any] | None:
    """The hyperparameters this run uses: read from folder/context.json when the run is resumed, else `make()`,
    saved there. A resumed run with another method, model or different overrides is an error."""
    path = folder / CONTEXT_FILE if folder is not None else None
    if path is None or not path.is_file():
        hparams = make()
        if path is not None:
            atomic_write_text(path, json.dumps({"method": method, "model": lm.name, "hparams": hparams}, indent=2))
        return hparams
    saved = json.loads(path.read_text())
    if not {"method", "model", "hparams"} <= set(saved):
        raise ValueError(
            f"{path} is not a run context of this jrome (it needs method, model, hparams); give a new folder"
        )
    if (saved["method"], saved["model"]) != (method, lm.name):
        raise ValueError(
            f"{folder} holds a run of {saved['method']!r} on {saved['model']!r}, not {method!r} on {lm.name!r}; "
            "give another output folder"
        )
    hparams = saved["hparams"] or {}
    changed = {k: v for k, v in overrides.items() if hparams.get(k) != json.loads(json.dumps(v))}
    if changed:
        raise ValueError(
            f"{folder} was started with other hyperparameters than {changed} "
            f"(saved: { {k: hparams.get(k) for k in changed} }); resume without them or give another folder"
        )
    return saved["hparams"]


class Prepared:
    """`prepare` as every method below does it: its hyperparameters made once (`hparams`, for the first start) and
    saved with the run, then its context built from them (`context`)."""

    name: str

    def check_overrides(self, overrides: dict[str, Any]) -> None:
        raise NotImplementedError

    def prepare(
        self,
        lm: LM,
        folder: Path | None,
        overrides: dict[str, Any],
        *,
        seed: int,
        progress: bool = True,
        download: bool = False,
    ) -> Any:
        """See Method.prepare."""
        self.check_overrides(overrides)
        saved = saved_hparams(folder, self.name, lm, overrides, lambda: self.hparams(lm, overrides, seed, progress))
        return self.context(lm, saved, progress=progress, download=download)

    def hparams(self, lm: LM, overrides: dict[str, Any], seed: int, progress: bool) -> dict[str, Any] | None:
        """The hyperparameters a first start uses (generated context templates included), as saved."""
        raise NotImplementedError

    def context(self, lm: LM, hparams: dict[str, Any] | None, *, progress: bool, download: bool) -> Any:
        """The method's context from its saved hyperparameters."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class NoEdit(Prepared):
    """The unedited model: its numbers before and after are the same."""

    name: str = "none"
    streams: bool = False

    def check_overrides(self, overrides: dict[str, Any]) -> None:
        if overrides:
            raise ValueError(f"method 'none' takes no hyperparameters; got {sorted(overrides)}")

    def hparams(self, lm: LM, overrides: dict[str, Any], seed: int, progress: bool) -> None:
        return None

    def context(self, lm: LM, hparams: None, *, progress: bool, download: bool) -> None:
        return None

    def edit_each(self, lm: LM, cases: Sequence[EditCase], ctx: None) -> Iterator[LM]:
        return iter([lm] * len(cases))


@dataclasses.dataclass(frozen=True)
class Rome(Prepared):
    """ROME (rrome=False) or r-ROME (the template-averaged key also in the closed form), with the model's preset."""

    name: str = "rome"
    rrome: bool = False
    streams: bool = True

    def check_overrides(self, overrides: dict[str, Any]) -> None:
        RomeHparams(layer=None).override(**overrides)

    def hparams(self, lm: LM, overrides: dict[str, Any], seed: int, progress: bool) -> dict[str, Any]:
        hp = rome.resolve_hparams(lm, {**overrides, "rrome": self.rrome})
        return hp.override(context_templates=list(rome.context_templates(lm, hp, seed, progress))).to_dict()

    def context(self, lm: LM, hparams: dict[str, Any], *, progress: bool, download: bool) -> RomeEditor:
        hp = RomeHparams.from_dict(hparams)
        stats = None
        if hp.mom2_adjustment:
            stats = statistics_for(lm, hp, hp.layer, download=download, progress=progress)[hp.layer]
        return RomeEditor(hp, stats)

    def edit_each(self, lm: LM, cases: Sequence[EditCase], ctx: RomeEditor) -> Iterator[RankOne]:
        edits = rome.edit_each(lm, [c.request for c in cases], ctx.hparams, stats=ctx.stats, progress=False)
        return (e.rank_one for e in edits)


@dataclasses.dataclass(frozen=True)
class Memit(Prepared):
    """MEMIT ("memit") or AlphaEdit ("alphaedit") with the model's preset of that method; edit_each edits each case
    alone from the unedited model (the cases' targets z searched as one batch; AlphaEdit with no earlier keys)."""

    name: str = "memit"
    streams: bool = True

    def check_overrides(self, overrides: dict[str, Any]) -> None:
        METHOD_HPARAMS[self.name](layers=None).override(**overrides)

    def hparams(self, lm: LM, overrides: dict[str, Any], seed: int, progress: bool) -> dict[str, Any]:
        hp = memit.resolve_hparams(lm, overrides, self.name)
        flat = [t for group in memit.context_groups(lm, hp, seed, progress) for t in group]
        return hp.override(context_templates=flat).to_dict()

    def context(self, lm: LM, hparams: dict[str, Any], *, progress: bool, download: bool) -> MemitEditor | AlphaEditor:
        hp = METHOD_HPARAMS[self.name].from_dict(hparams)
        stats = statistics_for(lm, hp, hp.layers, download=download, progress=progress)
        return MemitEditor(hp, stats) if self.name == "memit" else AlphaEditor(hp, alphaedit.null_spaces(stats, hp))

    def edit_each(self, lm: LM, cases: Sequence[EditCase], ctx: MemitEditor | AlphaEditor) -> Iterator[RankOne]:
        reqs, target_ids = parse_requests(lm, [c.request for c in cases], ctx.hparams.METHOD)
        groups = memit.context_groups(lm, ctx.hparams)
        z, losses = memit.targets(lm, reqs, target_ids, ctx.hparams, groups)
        solve = ctx.solve(ctx.start(lm).carry)
        return (
            memit.rank_one(memit.spread(lm, [r], z[i : i + 1], ctx.hparams, solve, groups, losses[i : i + 1])[1])
            for i, r in enumerate(reqs)
        )


@dataclasses.dataclass(frozen=True)
class FTContext:
    """FT's hyperparameters: all it needs."""

    hparams: FTHparams


@dataclasses.dataclass(frozen=True)
class FineTune(Prepared):
    """FT ("ft") or FT-L ("ft-l") with the model's preset."""

    name: str = "ft"
    streams: bool = False

    def check_overrides(self, overrides: dict[str, Any]) -> None:
        FTHparams(layer=0).override(**overrides)

    def hparams(self, lm: LM, overrides: dict[str, Any], seed: int, progress: bool) -> dict[str, Any]:
        return ft_hparams_for(lm.name, lm.config.family, self.name).override(**overrides).to_dict()

    def context(self, lm: LM, hparams: dict[str, Any], *, progress: bool, download: bool) -> FTContext:
        return FTContext(FTHparams.from_dict(hparams))

    def edit_each(self, lm: LM, cases: Sequence[EditCase], ctx: FTContext) -> Iterator[LM]:
        return (finetune(lm, c.request, ctx.hparams)[0] for c in cases)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        NoEdit(),
        Rome(),
        Rome("r-rome", rrome=True),
        FineTune("ft"),
        FineTune("ft-l"),
        Memit(),
        Memit("alphaedit"),
    )
}


def get_method(name: str) -> Method:
    """The method of this name; an unknown one is an error that lists the known ones."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}")
    return METHODS[name]
