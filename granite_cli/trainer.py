"""The training loop every training stage shares (pretrain now; sft and rl reuse it).

A stage hands the trainer a model, a `BatchSource` (the global batch for a step, the same on every
rank, as a pure function of the step number) and settings. Because data order is a function of the
step, exact resume needs only the weights, the optimizer state and the step: a run killed at any
point and restarted from its last checkpoint takes the same batches and ends with the same weights.

Each step: split the global batch across ranks and into micro-batches; sum the cross-entropy over
target tokens and divide by the global batch's target-token count (so accumulation and data
parallelism give the same gradient as one big batch); clip; set the LR from the schedule; step.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Protocol

from granite_cli import distributed
from granite_cli.console import console
from granite_cli.errors import BadInput

IGNORE = -100
STEP_DIR = re.compile(r"^step-(\d+)$")


class BatchSource(Protocol):
    def batch(self, step: int) -> dict:
        """The global batch of `step`: {"input_ids": [B, T], "labels": [B, T], optional "position_ids"}."""


@dataclass
class TrainSettings:
    steps: int
    global_batch: int
    micro_batch: int
    seq_len: int
    schedule: object
    schedule_unit: str = "tokens"
    tokens_offset: int = 0
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0
    log_every: int = 10
    eval_every: int = 0
    checkpoint_every: int = 0
    keep_last: int = 2
    precision: str = "fp32"
    compile: bool = False
    parallel: str = "ddp"
    peak_flops: Optional[float] = None
    flops_per_token: float = 0.0

    def total_units(self) -> float:
        return self.steps * (self.global_batch * self.seq_len if self.schedule_unit == "tokens" else 1)


@dataclass
class Trainer:
    model: object
    settings: TrainSettings
    train: BatchSource
    dist: distributed.Dist
    workdir: Path
    save: Callable[[Path, dict, Optional[dict]], None]
    validation: Optional[Callable[[object], dict]] = None
    step: int = 0
    tokens: int = 0  # tokens processed (inputs, padding included): what the schedule, throughput and MFU count
    trained_tokens: int = 0  # target tokens the loss was taken over
    optimizer: object = field(init=False, default=None)
    last_lr: float = 0.0

    def __post_init__(self):
        import torch

        s = self.settings
        if s.global_batch % (s.micro_batch * self.dist.world):
            raise BadInput(f"the global batch ({s.global_batch} sequences) must be a multiple of micro batch "
                           f"({s.micro_batch}) x processes ({self.dist.world})")
        self.model.to(self.dist.device)
        # wrap before building the optimizer: FSDP2 replaces parameters with sharded ones in place
        self.wrapped = distributed.wrap(self.model, self.dist, s.parallel)
        self.optimizer = make_optimizer(self.model, s)
        self.forward = torch.compile(self.wrapped) if s.compile else self.wrapped
        self.metrics_path = self.workdir / "metrics.jsonl"

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict:
        s = self.settings
        last: dict = {}
        started = time.perf_counter()
        window_start, window_tokens = time.perf_counter(), 0
        from granite_cli.console import progress

        with progress(transient=False) as bar:
            task = bar.add_task("train", total=s.steps, completed=self.step, rate="")
            while self.step < s.steps:
                loss, grad_norm, targets, n_tokens = self.train_step()
                self.step += 1
                self.tokens += n_tokens
                self.trained_tokens += targets
                window_tokens += n_tokens
                if self.step % s.log_every == 0 or self.step == s.steps:
                    elapsed = time.perf_counter() - window_start
                    last = self.log({"step": self.step, "tokens": self.tokens, "trained_tokens": self.trained_tokens,
                                     "loss": loss, "lr": self.last_lr,
                                     "grad_norm": grad_norm, **self.speed(window_tokens, elapsed)})
                    window_start, window_tokens = time.perf_counter(), 0
                    bar.update(task, rate=f"loss {loss:.3f}  lr {self.last_lr:.2e}  {last['tokens_per_second']:,.0f} tok/s")
                if self.validation and (self.step == s.steps or (s.eval_every and self.step % s.eval_every == 0)):
                    last.update(self.log({"step": self.step, "tokens": self.tokens, **self.validation(self.wrapped)}))
                if s.checkpoint_every and self.step % s.checkpoint_every == 0 and self.step < s.steps:
                    self.checkpoint()
                bar.update(task, completed=self.step)
        last["wall_seconds"] = time.perf_counter() - started
        return last

    def train_step(self) -> tuple[float, float, int, int]:
        """One optimizer step: (mean loss over target tokens, gradient norm, target tokens, tokens processed)."""
        import torch

        s = self.settings
        batch = self.train.batch(self.step)
        targets = int((batch["labels"] != IGNORE).sum())
        if targets == 0:
            raise BadInput(f"step {self.step}: the batch has no target tokens")
        rows = s.global_batch // self.dist.world
        mine = {k: v[self.dist.rank * rows:(self.dist.rank + 1) * rows] for k, v in batch.items()}
        micro_steps = rows // s.micro_batch
        loss_sum = torch.zeros((), device=self.dist.device)
        for i in range(micro_steps):
            micro = {k: v[i * s.micro_batch:(i + 1) * s.micro_batch].to(self.dist.device) for k, v in mine.items()}
            with distributed.no_sync(self.wrapped, sync=i == micro_steps - 1), self.autocast():
                ce = cross_entropy_sum(self.forward, micro)
                (ce * self.dist.world / targets).backward()
            loss_sum += ce.detach().float()
        distributed.all_reduce_sum(loss_sum, self.dist)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), s.grad_clip if s.grad_clip > 0 else math.inf)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        self.last_lr = s.schedule.lr(self.position(), s.total_units() + self.offset())
        for group in self.optimizer.param_groups:
            group["lr"] = self.last_lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss_sum) / targets, float(grad_norm), targets, int(batch["input_ids"].numel())

    def position(self) -> float:
        """Where the schedule is: tokens (or steps) since the first run of the lineage."""
        s = self.settings
        done = self.step * s.global_batch * s.seq_len if s.schedule_unit == "tokens" else self.step
        return done + self.offset()

    def offset(self) -> float:
        return self.settings.tokens_offset if self.settings.schedule_unit == "tokens" else 0

    def autocast(self):
        import torch

        enabled = self.settings.precision == "bf16"
        return torch.autocast(self.dist.device.type, dtype=torch.bfloat16, enabled=enabled)

    def speed(self, tokens: int, seconds: float) -> dict:
        rate = tokens / max(seconds, 1e-9)
        s = self.settings
        mfu = rate * s.flops_per_token / (s.peak_flops * self.dist.world) if s.peak_flops else None
        return {"tokens_per_second": rate, "mfu": mfu}

    def log(self, record: dict) -> dict:
        if self.dist.main:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        return record

    # ------------------------------------------------------------------ checkpoints and resume
    def trainer_state(self) -> dict:
        import torch

        return {"step": self.step, "tokens": self.tokens, "trained_tokens": self.trained_tokens, "last_lr": self.last_lr,
                "optimizer": distributed.full_optimizer_state(self.wrapped, self.optimizer),
                "torch_rng": torch.get_rng_state()}

    def checkpoint(self) -> None:
        """Save a resumable checkpoint under workdir/checkpoints/step-N and keep only the last few."""
        model_state = distributed.full_model_state(self.wrapped)
        state = self.trainer_state()
        if self.dist.main:
            directory = self.workdir / "checkpoints" / f"step-{self.step:07d}"
            self.save(directory, model_state, state)
            for old in step_checkpoints(self.workdir)[:-self.settings.keep_last]:
                shutil.rmtree(old)

    def resume(self) -> bool:
        """Continue from the newest step checkpoint in workdir; False when there is none."""
        import torch

        from model.checkpoint import load_trainer_state

        found = step_checkpoints(self.workdir)
        if not found:
            return False
        latest = found[-1]
        from safetensors.torch import load_file

        weights = load_file(str(latest / "model.safetensors"))
        if "lm_head.weight" not in weights and "model.embed_tokens.weight" in weights:
            weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
        distributed.load_model_state(self.wrapped, weights)
        state = load_trainer_state(latest)
        distributed.load_optimizer_state(self.wrapped, self.optimizer, state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        self.step, self.tokens, self.last_lr = state["step"], state["tokens"], state["last_lr"]
        self.trained_tokens = state.get("trained_tokens", self.tokens)
        truncate_metrics(self.metrics_path, self.step)
        console.print(f"resumed from {latest} (step {self.step})")
        return True


def make_optimizer(model, s: TrainSettings):
    """AdamW; no weight decay on embeddings, norms and other vectors (they are not projection weights)."""
    import torch

    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 and "embed" not in name else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": s.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=0.0, betas=tuple(s.betas), eps=s.eps, foreach=True)


def cross_entropy_sum(model, micro: dict):
    """Summed next-token cross-entropy over the target tokens of a micro-batch (labels already shifted)."""
    import torch.nn.functional as F

    inputs = {"input_ids": micro["input_ids"]}
    if "position_ids" in micro:
        inputs["position_ids"] = micro["position_ids"]
    logits = model(**inputs, use_cache=False).logits
    return F.cross_entropy(logits.float().flatten(0, 1), micro["labels"].flatten(), ignore_index=IGNORE, reduction="sum")


def step_checkpoints(workdir: Path) -> list[Path]:
    root = workdir / "checkpoints"
    if not root.exists():
        return []
    return sorted((p for p in root.iterdir() if STEP_DIR.match(p.name)), key=lambda p: int(STEP_DIR.match(p.name)[1]))


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines past `step` so a resumed run's curve continues without duplicates."""
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept))
