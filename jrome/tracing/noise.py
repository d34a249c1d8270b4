"""The corruption's noise: its scale ("s3" is three times the spread of subject-token embeddings) and the draw,
as the original makes it (a fresh `numpy.random.RandomState(seed)` per prompt)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..models.lm import LM

NOISE_ACCEPTED = "'s<factor>' (factor x the std of subject-token embeddings, e.g. 's3'), a float, or an array"


def noise_std(lm: LM, subjects: Sequence[str] | None = None) -> float:
    """Standard deviation (ddof 1) of the token embeddings of the subjects' tokens (default: known_1000's subjects).

    The original's `collect_embedding_std`; its noise is three times this over all of known_1000's subjects.
    """
    if subjects is None:
        from ..data import load_known

        subjects = [record["subject"] for record in load_known()]
    table = np.asarray(lm.params["embed"]["tokens"], np.float32) * np.float32(lm.config.embed_scale)  # as embedded
    ids = np.concatenate([lm.tokenizer(s)["input_ids"] for s in subjects])
    return float(np.std(table[ids].astype(np.float64), ddof=1))


def noise_scale(lm: LM, noise: str | float, subjects: Sequence[str] | None = None) -> float:
    """The scale a noise setting names: "s<factor>" is factor x `noise_std(lm, subjects)`, a number is itself.

    The one parser of "s<factor>", shared by `trace` and `trace_dataset`.
    """
    if isinstance(noise, str):
        factor = noise[1:] or "1"
        if not noise.startswith("s") or not re.fullmatch(r"\d+(\.\d*)?|\.\d+", factor):
            raise ValueError(f"noise={noise!r}; accepted: {NOISE_ACCEPTED}")
        return float(factor) * noise_std(lm, subjects)
    if np.ndim(noise) != 0 or not np.issubdtype(np.asarray(noise).dtype, np.number) or not 0 < float(noise) < np.inf:
        raise ValueError(f"noise={noise!r}; accepted: {NOISE_ACCEPTED} (a scale is positive)")
    return float(noise)


def draw_noise(shape: tuple[int, ...], scale: float, seed: int = 1, uniform: bool = False) -> np.ndarray:
    """The original's noise: scale x `RandomState(seed)`'s randn(*shape) (or uniform(-1, 1, shape)), as float32."""
    rs = np.random.RandomState(seed)
    unit = rs.uniform(-1, 1, shape) if uniform else rs.randn(*shape)
    return (scale * unit).astype(np.float32)


def noise_array(noise: Any, shape: tuple[int, ...]) -> np.ndarray:
    """An explicit noise array [samples, subject tokens, d_model], checked against the shape the prompt needs."""
    values = np.asarray(noise, np.float32)
    if values.shape != shape:
        raise ValueError(
            f"noise array has shape {values.shape}; it must be [samples, subject tokens, d_model] = {shape}"
        )
    return values
