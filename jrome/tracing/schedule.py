"""Packing restorations into equal-sized work, so one compiled program runs every kind of trace of many facts.

A restoration at token t whose effect starts at layer `start` needs layers start..L-1 and only the columns
t..T-1 (earlier columns are as in the corrupted run). Costs therefore differ, so restorations are paired:

* over layers, a *lane* runs a long restoration and then a short one (start early + start late), so every
  lane runs about the same number of layer steps;
* over tokens, a *row* holds two column segments of one fact, t..T-1 and t'..T-1 with a long one next to a
  short one, so every row has about the same length.

Shapes depend only on the model, a length bucket and the number of facts per call: kinds, windows and severed
modules are data of the plan, so every kind of trace of every prompt in a bucket runs one compiled program.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from flax import struct

KINDS = ("hidden", "mlp", "attn")
SEVER = ("mlp", "attn")
LENGTH_STEP = 2  # prompt lengths are padded up to a multiple of this (then 50 % steps past 32 tokens)


def bucket(n_tokens: int) -> int:
    """The padded length of a prompt of n_tokens: multiples of LENGTH_STEP up to 32, then steps of 50 %, so a
    dataset's prompts fall into a handful of shapes (each shape is one compiled program)."""
    size = LENGTH_STEP
    while size < n_tokens:
        size = size + LENGTH_STEP if size < 32 else size * 3 // 2 // LENGTH_STEP * LENGTH_STEP
    return size


def bucket_rows(n_tokens: int) -> tuple[int, int]:
    """(rows, width) that hold every restoration of any prompt of up to n_tokens tokens (a bucket's size)."""
    return -(-n_tokens // 2), n_tokens + 1


@struct.dataclass
class Restoration:
    """What a trace restores, as data of the one program: which module output a patch writes (MLP or
    attention), whether its values come from the clean run (windows) or the corrupted one (severed paths), and
    whether each slot starts from the clean state of its token (hidden states)."""

    site_is_mlp: np.ndarray  # bool scalar
    from_clean: np.ndarray  # bool scalar
    restore_input: np.ndarray  # bool scalar

    @classmethod
    def of(cls, kind: str, sever: str | None) -> Restoration:
        """The restoration a kind names (hidden, mlp, attn), optionally with a severed module (hidden only)."""
        site = sever if kind == "hidden" else kind
        return cls(np.bool_(site != "attn"), np.bool_(kind != "hidden"), np.bool_(kind == "hidden"))


@struct.dataclass
class LayerPlan:
    """Per lane, two restoration slots: restored layer (-1 = empty), first layer run, layers run, and the
    patched layers [lo, hi); `steps` (a scalar) is the layer steps each lane runs."""

    layer: np.ndarray  # [lanes, 2]
    start: np.ndarray  # [lanes, 2]
    count: np.ndarray  # [lanes, 2] layers run: L - start, 0 for an empty slot
    lo: np.ndarray  # [lanes, 2]
    hi: np.ndarray  # [lanes, 2]
    steps: np.ndarray  # int32 scalar: the largest count[:, 0] + count[:, 1]


@struct.dataclass
class RowPlan:
    """Rows of the restoration batch, each two column segments of one fact: the fact, the restored token each
    segment starts at (-1 = empty), and the row's layout. Padding rows have no segments."""

    fact: np.ndarray  # [rows]
    seg_start: np.ndarray  # [rows, 2]
    cols: np.ndarray  # [rows, R] absolute column of each row position
    seg: np.ndarray  # [rows, R] segment of each position: 0, 1, or 2 for padding
    valid: np.ndarray  # [rows, R]
    last: np.ndarray  # [rows, 2] row position of each segment's final column (the fact's T - 1)


def window_bounds(layer: int, n_layers: int, window: int) -> tuple[int, int]:
    """The paper's window of `window` layers around `layer`, clipped to the model: [lo, hi)."""
    return max(0, layer - window // 2), min(n_layers, layer - (-window // 2))


def plan_layers(n_layers: int, kind: str, window: int, sever: str | None) -> LayerPlan:
    """Pair restorations by layer so each lane's total number of layer steps is nearly the same."""
    specs = []  # (layer, start, lo, hi)
    for layer in range(n_layers):
        if kind == "hidden":
            lo, hi = (layer + 1, n_layers) if sever else (0, 0)
            specs.append((layer, layer + 1, lo, hi))
        else:
            lo, hi = window_bounds(layer, n_layers, window)
            specs.append((layer, lo, lo, hi))
    specs.sort(key=lambda s: (s[1], s[0]))  # most layers to run first
    pairs = [(specs[i], specs[len(specs) - 1 - i]) for i in range(len(specs) // 2)]
    if len(specs) % 2:
        pairs.append((specs[len(specs) // 2], None))
    empty = (-1, n_layers, 0, 0)
    slots = np.array([[a, b if b is not None else empty] for a, b in pairs], np.int32)  # [lanes, 2, 4]
    count = np.where(slots[..., 0] >= 0, n_layers - slots[..., 1], 0).astype(np.int32)
    return LayerPlan(
        layer=slots[..., 0],
        start=slots[..., 1],
        count=count,
        lo=slots[..., 2],
        hi=slots[..., 3],
        steps=np.int32(count.sum(axis=1).max()),
    )


def token_pairs(tokens: Sequence[int]) -> list[tuple[int, int]]:
    """Restored tokens paired long with short (first with last), so each pair's two segments add up alike."""
    tokens = list(tokens)
    pairs = [(tokens[i], tokens[-1 - i]) for i in range(len(tokens) // 2)]
    return pairs + ([(tokens[len(tokens) // 2], -1)] if len(tokens) % 2 else [])


def rows_needed(n_tokens: int, tokens: Sequence[int]) -> tuple[int, int]:
    """(rows, width) one fact's restored tokens take: a row per pair, as wide as its two segments together."""
    pairs = token_pairs(tokens)
    return len(pairs), max((n_tokens - a) + (n_tokens - b if b >= 0 else 0) for a, b in pairs)


def plan_rows(facts: Sequence[tuple[int, Sequence[int]]], n_rows: int, width: int) -> RowPlan:
    """Rows for several facts, each given as (its number of tokens, its restored tokens in ascending order),
    padded to `n_rows` rows of `width` positions; a row's fact is its index in `facts`."""
    pairs = [(f, n_tokens, pair) for f, (n_tokens, tokens) in enumerate(facts) for pair in token_pairs(tokens)]
    widest = max(((n - a) + (n - b if b >= 0 else 0) for _, n, (a, b) in pairs), default=0)
    if len(pairs) > n_rows or widest > width:
        raise ValueError(f"the facts need {len(pairs)} rows of {widest} positions; planned {n_rows} of {width}")
    fact = np.zeros(n_rows, np.int32)
    seg_start = np.full((n_rows, 2), -1, np.int32)
    cols = np.zeros((n_rows, width), np.int32)
    seg = np.full((n_rows, width), 2, np.int32)
    last = np.zeros((n_rows, 2), np.int32)
    for r, (f, n_tokens, pair) in enumerate(pairs):
        fact[r], seg_start[r], pos = f, pair, 0
        for s, t in enumerate(pair):
            if t >= 0:
                cols[r, pos : pos + n_tokens - t] = np.arange(t, n_tokens)
                seg[r, pos : pos + n_tokens - t] = s
                pos += n_tokens - t
                last[r, s] = pos - 1
    return RowPlan(fact=fact, seg_start=seg_start, cols=cols, seg=seg, valid=seg < 2, last=last)
