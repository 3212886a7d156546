"""Token windows over shard directories: what pretrain and extend-context train on.

Documents run on across EOS, as in pre-training: each shard is cut into windows of seq_len+1
tokens (inputs and their next-token labels). The batch of step s takes positions [s·B, (s+1)·B)
of an endless sequence of seeded permutations (one per epoch), so it is a pure function of the step.
"""

from __future__ import annotations

from pathlib import Path

from granite_cli.errors import BadInput


def open_shards(directories: list[Path], tokenizer_sha: str):
    """Open shard directories; a directory of shard directories (one per job-array worker) counts as all of them."""
    from granite_cli.data.shards import MANIFEST, ShardSet

    expanded = []
    for directory in directories:
        parts = sorted(p for p in directory.iterdir() if (p / MANIFEST).exists()) if directory.is_dir() else []
        expanded.extend(parts if parts and not (directory / MANIFEST).exists() else [directory])
    sets = []
    for directory in expanded:
        shard_set = ShardSet(directory)
        made_with = shard_set.manifest["tokenizer"]["sha256"]
        if made_with != tokenizer_sha:
            raise BadInput(f"these shards were made with another tokenizer ({shard_set.manifest['tokenizer']['name']}, "
                           f"sha256 {made_with[:12]}) than the model's (sha256 {tokenizer_sha[:12]}); re-tokenize them",
                           str(directory))
        if shard_set.manifest["tokens"] == 0:
            raise BadInput("the shard directory holds no tokens", str(directory))
        shard_set.check_sizes()
        sets.append(shard_set)
    return sets


class TokenWindows:
    """Windows of seq_len+1 tokens cut from each shard (documents run on across EOS, as in pretraining).

    The batch of step s takes positions [s·B, (s+1)·B) of an endless sequence of seeded permutations
    (one per epoch), so it is a pure function of the step.
    """

    def __init__(self, shard_sets, seq_len: int, seed: int, batch_size: int, holdout_every: int = 0,
                 vocab_size: int | None = None):
        import numpy as np

        self.shard_sets, self.seq_len, self.seed, self.batch_size = shard_sets, seq_len, seed, batch_size
        self.vocab_size = vocab_size  # token ids at or above it are refused (a corrupt shard, not an index error)
        places = []
        for set_index, shard_set in enumerate(shard_sets):
            for shard_index, entry in enumerate(shard_set.shards):
                count = (entry["tokens"] - 1) // seq_len
                places.append(np.stack([np.full(count, set_index), np.full(count, shard_index),
                                        np.arange(count) * seq_len], axis=1))
        self.places = np.concatenate(places) if places else np.zeros((0, 3), dtype=np.int64)
        self.held = np.zeros((0, 3), dtype=np.int64)
        if holdout_every:
            mask = np.arange(len(self.places)) % holdout_every == holdout_every - 1
            self.held, self.places = self.places[mask], self.places[~mask]
        self.count = len(self.places)
        self._epoch_order: dict[int, object] = {}

    def heldout(self) -> "TokenWindows":
        """The windows set aside from training (when there is no separate held-out shard directory)."""
        view = TokenWindows.__new__(TokenWindows)
        view.shard_sets, view.seq_len, view.seed, view.batch_size = self.shard_sets, self.seq_len, self.seed, self.batch_size
        view.vocab_size = self.vocab_size
        view.places, view.held, view.count, view._epoch_order = self.held, self.held[:0], len(self.held), {}
        return view

    def order(self, epoch: int):
        import numpy as np

        if epoch not in self._epoch_order:
            self._epoch_order = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.count)}
        return self._epoch_order[epoch]

    def window(self, place):
        set_index, shard_index, start = (int(x) for x in place)
        window = self.shard_sets[set_index].tokens(shard_index)[start:start + self.seq_len + 1]
        if self.vocab_size is not None and len(window) and int(window.max()) >= self.vocab_size:
            raise BadInput(f"shard {shard_index} holds token id {int(window.max())}, beyond the vocabulary of "
                           f"{self.vocab_size}: the shard is corrupt or was not made with this tokenizer",
                           str(self.shard_sets[set_index].directory))
        return window

    def rows(self, positions) -> dict:
        import numpy as np
        import torch

        data = np.stack([self.window(self.places[p]) for p in positions]).astype(np.int64)
        tensor = torch.from_numpy(data)
        return {"input_ids": tensor[:, :-1], "labels": tensor[:, 1:].clone()}

    def batch(self, step: int) -> dict:
        positions = []
        for global_position in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch, offset = divmod(global_position, self.count)
            positions.append(self.order(epoch)[offset])
        return self.rows(positions)


    def validation_rows(self, tokens: int):
        """(rows(indices), count) for validating on `tokens` of these windows: a seeded sample, the same every time."""
        count = min(self.count, max(1, tokens // self.seq_len))
        sample = self.order(0)[:count].tolist()
        return (lambda indices: self.rows([sample[i] for i in indices])), count
