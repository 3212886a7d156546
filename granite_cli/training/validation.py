"""Validation loss (and bits per byte) over a fixed set of held-out rows, for every training stage."""

from __future__ import annotations

import math
from typing import Callable

from granite_cli.training import IGNORE


class Validator:
    """Mean loss (and bits per byte, given token byte lengths) over a fixed set of held-out rows.

    `rows(indices)` returns a batch {"input_ids", "labels"[, "position_ids"]} for those row indices;
    every rank takes every world-th row, and the count is rounded down to a multiple of the world
    size so that every rank runs the same number of forwards (FSDP needs them to match).
    """

    def __init__(self, rows: Callable[[list[int]], dict], count: int, micro_batch: int, dist, autocast, byte_lengths=None):
        self.rows, self.micro, self.dist, self.autocast, self.byte_lengths = rows, micro_batch, dist, autocast, byte_lengths
        self.count = count - count % dist.world

    def __call__(self, model) -> dict:
        """`model` is the trainer's scorer (TokenLogprobs, wrapped for data parallelism)."""
        import torch

        from granite_cli.training.distributed import all_reduce_sum

        if self.count == 0:
            return {}
        mine = list(range(self.dist.rank, self.count, self.dist.world))
        totals = torch.zeros(3, dtype=torch.float64)
        model.eval()
        with torch.no_grad():
            for start in range(0, len(mine), self.micro):
                batch = self.rows(mine[start:start + self.micro])
                micro = {k: v.to(self.dist.device) for k, v in batch.items()}
                with self.autocast():
                    logprobs, _ = model(micro["input_ids"], micro["labels"], micro.get("position_ids"))
                totals[0] -= float(logprobs.float().sum())
                targets = batch["labels"][batch["labels"] != IGNORE]
                totals[1] += targets.numel()
                if self.byte_lengths is not None:
                    totals[2] += float(self.byte_lengths[targets.numpy()].sum())
        model.train()
        all_reduce_sum(totals, self.dist)
        result = {"val_loss": float(totals[0] / max(totals[1], 1)), "val_tokens": int(totals[1])}
        if self.byte_lengths is not None:
            result["val_bpb"] = float(totals[0] / (math.log(2) * max(totals[2], 1)))
        return result
