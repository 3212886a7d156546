"""Packing variable-length sequences into fixed-length rows (sft's conversations, rl's rollouts).

Best-fit decreasing: the longest sequence first, each into the fullest row it still fits. Rows come
out nearly full (no padding rows, unlike a padded batch), and the packed row's position ids restart
at every sequence, which transformers reads as a block-diagonal attention mask, so no token sees
another sequence.
"""

from __future__ import annotations

import bisect

import numpy as np


def best_fit(lengths: list[int], capacity: int, order: np.ndarray) -> list[list[int]]:
    """Rows of indices into `lengths`, each summing to at most `capacity`; `order` breaks ties between equal lengths."""
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (space left, row index), sorted
    for index in sorted(order.tolist(), key=lambda i: -lengths[i]):
        position = bisect.bisect_left(free, (lengths[index], -1))
        if position < len(free):
            space, row = free.pop(position)
        else:
            space, row = capacity, len(rows)
            rows.append([])
        rows[row].append(index)
        if space - lengths[index] > 0:
            bisect.insort(free, (space - lengths[index], row))
    return rows


class EpochOrder:
    """Rows in an endless sequence of seeded permutations, one per epoch: `order[p]` is the row at position p.

    A step's batch takes positions [s·B, (s+1)·B), so it is a pure function of the step (what makes resume exact).
    The latest epoch's permutation is kept: a batch asks for it once per row."""

    def __init__(self, count: int, seed: int):
        self.count, self.seed = count, seed
        self._epoch, self._permutation = -1, None

    def __getitem__(self, position: int) -> int:
        epoch, offset = divmod(position, self.count)
        if epoch != self._epoch:
            self._epoch, self._permutation = epoch, np.random.default_rng([self.seed, epoch, 1]).permutation(self.count)
        return int(self._permutation[offset])
