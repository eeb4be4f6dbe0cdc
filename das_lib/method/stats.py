"""Intervals for what the book reports: an IIA (a proportion of pairs) and a gain (a paired difference)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import stats

Values = np.ndarray | torch.Tensor | Sequence[float] | Sequence[bool]


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1 (0.95 for a 95% interval), got {level!r}")


def _vector(values: Values, name: str) -> np.ndarray:
    """`values` as a 1-D float array, refused when empty, not 1-D or not finite."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one value per pair (1-D), got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty: an interval needs at least one pair")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ValueError(f"{name} must hold numbers or bools, got dtype {array.dtype}")
    array = array.astype(float)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or infinite values; drop those pairs first")
    return array


def _correctness(values: Values, name: str) -> np.ndarray:
    """A per-pair 0/1 (or bool) correctness vector as floats; anything else is refused."""
    array = _vector(values, name)
    if not np.isin(array, (0.0, 1.0)).all():
        raise ValueError(f"{name} must be per-pair correctness, 0/1 or bools; it holds {sorted(set(array))[:5]}...")
    return array


def binomial_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of the proportion k/n, e.g. an IIA of k right answers out of n pairs."""
    _check_level(level)
    if int(k) != k or int(n) != n:
        raise ValueError(f"k and n must be whole counts, got k={k!r}, n={n!r}")
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1 (k right answers out of n pairs), got k={k}, n={n}")
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def bootstrap_interval(values: Values, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-pair values, resampling pairs with a seeded generator."""
    _check_level(level)
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot must be a positive whole number of resamples, got {n_boot!r}")
    array = _vector(values, "values")
    if np.all(array == array[0]):  # every resample has the same mean; scipy would warn about a degenerate sample
        return float(array[0]), float(array[0])
    result = stats.bootstrap((array,), np.mean, n_resamples=int(n_boot), confidence_level=level,
                             method="percentile", vectorized=True, batch=200, rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def paired_difference(a: Values, b: Values, level: float = 0.95, n_boot: int = 2000,
                      seed: int = 0) -> tuple[float, float, float]:
    """Mean of a - b over the same pairs, with its paired-bootstrap interval: (mean, low, high)."""
    a, b = _correctness(a, "a"), _correctness(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must score the same pairs, got {a.size} and {b.size} values")
    difference = a - b
    low, high = bootstrap_interval(difference, level=level, n_boot=n_boot, seed=seed)
    return float(difference.mean()), low, high


def beats(a: Values, b: Values, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> bool:
    """Is a better than b on the same pairs: does the interval of the mean of a - b lie above 0?"""
    return paired_difference(a, b, level=level, n_boot=n_boot, seed=seed)[1] > 0
