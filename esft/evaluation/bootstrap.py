"""Bootstrap 95% intervals of a mean, and of a paired difference of means (same examples, two models)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RESAMPLES = 1000
SEED = 0
MIN_EXAMPLES = 20
"""Below this many scored examples no interval is given: a bootstrap of a handful of points is noise."""


def _interval(means: np.ndarray) -> list[float]:
    low, high = np.percentile(means, [2.5, 97.5])
    return [float(low), float(high)]


def _resample_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def mean_interval(
    values: Sequence[float], *, resamples: int = RESAMPLES, seed: int = SEED, min_n: int = MIN_EXAMPLES
) -> list[float] | None:
    """Percentile bootstrap 95% interval of the mean of ``values``; ``None`` below ``min_n`` values."""
    data = np.asarray(values, dtype=float)
    if len(data) < min_n:
        return None
    return _interval(data[_resample_indices(len(data), resamples, seed)].mean(axis=1))


def paired_difference_interval(
    base: Sequence[float],
    tuned: Sequence[float],
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    min_n: int = MIN_EXAMPLES,
) -> list[float] | None:
    """95% interval of ``mean(tuned) - mean(base)`` resampling examples (pairs stay together)."""
    a, b = np.asarray(base, dtype=float), np.asarray(tuned, dtype=float)
    if len(a) != len(b):
        raise ValueError(f"paired scores differ in length: {len(a)} vs {len(b)}")
    if len(a) < min_n:
        return None
    idx = _resample_indices(len(a), resamples, seed)
    return _interval(b[idx].mean(axis=1) - a[idx].mean(axis=1))
