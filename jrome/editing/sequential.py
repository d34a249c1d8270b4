"""Sequential ("lifelong") editing as a fold: an `EditorState` — the parameters and whatever a method carries from
one batch to the next — goes in with a batch of requests, and the next state comes out.

    state = editor.start(lm)
    for batch in batches:
        state, undo = editor.step(state, batch)      # or: state = fold(editor, editor.start(lm), batches)

An editor holds what stays fixed over a stream (hyperparameters, key statistics, AlphaEdit's projectors); the state
holds what changes. Nothing else is kept between calls, so two streams from one model never see each other's edits
(the bug of a PyTorch editor that kept its state inside: EasyEdit#613), and a stream resumed from a saved state
(`save_state`, `load_state`) continues exactly. Each step runs the same compiled programs for every batch of the same
shape (requests per batch, token lengths after padding): a stream compiles once.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

import jax.numpy as jnp
import numpy as np
from flax import struct

from ..files import atomic_write_bytes
from ..models.lm import LM
from . import alphaedit, memit, rome
from .hparams import AlphaEditHparams, MemitHparams, RomeHparams
from .requests import Request
from .solver import KeyStats
from .undo import Undo, down_kernel, with_down_kernel

Batch = Sequence[Request | dict]


@struct.dataclass
class EditorState:
    """The model after the edits so far, what the method carries to the next batch, and how many requests it has
    applied. carry: AlphaEdit's [layers, F, F] sum of earlier batches' K Kᵀ; None for ROME and MEMIT."""

    lm: LM
    carry: np.ndarray | None = None
    edits: int = struct.field(pytree_node=False, default=0)


class Editor(Protocol):
    """A method that edits a stream of batches."""

    def start(self, lm: LM) -> EditorState:
        """The state before the first batch."""
        ...

    def step(self, state: EditorState, requests: Batch, z: np.ndarray | None = None) -> tuple[EditorState, Undo]:
        """The state after one more batch, and the Undo that puts state.lm's weights back. z: the batch's known
        residual targets (MEMIT and AlphaEdit; see memit.edit)."""
        ...


@dataclasses.dataclass(frozen=True, eq=False)
class RomeEditor:
    """ROME, or r-ROME (hparams.rrome): each request of a batch edits the model the one before it produced."""

    hparams: RomeHparams
    stats: KeyStats | None

    def start(self, lm: LM) -> EditorState:
        return EditorState(lm)

    def step(self, state: EditorState, requests: Batch, z: None = None) -> tuple[EditorState, Undo]:
        if z is not None:
            raise ValueError("ROME has no residual targets to reuse: each request's v* depends on the ones before")
        lm, undo = rome.edit(state.lm, requests, self.hparams, self.stats, progress=False)
        return EditorState(lm, None, state.edits + len(undo.edits)), undo


@dataclasses.dataclass(frozen=True, eq=False)
class MemitEditor:
    """MEMIT: each batch in one edit of the model the batches before produced (C stays the unedited model's)."""

    hparams: MemitHparams
    stats: dict[int, KeyStats]

    def start(self, lm: LM) -> EditorState:
        return EditorState(lm)

    def step(self, state: EditorState, requests: Batch, z: np.ndarray | None = None) -> tuple[EditorState, Undo]:
        lm, undo = memit.edit(state.lm, requests, self.hparams, self.stats, z=z, progress=False)
        return EditorState(lm, None, state.edits + len(undo.edits[0].requests)), undo

    def solve(self, carry: None) -> memit.Solve:
        """The left factor of a batch's update (`memit.spread`)."""
        return memit.memit_solve(self.hparams, self.stats)


@dataclasses.dataclass(frozen=True, eq=False)
class AlphaEditor:
    """AlphaEdit: each batch in one edit, projected onto the unedited model's null spaces, with the keys of earlier
    batches (the state's carry) kept in the solve."""

    hparams: AlphaEditHparams
    projections: np.ndarray  # [layers, F, F] alphaedit.null_spaces of the unedited model's statistics

    def start(self, lm: LM) -> EditorState:
        return EditorState(lm, alphaedit.empty_cache(self.projections))

    def step(self, state: EditorState, requests: Batch, z: np.ndarray | None = None) -> tuple[EditorState, Undo]:
        lm, undo, cache = alphaedit.edit(
            state.lm, requests, self.hparams, projections=self.projections, cache=state.carry, z=z, progress=False
        )
        return EditorState(lm, cache, state.edits + len(undo.edits[0].requests)), undo

    def solve(self, carry: np.ndarray) -> memit.Solve:
        """The left factor of a batch's update (`memit.spread`) after the earlier batches whose keys `carry` sums."""
        return alphaedit.alpha_solve(self.hparams, self.projections, carry)


def stream(editor: Editor, state: EditorState, batches: Iterable[Batch]) -> Iterator[EditorState]:
    """The state after each batch, each step taken from the state before (lazily)."""
    for batch in batches:
        state, _ = editor.step(state, batch)
        yield state


def fold(editor: Editor, state: EditorState, batches: Iterable[Batch]) -> EditorState:
    """The state after every batch, one after another."""
    for batch in batches:
        state, _ = editor.step(state, batch)
    return state


def save_state(path: str | os.PathLike, state: EditorState, start: EditorState) -> None:
    """Write a state's edited kernels (the layers whose MLP output kernel differs from `start`'s: all that ROME, MEMIT
    and AlphaEdit change), carry and count to one .npz, atomically (an interruption leaves the old one)."""
    kernel, before = np.asarray(down_kernel(state.lm.params)), np.asarray(down_kernel(start.lm.params))
    layers = [i for i in range(len(kernel)) if not np.array_equal(kernel[i], before[i])]
    arrays = {"layers": np.asarray(layers, np.int64), "kernels": kernel[layers], "edits": np.asarray(state.edits)}
    if state.carry is not None:
        arrays["carry"] = state.carry
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_state(path: str | os.PathLike, start: EditorState) -> EditorState:
    """The state saved at `path` from a stream that began at `start` (the unedited model)."""
    with np.load(path) as z:
        layers, kernels, edits = z["layers"], z["kernels"], int(z["edits"])
        carry = z["carry"] if "carry" in z.files else None
    kernel = down_kernel(start.lm.params)
    if kernels.shape[1:] != kernel.shape[1:] or (carry is None) != (start.carry is None):
        raise ValueError(f"{path} holds the state of another model or method; give another folder")
    lm = start.lm.replace(params=with_down_kernel(start.lm.params, kernel.at[layers].set(jnp.asarray(kernels))))
    return EditorState(lm, carry, edits)
