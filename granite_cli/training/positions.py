"""Loss by position: the proof that a context extension worked, even for a tiny model.

Held-out long text is scored at the new length, and each token's loss is averaged within buckets of its
position (0-256, 256-512, 512-1K, ... up to the length). A model that cannot use (or is confused by) positions
past the length it was trained at shows a loss that rises in the later buckets; an extended one does not.
"""

from __future__ import annotations

from typing import Optional

import torch

from granite_cli.training import IGNORE

from granite_cli.training.logprobs import TokenLogprobs


def buckets(length: int, first: int = 256) -> list[tuple[int, int]]:
    """[0, first), [first, 2 first), ... doubling up to `length`."""
    edges, edge = [0], first
    while edge < length:
        edges.append(edge)
        edge *= 2
    edges.append(length)
    return list(zip(edges[:-1], edges[1:]))


def loss_by_position(lm, rows: dict, spans: list[tuple[int, int]], micro_batch: int = 4, chunk_tokens: Optional[int] = None) -> dict:
    """{"lo-hi": mean loss of the tokens at positions lo..hi-1} over `rows` (input_ids, labels, position_ids)."""
    scorer = TokenLogprobs(lm, chunk_tokens)
    device = next(lm.parameters()).device
    totals = torch.zeros(len(spans), dtype=torch.float64)
    counts = torch.zeros(len(spans), dtype=torch.float64)
    was_training = lm.training
    lm.eval()
    with torch.no_grad():
        for start in range(0, len(rows["input_ids"]), micro_batch):
            micro = {k: v[start:start + micro_batch].to(device) for k, v in rows.items()}
            logprobs, _ = scorer(micro["input_ids"], micro["labels"], micro["position_ids"])
            scored = micro["labels"] != IGNORE
            for i, (lo, hi) in enumerate(spans):
                inside = scored & (micro["position_ids"] >= lo) & (micro["position_ids"] < hi)
                totals[i] -= float(logprobs[inside].double().sum())
                counts[i] += float(inside.sum())
    lm.train(was_training)
    return {f"{label(lo)}-{label(hi)}": (float(t / c) if c else None) for (lo, hi), t, c in zip(spans, totals, counts)}


def label(n: int) -> str:
    return f"{n // 1024}K" if n and n % 1024 == 0 else str(n)
