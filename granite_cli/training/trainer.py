"""The training loop every training stage shares (pretrain, sft, extend-context, rl).

A stage hands the trainer a model, a `BatchSource` (the global batch for a step, the same on every
rank, as a pure function of the step number), settings and a loss (granite_cli/training/losses.py;
cross-entropy unless the stage brings its own). What the loss reads comes from the scorer that wraps
the model: `TokenLogprobs` (log p of each label) unless the stage brings its own (the reward model's
`RewardScores`: a scalar at each labelled position). Because data order is a function of the step, exact
resume needs only the weights, the optimizer state and the step: a run killed at any point and
restarted from its last checkpoint takes the same batches and ends with the same weights.

Each step (`step_on`): split the global batch across ranks (with context parallelism, across groups of
ranks, each rank of a group taking its share of every row's positions) and into micro-batches; score each with
`TokenLogprobs` (chunked: no full-vocabulary logits); sum the loss and divide by the loss's
denominator over the global batch (so accumulation and data parallelism give the gradient of one
big batch); clip; set the LR from the schedule; step. A stage that makes its own batches (rl: several
optimizer steps on one rollout batch) calls `step_on` itself; `logprobs(batch)` and
`logprobs(batch, reference=True)` score a batch without gradients under the current policy and under a
frozen copy of the starting model. With --profile A:B, steps A to B are timed part by part (the batch, forward,
backward, optimizer) and recorded by torch.profiler (granite_cli/training/profiling.py).
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

from granite_cli.training import distributed
from granite_cli.console import console
from granite_cli.errors import BadInput
from granite_cli.training import IGNORE
from granite_cli.training.losses import CrossEntropy, Loss
from granite_cli.training.profiling import StepProfiler

STEP_DIR = re.compile(r"^step-(\d+)$")


class BatchSource(Protocol):
    def batch(self, step: int) -> dict:
        """The global batch of `step`: {"input_ids": [B, T], "labels": [B, T], optional "position_ids"} plus
            whatever else the loss reads, every value a tensor with B rows.

        A source may also have `report() -> dict`: metrics of its own (rl's rewards and rollout timings) that the
        trainer adds to each metrics line."""


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
    loss_chunk_tokens: Optional[int] = None  # positions projected onto the vocabulary at a time (None: by vocabulary size)
    loss_kernel: str = "chunked"  # or liger (granite_cli/training/logprobs.py)
    context_parallel: int = 1  # ranks each row's positions are split across (granite_cli/training/context_parallel.py)
    profile_steps: Optional[tuple] = None  # (first, last) steps to profile (granite_cli/training/profiling.py)

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
    loss: Loss = field(default_factory=CrossEntropy)
    reference: Optional[object] = None  # a frozen model (the stage's starting point) for logprobs(reference=True)
    scorer: Optional[Callable] = None  # wraps the model: (model, chunk_tokens, kernel) -> module; TokenLogprobs by default
    profile_dir: Optional[Path] = None  # where --profile writes (beside the checkpoint)
    step: int = 0
    tokens: int = 0  # tokens processed (inputs, padding included): what the schedule, throughput and MFU count
    trained_tokens: int = 0  # target tokens the loss was taken over
    optimizer: object = field(init=False, default=None)
    last_lr: float = 0.0

    def __post_init__(self):
        import torch

        s = self.settings
        from granite_cli.training import context_parallel

        self.context = context_parallel.ContextParallel.create(self.dist, s.context_parallel)
        replicas = self.context.replicas  # what splits the rows: the processes, or their context-parallel groups
        if s.global_batch % (s.micro_batch * replicas):
            what = (f"processes ({replicas})" if self.context.size == 1 else
                    f"context-parallel groups ({replicas} of {self.context.size} processes)")
            raise BadInput(f"the global batch ({s.global_batch} sequences) must be a multiple of micro batch "
                           f"({s.micro_batch}) x {what}")
        from granite_cli.training.logprobs import TokenLogprobs

        from model.attention import use_fp32_attention

        self.scorer = self.scorer or TokenLogprobs
        # a loss with the entropy is scored by the chunked head while its old and reference log-probabilities would
        # take the fused one: their ratio would start off 1 by the two kernels' rounding
        if s.loss_kernel != "chunked" and self.loss.wants_entropy:
            raise BadInput(f"--loss-kernel {s.loss_kernel}: this stage's loss wants each position's entropy, which "
                           "the fused kernel does not give; leave it chunked")
        if self.dist.device.type == "cpu":  # each step's tensors live in host memory: reuse it (granite_cli/allocator.py)
            from granite_cli.allocator import keep_freed_memory

            keep_freed_memory()
        self.model.to(self.dist.device)
        if self.context.size > 1:
            self.model.set_attn_implementation(context_parallel.register())
        else:
            use_fp32_attention(self.model, s.precision, self.dist.device)
        # wrap before building the optimizer: FSDP2 replaces parameters with sharded ones in place
        self.wrapped = distributed.wrap(self.scorer(self.model, s.loss_chunk_tokens, s.loss_kernel), self.dist, s.parallel)
        self.optimizer = make_optimizer(self.model, s)
        self.forward = torch.compile(self.wrapped) if s.compile else self.wrapped
        if self.reference is not None:
            self.reference = self.scorer(self.reference.to(self.dist.device).eval().requires_grad_(False),
                                         s.loss_chunk_tokens, s.loss_kernel)
        self.metrics_path = self.workdir / "metrics.jsonl"
        self.profiler = StepProfiler(s.profile_steps, self.profile_dir, self.dist.device, self.dist.rank, self.dist.main)

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
                with self.profiler.step(self.step + 1):
                    with self.profiler.region("batch"):
                        batch = self.train.batch(self.step)
                    result = self.step_on(batch)
                n_tokens = result.pop("tokens_processed")
                window_tokens += n_tokens
                if self.step % s.log_every == 0 or self.step == s.steps:
                    elapsed = time.perf_counter() - window_start
                    last = self.log({"step": self.step, "tokens": self.tokens, "trained_tokens": self.trained_tokens,
                                     **result, "lr": self.last_lr, **self.speed(window_tokens, elapsed),
                                     **(self.train.report() if hasattr(self.train, "report") else {})})
                    window_start, window_tokens = time.perf_counter(), 0
                    bar.update(task, rate=f"loss {result['loss']:.3f}  lr {self.last_lr:.2e}  {last['tokens_per_second']:,.0f} tok/s")
                if self.validation and (self.step == s.steps or (s.eval_every and self.step % s.eval_every == 0)):
                    last.update(self.log({"step": self.step, "tokens": self.tokens, **self.validation(self.wrapped)}))
                if s.checkpoint_every and self.step % s.checkpoint_every == 0 and self.step < s.steps:
                    self.checkpoint()
                bar.update(task, completed=self.step)
        last["wall_seconds"] = time.perf_counter() - started
        return last

    def step_on(self, batch: dict) -> dict:
        """One optimizer step on a global batch: {"loss", "grad_norm", the loss's metrics, "tokens_processed"}."""
        import torch

        s = self.settings
        targets = int((batch["labels"] != IGNORE).sum())
        denominator = self.loss.denominator(batch)
        if targets == 0 or denominator <= 0:
            raise BadInput(f"step {self.step}: the batch has no target tokens")
        replicas, replica = self.context.replicas, self.context.replica
        rows = len(batch["input_ids"]) // replicas
        if rows * replicas != len(batch["input_ids"]):
            raise BadInput(f"a batch of {len(batch['input_ids'])} rows does not split into {replicas} process(es)")
        mine = {k: v[replica * rows:(replica + 1) * rows] for k, v in batch.items()}
        # the last micro-batch may be shorter (rl's packed batches vary in rows): the loss is a sum over the global
        # batch divided once by its denominator, so how rows group into micro-batches changes nothing
        micro_steps = math.ceil(rows / s.micro_batch)
        sums: dict[str, torch.Tensor] = {"loss": torch.zeros((), device=self.dist.device)}
        for i in range(micro_steps):
            micro = {k: v[i * s.micro_batch:(i + 1) * s.micro_batch].to(self.dist.device) for k, v in mine.items()}
            attention = {}
            if self.context.size > 1:  # this rank's share of every row's positions
                micro, attention["context_parallel"] = self.context.split(micro)
            with distributed.no_sync(self.wrapped, sync=i == micro_steps - 1), self.autocast():
                with self.profiler.region("forward"):
                    logprobs, entropy = self.forward(micro["input_ids"], micro["labels"], micro.get("position_ids"),
                                                     entropy=self.loss.wants_entropy, **attention)
                    loss_sum, metrics = self.loss(logprobs, entropy, micro)
                with self.profiler.region("backward"):
                    (loss_sum * self.dist.world / denominator).backward()
            for name, value in {"loss": loss_sum, **metrics}.items():
                sums[name] = sums.get(name, 0) + value.detach().float()
        with self.profiler.region("optimizer"):
            totals = torch.stack([sums[name] for name in sums])
            distributed.all_reduce_sum(totals, self.dist)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), s.grad_clip if s.grad_clip > 0 else math.inf)
            if hasattr(grad_norm, "full_tensor"):
                grad_norm = grad_norm.full_tensor()
            self.last_lr = s.schedule.lr(self.position(), s.total_units() + self.offset())
            for group in self.optimizer.param_groups:
                group["lr"] = self.last_lr
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        n_tokens = int(batch["input_ids"].numel())
        self.step += 1
        self.tokens += n_tokens
        self.trained_tokens += targets
        return {**{name: float(value) / denominator for name, value in zip(sums, totals)},
                "grad_norm": float(grad_norm), "tokens_processed": n_tokens}

    def logprobs(self, batch: dict, reference: bool = False, entropy: bool = False):
        """Per-token log-probabilities of a batch's labels (0 where there is none), without gradients, on the CPU:
        the current policy's, or the frozen reference model's with reference=True; with entropy=True, the pair
        (log-probabilities, entropy of each position's distribution)."""
        import torch

        if reference and self.reference is None:
            raise ValueError("this trainer holds no reference model")
        scorer = self.reference if reference else self.wrapped
        rows, entropies = [], []
        with torch.no_grad(), self.autocast():
            for start in range(0, len(batch["input_ids"]), self.settings.micro_batch):
                micro = {k: v[start:start + self.settings.micro_batch].to(self.dist.device) for k, v in batch.items()}
                logprobs, ent = scorer(micro["input_ids"], micro["labels"], micro.get("position_ids"), entropy=entropy)
                rows.append(logprobs.float().cpu())
                if entropy:
                    entropies.append(ent.float().cpu())
        return (torch.cat(rows), torch.cat(entropies)) if entropy else torch.cat(rows)

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
    def model_state(self) -> dict:
        """The full (gathered) weights under the model's own names, as a checkpoint stores them."""
        return {name.removeprefix("lm."): tensor for name, tensor in distributed.full_model_state(self.wrapped).items()}

    def trainer_state(self) -> dict:
        import torch

        return {"step": self.step, "tokens": self.tokens, "trained_tokens": self.trained_tokens, "last_lr": self.last_lr,
                "optimizer": distributed.full_optimizer_state(self.wrapped, self.optimizer),
                "torch_rng": torch.get_rng_state()}

    def checkpoint(self) -> None:
        """Save a resumable checkpoint under workdir/checkpoints/step-N and keep only the last few."""
        model_state = self.model_state()
        state = self.trainer_state()
        if self.dist.main:
            directory = self.workdir / "checkpoints" / f"step-{self.step:07d}"
            self.save(directory, model_state, state)
            for old in step_checkpoints(self.workdir)[:-self.settings.keep_last]:
                shutil.rmtree(old)

    def resume(self) -> bool:
        """Continue from the newest step checkpoint in workdir; False when there is none, and the run starts over (the
        metric lines of a run killed before its first checkpoint are dropped, or the curve would hold them twice)."""
        import torch

        from model.checkpoint import load_trainer_state

        found = step_checkpoints(self.workdir)
        if not found:
            truncate_metrics(self.metrics_path, 0)
            return False
        latest = found[-1]
        from safetensors.torch import load_file

        weights = load_file(str(latest / "model.safetensors"))
        if "lm_head.weight" not in weights and "model.embed_tokens.weight" in weights:
            weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
        distributed.load_model_state(self.wrapped, {f"lm.{name}": tensor for name, tensor in weights.items()})
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
