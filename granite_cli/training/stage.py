"""What every training stage (pretrain, sft, extend-context, rl) does around the shared loop.

    @training_command                         # adds the options every training stage takes
    def pretrain_command(..., flags: TrainingFlags):
        with TrainingRun("pretrain", out, flags) as run:
            model, lineage = starting_model(parent, preset, tokenizer, seq_len, seed)
            trainer = run.trainer(model, run.settings(schedule, ...), batches, tokenizer_dir, lineage)
            trainer.validation = run.validator(rows, count)
            run.finish(trainer, run.train(trainer), arguments, inputs)

A run trains in `.<out>.partial/` beside its output and is published under `out` when it finishes,
so an interrupted run never looks like a checkpoint; `--resume` continues it, `--overwrite`
discards it. The final checkpoint carries the trainer state and a lineage entry.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import inspect
import json
import shutil
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Optional

import typer

from granite_cli import options
from granite_cli.console import console
from granite_cli.data.atomic import OutputLock, atomic_path, partial_directory, publish
from granite_cli.errors import BadInput
from granite_cli.training import distributed

PRECISIONS = ("auto", "fp32", "bf16")
RUN_SETTINGS = "run-settings.json"  # in the work directory: what a --resume must match


@dataclass
class TrainingFlags:
    """The options every training stage takes (the help text is each field's Typer option below)."""

    micro_batch: int = 16
    eval_every: int = 0
    checkpoint_every: int = 0
    keep_last: int = 2
    log_every: int = 10
    resume: bool = False
    overwrite: bool = False
    seed: int = 0
    precision: str = "auto"
    compile: bool = False
    loss_kernel: str = "chunked"
    loss_chunk_tokens: Optional[int] = None
    parallel: str = "ddp"
    device: str = "auto"
    peak_tflops: Optional[float] = None
    profile: Optional[str] = None


_OPTIONS = {
    "micro_batch": (int, typer.Option(16, "--micro-batch", help="Sequences per forward/backward on each process (gradient accumulation covers the rest).")),
    "eval_every": (int, typer.Option(0, "--eval-every", help="Validate every N steps (0: only at the end).")),
    "checkpoint_every": (int, typer.Option(0, "--checkpoint-every", help="Save a resumable checkpoint every N steps (0: only the final one).")),
    "keep_last": (int, typer.Option(2, "--keep-last", help="Step checkpoints to keep.")),
    "log_every": (int, typer.Option(10, "--log-every", help="Steps between metrics lines.")),
    "resume": (bool, typer.Option(False, "--resume", help="Continue an interrupted run from its last step checkpoint.")),
    "overwrite": (bool, typer.Option(False, "--overwrite", help="Replace an existing checkpoint or interrupted run.")),
    "seed": (int, options.SeedOption),
    "precision": (str, typer.Option("auto", "--precision", help="fp32, bf16 (autocast), or auto: bf16 on a GPU that has it, else fp32.")),
    "compile": (bool, typer.Option(False, "--compile", help="torch.compile the model.")),
    "loss_kernel": (str, typer.Option("chunked", "--loss-kernel", help="The output projection and cross-entropy: chunked "
                                      "(granite's, a chunk of positions at a time) or liger (Liger's fused kernel: CUDA, "
                                      "pip install 'granite-recipe[gpu]'; faster for micro-batches of 16K tokens and "
                                      "more, slower at 4K). rl, whose loss wants the entropy too, takes chunked only.")),
    "loss_chunk_tokens": (Optional[int], typer.Option(None, "--loss-chunk-tokens", min=1, help="Positions the chunked loss "
                                                      "projects onto the vocabulary at a time. Default: as many as keep "
                                                      "a chunk's fp32 logits near 256 MB (668 for Granite's 100,352 "
                                                      "entries), a CPU's size; a GPU may take more.")),
    "parallel": (str, typer.Option("ddp", "--parallel", help="Under torchrun: ddp or fsdp (FSDP2 fully_shard per layer).")),
    "device": (str, options.DeviceOption),
    "peak_tflops": (Optional[float], typer.Option(None, "--peak-tflops", help="Device peak for MFU, in TFLOP/s. Default: measured at start.")),
    "profile": (Optional[str], typer.Option(None, "--profile", metavar="FIRST:LAST", help="Profile these steps (counted "
                                            "from 1; past compilation, e.g. 4:6): the time of each part of a step and "
                                            "of each operator (kernel on a GPU), printed and written to OUT.profile/ "
                                            "with a trace for Perfetto. Those steps run a little slower (the device is "
                                            "synchronised between parts). Default: off.")),
}
assert list(_OPTIONS) == [f.name for f in fields(TrainingFlags)]


def training_command(command: Optional[Callable] = None, **defaults) -> Callable:
    """Give a Typer command the shared training options; it receives them as one `flags: TrainingFlags` argument.

    `@training_command(log_every=1)` changes a shared option's default for one stage (rl logs every step)."""
    if command is None:
        return functools.partial(training_command, **defaults)
    signature = inspect.signature(command)
    own = [p for p in signature.parameters.values() if p.name != "flags"]
    shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=_with_default(option, defaults.get(name)),
                                annotation=kind)
              for name, (kind, option) in _OPTIONS.items()]

    @functools.wraps(command)
    def wrapper(**kwargs):
        flags = TrainingFlags(**{name: kwargs.pop(name) for name in _OPTIONS})
        return command(**kwargs, flags=flags)

    wrapper.__signature__ = signature.replace(parameters=own + shared)
    wrapper.__annotations__ = {**{k: v for k, v in command.__annotations__.items() if k != "flags"},
                               **{name: kind for name, (kind, _) in _OPTIONS.items()}}
    return wrapper


