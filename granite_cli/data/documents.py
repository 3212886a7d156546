"""Whole documents packed into rows, attention kept inside each document: extend-context's data.

Pre-training cuts shards into windows that run across document ends (granite_cli/data/windows.py).
Long-context training wants the opposite: a long document kept whole where it fits, so that the
model sees real long-range dependencies, and no attention from one document into another, which
would teach it that text 3K tokens back is unrelated noise. So each document is one piece (a longer
one is cut into pieces of `seq_len` tokens, the last piece holding the remainder), pieces are packed
best-fit into rows of `seq_len` tokens, and position ids restart at every piece: transformers reads
them as a block-diagonal attention mask, as sft's packed conversations do.

Every `holdout_every`-th full-length piece (a stretch of a long document exactly `seq_len` long) is
set aside: the held-out long text that loss-by-position is measured on. The row order is a seeded
permutation per epoch, so `batch(step)` is a pure function of the step (exact resume).
"""

from __future__ import annotations

import numpy as np

from granite_cli.data.packing import EpochOrder, best_fit
from granite_cli.errors import BadInput
from granite_cli.training import IGNORE


class PackedDocuments:
    def __init__(self, shard_sets, seq_len: int, seed: int, batch_size: int, holdout_every: int = 0,
                 vocab_size: int | None = None):
        self.shard_sets, self.seq_len, self.seed, self.batch_size = shard_sets, seq_len, seed, batch_size
        self.vocab_size = vocab_size
        pieces, held, full_length = [], [], 0
        for set_index, shard_set in enumerate(shard_sets):
            for shard_index in range(len(shard_set.shards)):
                ends = shard_set.ends(shard_index).astype(np.int64)
                starts = np.concatenate([[0], ends[:-1]])
                for start, end in zip(starts.tolist(), ends.tolist()):
                    for begin in range(start, end, seq_len):
                        piece = (set_index, shard_index, begin, min(begin + seq_len, end))
                        if piece[3] - begin < 2:
                            continue  # a lone token has nothing to predict
                        if piece[3] - begin == seq_len:
                            full_length += 1
                            if holdout_every and full_length % holdout_every == 0:
                                held.append(piece)
                                continue
                        pieces.append(piece)
        if not pieces:
            raise BadInput("the shards hold no document of two tokens or more")
        self.pieces, self.held = pieces, held
        lengths = [end - begin for _, _, begin, end in pieces]
        order = np.random.default_rng([seed, 0]).permutation(len(pieces))
        self.rows = best_fit(lengths, seq_len, order)
        self.count = len(self.rows)
        self.tokens = sum(lengths)
        self.order = EpochOrder(self.count, seed)

    def batch(self, step: int) -> dict:
        positions = range(step * self.batch_size, (step + 1) * self.batch_size)
        return self.make_rows([[self.pieces[i] for i in self.rows[self.order[p]]] for p in positions])

    def heldout_rows(self, limit: int) -> dict:
        """Up to `limit` held-out full-length pieces, one a row (the same ones every time)."""
        return self.make_rows([[piece] for piece in self.held[:limit]]) if self.held else {}

    def piece_tokens(self, piece) -> np.ndarray:
        set_index, shard_index, begin, end = piece
        tokens = np.asarray(self.shard_sets[set_index].tokens(shard_index)[begin:end], dtype=np.int64)
        if self.vocab_size is not None and int(tokens.max()) >= self.vocab_size:
            raise BadInput(f"shard {shard_index} holds token id {int(tokens.max())}, beyond the vocabulary of {self.vocab_size}",
                           str(self.shard_sets[set_index].directory))
        return tokens

    def make_rows(self, rows: list[list[tuple]]) -> dict:
        """input_ids, labels (the next token inside the same piece) and position ids restarting at each piece."""
        import torch

        ids = np.zeros((len(rows), self.seq_len), dtype=np.int64)
        labels = np.full((len(rows), self.seq_len), IGNORE, dtype=np.int64)
        positions = np.tile(np.arange(self.seq_len, dtype=np.int64), (len(rows), 1))
        for r, row in enumerate(rows):
            start = 0
            for piece in row:
                tokens = self.piece_tokens(piece)
                n = len(tokens)
                ids[r, start:start + n] = tokens
                labels[r, start:start + n - 1] = tokens[1:]
                positions[r, start:start + n] = np.arange(n)
                start += n
            positions[r, start:] = np.arange(self.seq_len - start)
        return {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels),
                "position_ids": torch.from_numpy(positions)}
