"""Error bars for the claims a stage makes about learning (a tiny model's scores move by chance)."""

from __future__ import annotations

import numpy as np


def paired_bootstrap(before: list[float], after: list[float], seed: int = 0, resamples: int = 2000,
                     level: float = 0.95) -> tuple[float, float, float]:
    """(mean change, low, high): the change of the mean score from `before` to `after` over the same items, with a
    percentile interval from resampling the items (each item's pair kept together, so item difficulty cancels)."""
    if len(before) != len(after):
        raise ValueError("a paired bootstrap needs one score before and one after for each item")
    if not before:
        return float("nan"), float("nan"), float("nan")
    change = np.asarray(after, dtype=float) - np.asarray(before, dtype=float)
    picks = np.random.default_rng(seed).integers(0, len(change), size=(resamples, len(change)))
    means = change[picks].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return float(change.mean()), float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def mean_interval(values: list[float], seed: int = 0, resamples: int = 2000, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): a percentile bootstrap interval of the mean over items (a reward model's held-out accuracy)."""
    if not values:
        return float("nan"), float("nan"), float("nan")
    array = np.asarray(values, dtype=float)
    means = array[np.random.default_rng(seed).integers(0, len(array), size=(resamples, len(array)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return float(array.mean()), float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))
