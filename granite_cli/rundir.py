"""The run directory: where each stage finds its default inputs and writes its outputs.

    RUN/tokenizer/                       tokenize train
    RUN/shards/heldout/, phase-N/        tokenize (mix --heldout, mix --phase N)
    RUN/checkpoints/pretrain-phase-N/    pretrain --phase N (its step checkpoints beside it: pretrain-phase-N.steps/)
    RUN/checkpoints/extend-context/      extend-context (the merged result of its last stage)
    RUN/checkpoints/sft/                 sft
    RUN/filter/kept.jsonl.zst, audit.jsonl, judge-cache.sqlite    filter
    RUN/eval/<checkpoint name>/          eval (results.json, samples.jsonl)
    RUN/.cache/                          derived data a rerun may reuse (source token counts)

Every stage asks this class rather than joining strings, so the layout is written down once.
Explicit paths on the command line always win.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from granite_cli.errors import BadInput


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    def shards(self, name: str) -> Path:
        """A shard directory: `phase-N`, `heldout`, or a phase-5 stage's `phase-5-NAME`."""
        return self.root / "shards" / name

    @property
    def heldout_shards(self) -> Path:
        return self.shards("heldout")

    def checkpoint(self, name: str) -> Path:
        return self.root / "checkpoints" / name

    @classmethod
    def holding(cls, checkpoint: Path) -> Optional["RunDir"]:
        """The run directory a checkpoint lies in (RUN/checkpoints/NAME), or None for a checkpoint elsewhere."""
        return cls(checkpoint.parent.parent) if checkpoint.parent.name == "checkpoints" else None

    def pretrain_checkpoint(self, phase: int) -> Path:
        return self.checkpoint(f"pretrain-phase-{phase}")

    @property
    def filter_dir(self) -> Path:
        return self.root / "filter"

    @property
    def kept_samples(self) -> Path:
        return self.filter_dir / "kept.jsonl.zst"

    @property
    def eval_root(self) -> Path:
        return self.root / "eval"

    def eval_dir(self, name: str) -> Path:
        return self.eval_root / name

    @property
    def cache(self) -> Path:
        return self.root / ".cache"

    def newest_base_model(self) -> Optional[Path]:
        """The last pre-training result: extend-context's, else the highest pretrain phase's (None if none is finished)."""
        from model.checkpoint import is_checkpoint

        phases = [p for p in (self.root / "checkpoints").glob("pretrain-phase-*") if p.name.rsplit("-", 1)[1].isdigit()]
        candidates = [self.checkpoint("extend-context")] + sorted(phases, key=lambda p: int(p.name.rsplit("-", 1)[1]),
                                                                  reverse=True)
        return next((c for c in candidates if is_checkpoint(c)), None)


def resolve_init(init_from: Optional[str], default: Optional[Path], missing: str) -> Optional[Path]:
    """The checkpoint a training stage starts from: --init-from (a checkpoint directory, or 'none' for a fresh
    model), else `default`; `missing` says what to do when the default is not a finished checkpoint."""
    from model.checkpoint import is_checkpoint

    if init_from == "none":
        return None
    if init_from:
        if not (Path(init_from) / "config.json").exists():
            raise BadInput("--init-from is not a checkpoint directory (no config.json)", init_from)
        return Path(init_from)
    if default is None or not is_checkpoint(default):
        raise BadInput(missing)
    return default
