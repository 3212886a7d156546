"""What every training stage (pretrain, sft, later rl) does around the shared loop of trainer.py.

A run trains in `.<out>.partial/` beside its output and is renamed into place when it finishes, so
an interrupted run never looks like a checkpoint; `--resume` continues it, `--overwrite` discards it.
This module holds that life cycle, the settings every stage builds the same way (schedule,
precision, MFU), a loss validator over held-out rows, and the command-line options they share.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
from pathlib import Path
from typing import Callable, Optional

import typer

from granite_cli.console import console
from granite_cli.errors import BadInput

PRECISIONS = ("auto", "fp32", "bf16")

# ------------------------------------------------------------------ options every training stage takes
MicroBatchOption = typer.Option(16, "--micro-batch", help="Sequences per forward/backward on each process (gradient accumulation covers the rest).")
EvalEveryOption = typer.Option(0, "--eval-every", help="Validate every N steps (0: only at the end).")
CheckpointEveryOption = typer.Option(0, "--checkpoint-every", help="Save a resumable checkpoint every N steps (0: only the final one).")
KeepLastOption = typer.Option(2, "--keep-last", help="Step checkpoints to keep.")
LogEveryOption = typer.Option(10, "--log-every", help="Steps between metrics lines.")
ResumeOption = typer.Option(False, "--resume", help="Continue an interrupted run from its last step checkpoint.")
OverwriteOption = typer.Option(False, "--overwrite", help="Replace an existing checkpoint or interrupted run.")
PrecisionOption = typer.Option("auto", "--precision", help="fp32, bf16 (autocast), or auto: bf16 on a GPU that has it, else fp32.")
CompileOption = typer.Option(False, "--compile", help="torch.compile the model.")
ParallelOption = typer.Option("ddp", "--parallel", help="Under torchrun: ddp or fsdp (FSDP2 fully_shard per layer).")
PeakTflopsOption = typer.Option(None, "--peak-tflops", help="Device peak for MFU, in TFLOP/s. Default: measured at start.")


# ------------------------------------------------------------------ the run directory
def prepare_output(out: Path, workdir: Path, resume: bool, overwrite: bool) -> None:
    from model.checkpoint import is_checkpoint

    if overwrite:
        shutil.rmtree(workdir, ignore_errors=True)
        return
    if is_checkpoint(out) and not resume:
        raise BadInput("a finished checkpoint is already there; pass --overwrite to train it again", str(out))
    if workdir.exists() and not (workdir / "checkpoints").exists():
        shutil.rmtree(workdir)  # a run that stopped before its first checkpoint left nothing to resume
    if workdir.exists() and not resume:
        raise BadInput(f"an interrupted run is in {workdir}: pass --resume to continue it, or --overwrite to start over")


def work_directory(out: Path) -> Path:
    return out.with_name(f".{out.name}.partial")


def checkpoint_writer(config, tokenizer_dir: Path, lineage: list[dict]):
    from model.checkpoint import save_checkpoint

    def save(directory: Path, model_state: dict, trainer_state: Optional[dict]) -> None:
        save_checkpoint(directory, model_state, config, tokenizer_dir, lineage, trainer_state)

    return save


def input_record(path: Path, manifest: Optional[Path] = None) -> dict:
    """How the lineage names an input: its path and the sha256 of its manifest (or of the file itself)."""
    digest_of = manifest if manifest is not None else path
    return {"path": str(path.resolve()), "sha256": hashlib.sha256(digest_of.read_bytes()).hexdigest()}


def finish(trainer, stage: str, out: Path, workdir: Path, lineage: list[dict], arguments: dict, inputs: list[dict],
           tokenizer_dir: Path, summary: dict) -> dict:
    """Write the final checkpoint with its lineage entry, then move the run into place under `out`."""
    from model.checkpoint import lineage_entry, save_checkpoint

    model_state = trainer.model_state()
    state = trainer.trainer_state()
    metrics = {k: v for k, v in summary.items() if k in ("loss", "val_loss", "val_bpb", "tokens_per_second", "mfu", "wall_seconds")}
    metrics.update(tokens=trainer.tokens, trained_tokens=trainer.trained_tokens, steps=trainer.step, final_lr=trainer.last_lr)
    if not trainer.dist.main:
        return metrics
    entry = lineage_entry(stage, arguments, inputs, metrics)
    final = workdir / "final"
    save_checkpoint(final, model_state, trainer.model.config, tokenizer_dir, lineage + [entry], state)
    for name in ("checkpoints", "metrics.jsonl"):
        if (workdir / name).exists():
            os.replace(workdir / name, final / name)
    if out.exists():
        shutil.rmtree(out)
    os.replace(final, out)
    shutil.rmtree(workdir)
    shown = ", ".join(f"{k.replace('_', ' ')} {metrics[k]:.4f}" for k in ("loss", "val_loss", "val_bpb") if k in metrics)
    console.print(f"wrote [bold]{out}[/]: {shown}")
    return metrics


# ------------------------------------------------------------------ settings
def resolve_precision(precision: str, dist) -> str:
    import torch

    if precision not in PRECISIONS:
        raise BadInput(f"--precision must be one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if dist.device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return precision


def train_settings(schedule, training: dict, *, offset: int, n_steps: int, global_batch: int, micro_batch: int, seq: int,
                   model, dist, precision: str, compile: bool, parallel: str, peak_tflops: Optional[float], log_every: int,
                   eval_every: int, checkpoint_every: int, keep_last: int):
    """TrainSettings from a built schedule, a recipe's training table (weight decay, betas, clipping) and the flags."""
    import torch

    from granite_cli.training.flops import flops_per_token, measure_peak_flops
    from granite_cli.training.trainer import TrainSettings

    precision = resolve_precision(precision, dist)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    peak_flops = peak_tflops * 1e12 if peak_tflops else measure_peak_flops(dist.device, dtype)
    return TrainSettings(
        steps=n_steps, global_batch=global_batch, micro_batch=micro_batch, seq_len=seq, schedule=schedule,
        tokens_offset=offset, weight_decay=float(training.get("weight_decay", 0.1)),
        betas=tuple(training.get("betas", (0.9, 0.95))), grad_clip=float(training.get("grad_clip", 1.0)),
        log_every=log_every, eval_every=eval_every, checkpoint_every=checkpoint_every, keep_last=keep_last,
        precision=precision, compile=compile, parallel=parallel, peak_flops=peak_flops,
        flops_per_token=flops_per_token(model.config, seq))