def _with_default(option, default):
    if default is None:
        return option
    changed = copy.copy(option)
    changed.default = default
    return changed


class TrainingRun:
    """One training stage's run: its output and work directory, its processes, and the way it ends."""

    def __init__(self, stage: str, out: Path, flags: TrainingFlags):
        self.stage, self.out, self.flags = stage, Path(out), flags
        self.workdir = partial_directory(self.out)
        # the first process holds the output (under torchrun the others share its run)
        self.lock = OutputLock(self.out).__enter__() if distributed.launch_position()[0] == 0 else None
        prepare_output(self.out, self.workdir, flags.resume, flags.overwrite)
        self.dist = None

    def __enter__(self) -> "TrainingRun":
        self.dist = distributed.setup(self.flags.device)
        return self

    def __exit__(self, *exc) -> None:
        distributed.teardown(self.dist)
        if self.lock is not None:
            self.lock.__exit__()

    def settings(self, schedule, optimizer, *, offset: int, n_steps: int, global_batch: int, seq: int, model):
        """TrainSettings from a built schedule, the recipe's optimizer settings (any table with weight_decay, betas and
        grad_clip: [phases.training], [sft]) and the flags."""
        import torch

        from granite_cli.training.flops import flops_per_token, measure_peak_flops
        from granite_cli.training.profiling import parse_steps
        from granite_cli.training.trainer import TrainSettings

        f = self.flags
        precision = resolve_precision(f.precision, self.dist)
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        peak_flops = f.peak_tflops * 1e12 if f.peak_tflops else measure_peak_flops(self.dist.device, dtype)
        return TrainSettings(
            steps=n_steps, global_batch=global_batch, micro_batch=min(f.micro_batch, global_batch), seq_len=seq,
            schedule=schedule, tokens_offset=offset, weight_decay=optimizer.weight_decay,
            betas=tuple(optimizer.betas), grad_clip=optimizer.grad_clip,
            log_every=f.log_every, eval_every=f.eval_every, checkpoint_every=f.checkpoint_every, keep_last=f.keep_last,
            precision=precision, compile=f.compile, loss_kernel=f.loss_kernel, loss_chunk_tokens=f.loss_chunk_tokens,
            parallel=f.parallel, peak_flops=peak_flops,
            flops_per_token=flops_per_token(model.config, seq),
            profile_steps=parse_steps(f.profile, n_steps) if f.profile else None)

    def trainer(self, model, settings, batches, tokenizer_dir: Path, lineage: list[dict], **extra):
        """The shared Trainer, saving step checkpoints with this run's tokenizer and lineage (`extra`: loss, reference)."""
        from granite_cli.training.trainer import Trainer
        from model.checkpoint import save_checkpoint

        self.tokenizer_dir, self.lineage = Path(tokenizer_dir), lineage

        def save(directory: Path, model_state: dict, trainer_state: Optional[dict]) -> None:
            save_checkpoint(directory, model_state, model.config, self.tokenizer_dir, lineage, trainer_state)

        self.workdir.mkdir(parents=True, exist_ok=True)
        return Trainer(model, settings, batches, self.dist, self.workdir, save=save,
                       profile_dir=self.out.with_name(f"{self.out.name}.profile"), **extra)

    def validator(self, trainer, rows: Callable[[list[int]], dict], count: int, byte_lengths=None):
        from granite_cli.training.validation import Validator

        return Validator(rows, count, min(self.flags.micro_batch, 16), self.dist, trainer.autocast, byte_lengths)

    def train(self, trainer) -> dict:
        """Resume when asked (from the newest step checkpoint, with the settings the run started with), then run to the end."""
        self.check_settings(trainer)
        if self.flags.resume and not trainer.resume():
            console.print("no step checkpoint to resume from: starting from the beginning")
        return trainer.run()

    def check_settings(self, trainer) -> None:
        """Record the run's settings when it starts; refuse a --resume whose settings differ (naming each), since
        continuing would splice two runs into one checkpoint whose lineage tells only the second."""
        s = trainer.settings
        now = json.loads(json.dumps({
            "seed": self.flags.seed, "steps": s.steps, "global_batch": s.global_batch, "seq_len": s.seq_len,
            "schedule": repr(s.schedule), "weight_decay": s.weight_decay, "betas": s.betas, "grad_clip": s.grad_clip,
            "precision": s.precision}))
        recorded = self.workdir / RUN_SETTINGS
        if self.flags.resume and recorded.exists():
            before = json.loads(recorded.read_text())
            changed = [f"{key} {before.get(key)} -> {value}" for key, value in now.items() if before.get(key) != value]
            if changed:
                raise BadInput(f"--resume continues the run in {self.workdir} with other settings than it started with "
                               f"({'; '.join(changed)}): resume with the same flags, or pass --overwrite to start over")
        elif self.dist.main:
            with atomic_path(recorded) as tmp:
                tmp.write_text(json.dumps(now, indent=2))

    def finish(self, trainer, summary: dict, arguments: dict, inputs: list[dict], results: Optional[dict] = None,
               files: Optional[dict[str, str]] = None) -> dict:
        """Write the final checkpoint with its lineage entry, publish it under `out`; every rank waits for it.

        `results` join the lineage entry's metrics (rl's held-out rewards); `files` ({name: text}) are written into
        the checkpoint beside it (rl's per-prompt held-out scores)."""
        from model.checkpoint import lineage_entry, save_checkpoint

        model_state = trainer.model_state()
        state = trainer.trainer_state()
        metrics = {k: v for k, v in summary.items() if k in ("loss", "val_loss", "val_bpb", "tokens_per_second", "mfu", "wall_seconds")}
        metrics.update(tokens=trainer.tokens, trained_tokens=trainer.trained_tokens, steps=trainer.step, final_lr=trainer.last_lr)
        metrics.update(results or {})
        if trainer.dist.main:
            entry = lineage_entry(self.stage, {**arguments, "seed": self.flags.seed}, inputs, metrics)
            final = self.workdir / "final"
            save_checkpoint(final, model_state, trainer.model.config, self.tokenizer_dir, self.lineage + [entry], state)
            for name, text in (files or {}).items():
                (final / name).write_text(text)
            if (self.workdir / "metrics.jsonl").exists():
                (self.workdir / "metrics.jsonl").rename(final / "metrics.jsonl")
            publish(final, self.out)
            keep_step_checkpoints(self.workdir / "checkpoints", step_checkpoints_of(self.out))
            shutil.rmtree(self.workdir)
            shown = ", ".join(f"{k.replace('_', ' ')} {metrics[k]:.4f}" for k in ("loss", "val_loss", "val_bpb") if k in metrics)
            console.print(f"wrote [bold]{self.out}[/]: {shown}")
        distributed.barrier(self.dist)  # rank 0 writes the checkpoint while the others wait for it
        return metrics


