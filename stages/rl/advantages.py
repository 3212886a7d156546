"""From rewards to advantages: DAPO's overlong shaping, then GRPO's group-relative normalisation.

A group is the G completions of one prompt. Each completion's advantage is its reward minus the
group's mean, divided by the group's standard deviation (unbiased, as TRL and verl compute it) unless
`--scale-rewards none` (Dr. GRPO argues the division over-weights easy and hard prompts). A group whose
rewards are all equal has advantage 0 everywhere: it teaches nothing, which is why DAPO's dynamic
sampling draws other prompts in its place, and why such groups can be left out of the loss.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-6  # added to the group's std (TRL and verl use 1e-4 / 1e-6): a near-constant group does not explode


def overlong_penalty(length: int, max_new_tokens: int, buffer: int, factor: float = 1.0) -> float:
    """DAPO's soft overlong punishment: 0 up to max_new_tokens - buffer tokens, then falling linearly to -factor at
    max_new_tokens (and beyond). buffer 0 turns it off."""
    if buffer <= 0:
        return 0.0
    start = max_new_tokens - buffer
    if length <= start:
        return 0.0
    return -factor * min(1.0, (length - start) / buffer)


def group_advantages(rewards: np.ndarray, scale: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Advantages of a [prompts, G] reward array, and which groups have zero variance (all rewards equal)."""
    rewards = np.asarray(rewards, dtype=np.float64)
    centred = rewards - rewards.mean(axis=1, keepdims=True)
    zero_variance = np.all(rewards == rewards[:, :1], axis=1)
    if scale and rewards.shape[1] > 1:
        centred = centred / (rewards.std(axis=1, ddof=1, keepdims=True) + EPS)
    centred[zero_variance] = 0.0
    return centred, zero_variance
