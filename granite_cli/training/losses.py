"""The losses the trainer takes as a component.

A loss sees the per-token log-probabilities of one micro-batch (granite_cli/training/logprobs.py)
and returns a *sum*; the trainer divides by the loss's `denominator` of the whole global batch, so
gradient accumulation and data parallelism give the gradient of one big batch whatever the split.
Cross-entropy's denominator is the batch's target-token count; a policy-gradient loss (rl) picks
its own (tokens for DAPO, sequences for GRPO, a constant for Dr. GRPO).

A loss that needs more than the labels (advantages, old or reference log-probabilities) reads them
from extra keys of the batch: the trainer splits every key of the batch along its rows.
"""

from __future__ import annotations

from typing import Protocol

from granite_cli.training import IGNORE


class Loss(Protocol):
    #: ask the scorer for per-token entropy as well (a loss may log it or add a bonus)
    wants_entropy: bool

    def denominator(self, batch: dict) -> float:
        """What the summed loss of the global batch is divided by (a positive number)."""

    def __call__(self, logprobs, entropy, micro: dict) -> tuple[object, dict]:
        """(summed loss over the micro-batch, {metric name: summed value}) — metrics are divided by the same denominator."""


class CrossEntropy:
    """Next-token cross-entropy over the target tokens (labels != -100), averaged over the global batch's targets."""

    wants_entropy = False

    def denominator(self, batch: dict) -> float:
        return float((batch["labels"] != IGNORE).sum())

    def __call__(self, logprobs, entropy, micro: dict):
        return -logprobs.sum(), {}