def step_checkpoints_of(out: Path) -> Path:
    """Where a finished run's step checkpoints stay: beside the checkpoint, not inside what a user copies to share it."""
    return out.with_name(f"{out.name}.steps")


def keep_step_checkpoints(steps: Path, beside: Path) -> None:
    """Move the finished steps beside the checkpoint; a save a kill interrupted (a hidden temporary) goes."""
    if not steps.exists():
        return
    for leftover in steps.glob(".*"):
        shutil.rmtree(leftover, ignore_errors=True)
    if any(steps.iterdir()):
        publish(steps, beside)


def prepare_output(out: Path, workdir: Path, resume: bool, overwrite: bool) -> None:
    from model.checkpoint import is_checkpoint

    if overwrite:
        shutil.rmtree(workdir, ignore_errors=True)
        return
    if is_checkpoint(out) and not workdir.exists():
        raise BadInput("a finished checkpoint is already there" + (": the run finished, nothing to resume" if resume else "")
                       + "; pass --overwrite to train it again", str(out))
    if workdir.exists() and not (workdir / "checkpoints").exists():
        shutil.rmtree(workdir)  # a run that stopped before its first checkpoint left nothing to resume
    if workdir.exists() and not resume:
        raise BadInput(f"an interrupted run is in {workdir}: pass --resume to continue it, or --overwrite to start over")


