"""Packing every (token, layer) restoration of a trace into equal-sized work, so one vmapped program runs them all.

A restoration at token t whose effect starts at layer `start` needs layers start..L-1 and only the columns
t..T-1 (earlier columns are as in the corrupted run). Costs therefore differ, so restorations are paired:

* over layers, a *lane* runs a long restoration and then a short one (start early + start late), so every
  lane runs about the same number of layer steps;
* over tokens, a *row* holds two column segments, t..T-1 and t'..T-1 with a long one next to a short one, so
  every row has about the same length.

Only the work a restoration needs is computed, apart from the small imbalance the pairing leaves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

KINDS = ("hidden", "mlp", "attn")


@dataclass(frozen=True)
class LayerPlan:
    """Per lane, two restoration slots: restored layer (-1 = empty), first layer run, and patched layers [lo, hi)."""

    layer: np.ndarray  # [lanes, 2]
    start: np.ndarray  # [lanes, 2]
    count: np.ndarray  # [lanes, 2] layers run: L - start, 0 for an empty slot
    lo: np.ndarray  # [lanes, 2]
    hi: np.ndarray  # [lanes, 2]
    steps: int  # layer steps per lane: the largest count[:, 0] + count[:, 1]


@dataclass(frozen=True)
class RowPlan:
    """Per row, two column segments: the restored token each starts at (-1 = empty), and the row's layout."""

    seg_start: np.ndarray  # [rows, 2]
    cols: np.ndarray  # [rows, R] absolute column of each row position
    seg: np.ndarray  # [rows, R] segment of each position: 0, 1, or 2 for padding
    valid: np.ndarray  # [rows, R]
    last: np.ndarray  # [rows, 2] row position of each segment's final column (T - 1)


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
        steps=int(count.sum(axis=1).max()),
    )


def plan_rows(n_tokens: int, first: int, tokens: Sequence[int] | None = None) -> RowPlan:
    """Pair the restored tokens first..T-1 so that each row holds columns t..T-1 and t'..T-1 of about T - first + 1.

    tokens: restore only these (ascending, each at least `first`) instead of all of first..T-1.
    """
    tokens = list(range(first, n_tokens)) if tokens is None else list(tokens)
    pairs = [(tokens[i], tokens[-1 - i]) for i in range(len(tokens) // 2)]
    if len(tokens) % 2:
        pairs.append((tokens[len(tokens) // 2], -1))
    width = max((n_tokens - a) + (n_tokens - b if b >= 0 else 0) for a, b in pairs)
    rows = len(pairs)
    cols = np.full((rows, width), n_tokens - 1, np.int32)
    seg = np.full((rows, width), 2, np.int32)
    last = np.zeros((rows, 2), np.int32)
    pos = 0
    for r, pair in enumerate(pairs):
        pos = 0
        for s, t in enumerate(pair):
            if t < 0:
                continue
            n = n_tokens - t
            cols[r, pos : pos + n] = np.arange(t, n_tokens)
            seg[r, pos : pos + n] = s
            last[r, s] = pos + n - 1
            pos += n
    return RowPlan(seg_start=np.array(pairs, np.int32), cols=cols, seg=seg, valid=seg < 2, last=last)
