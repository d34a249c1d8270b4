"""Key statistics as a value and what ROME and MEMIT do with them: KeyStats (the second moment of an MLP's keys)
and C⁻¹k through a float64 Cholesky factor, with one clear error for a non-finite or singular C."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class KeyStats:
    """Uncentred second moment of the MLP keys at one layer: mom2 = Σ k kᵀ over `count` tokens."""

    layer: int
    mom2: np.ndarray  # [d_mlp, d_mlp] float64
    count: int
    corpus: str
    _factors: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def covariance(self) -> np.ndarray:
        """C = E[k kᵀ] (float64)."""
        return self.mom2 / self.count

    def factor(self, regularize: float = 0.0) -> np.ndarray:
        """Lower Cholesky factor of C (+ regularize · mean(diag C) · I), computed once per value of `regularize`."""
        if regularize not in self._factors:
            self._factors[regularize] = cholesky(self.covariance, regularize)
        return self._factors[regularize]


class KeySolver:
    """Solves C u = k with a float64 Cholesky factor of the key statistics (cached on a KeyStats).

    C = I when stats is None (no second-moment adjustment). A non-finite, mis-shaped or singular C is an
    error that says what to do; `regularize` adds that multiple of mean(diag C) to the diagonal first.
    """

    def __init__(self, stats: KeyStats | np.ndarray | None, size: int, regularize: float = 0.0) -> None:
        self.factor = None
        if stats is None:
            return
        shape = stats.mom2.shape if isinstance(stats, KeyStats) else np.shape(stats)
        if shape != (size, size):
            raise ValueError(f"key statistics have shape {shape}; this layer's keys need {(size, size)}")
        self.factor = stats.factor(regularize) if isinstance(stats, KeyStats) else cholesky(stats, regularize)

    def __call__(self, k: np.ndarray) -> np.ndarray:
        if self.factor is None:
            return np.asarray(k, np.float64)
        return np.linalg.solve(self.factor.T, np.linalg.solve(self.factor, k))


def cholesky(c: np.ndarray, regularize: float = 0.0) -> np.ndarray:
    """Lower Cholesky factor of a second-moment matrix, in float64; a non-finite or singular C is an error."""
    c = np.asarray(c, np.float64)
    if not np.all(np.isfinite(c)):
        raise ValueError(
            "the key statistics contain NaN or inf; recompute them (e.g. key_statistics(..., cache=False))"
        )
    if regularize:
        c = c + regularize * np.mean(np.diag(c)) * np.eye(c.shape[0])
    try:
        return np.linalg.cholesky(c)
    except np.linalg.LinAlgError as err:
        raise ValueError(
            "the key statistics are singular (not positive definite); use more tokens (mom2_n_tokens) or "
            "regularise (mom2_regularize=1e-4)"
        ) from err