def resolve_precision(precision: str, dist) -> str:
    import torch

    if precision not in PRECISIONS:
        raise BadInput(f"--precision must be one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if dist.device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return precision


def input_record(path: Path, manifest: Optional[Path] = None) -> dict:
    """How the lineage names an input: its path and the sha256 of its manifest (or of the file itself)."""
    digest_of = manifest if manifest is not None else path
    return {"path": str(path.resolve()), "sha256": hashlib.sha256(digest_of.read_bytes()).hexdigest()}


def starting_model(parent: Optional[Path], preset: str, tokenizer: dict, seq_len: int, seed: int):
    """The model to train and the lineage it carries: the parent's weights, or a fresh preset sized to the tokenizer."""
    import torch
    from transformers import GraniteForCausalLM

    from model.checkpoint import load_model, read_lineage
    from model.presets import build_config

    torch.manual_seed(seed)
    if parent:
        model = load_model(parent, dtype=torch.float32)
        lineage = read_lineage(parent)
        if model.config.vocab_size < tokenizer["size"]:
            raise BadInput(f"the checkpoint's vocabulary ({model.config.vocab_size}) is smaller than its tokenizer's", str(parent))
    else:
        config = build_config(preset, vocab_size=tokenizer["size"], bos_id=tokenizer["eos_id"], eos_id=tokenizer["eos_id"],
                              pad_id=tokenizer["pad_id"])
        model = GraniteForCausalLM(config)
        lineage = []
    if seq_len > model.config.max_position_embeddings:
        raise BadInput(f"--seq-len {seq_len} exceeds the model's max_position_embeddings ({model.config.max_position_embeddings})")
    return model, lineage
