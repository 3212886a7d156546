"""granite pretrain: train a Granite model on token shards, one recipe phase at a time.

    granite pretrain [SHARDS ...] --phase N [--init-from CKPT] [-o CKPT]

1. settings: the phase's schedule, token budget and training table from the recipe; flags win.
2. data: fixed windows of seq_len+1 tokens over the shards (granite_cli/data/windows.py), visited in a
   seeded permutation; the batch of step s is a pure function of s, which is what makes resume exact.
3. model: a preset built from its config (phase 1), or the previous phase's checkpoint
   (`--init-from`, by default the run directory's previous phase), whose LR and token count the
   schedule continues from.
4. train: the shared loop (granite_cli/training/), cross-entropy loss, with validation loss and bits per byte on the
   held-out shards, metrics.jsonl, step checkpoints kept last-M.
5. checkpoint: a Hugging Face directory with trainer state and lineage, renamed into place at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from granite_cli import options
from granite_cli.console import console
from granite_cli.errors import BadInput
from granite_cli.training.stage import TrainingFlags, TrainingRun, input_record, starting_model, training_command


@training_command
def pretrain_command(
    shards: Optional[list[str]] = typer.Argument(None, help="Token shard directories (granite tokenize). Default: <run-dir>/shards/phase-N."),
    phase: int = typer.Option(1, "--phase", "-p", help="Recipe phase: its schedule, batch and sequence length apply."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Checkpoint directory. Default: <run-dir>/checkpoints/pretrain-phase-N."),
    recipe: Optional[str] = options.RecipeOption,
    run_dir: Optional[str] = options.RunDirOption,
    init_from: Optional[str] = typer.Option(
        None, "--init-from", help="Start from this checkpoint's weights (and continue its LR and token count). "
                                  "Default: the previous phase's checkpoint in the run directory; 'none' to start fresh."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Model preset for a fresh start (tiny-2m, small-10m, base-50m, "
                                                                "granite-1b, granite-4.1-3b/8b/30b, depth-N). Default: the recipe's."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", "-t", help="Tokenizer directory (fresh start). Default: <run-dir>/tokenizer."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimizer steps. Default: one pass over the shards."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate. Default: the recipe's, else the parent checkpoint's last LR."),
    warmup: Optional[str] = typer.Option(None, "--warmup", help="Warmup length: tokens (or steps), or a percentage like 2%."),
    schedule: Optional[str] = typer.Option(None, "--schedule", help="LR schedule: constant, linear, cosine, exponential, power, "
                                                                   "wsd. Default: the recipe's. Another schedule than the "
                                                                   "recipe's drops the recipe's constants for its own defaults "
                                                                   "(see granite_cli/training/schedules.py); the peak LR "
                                                                   "(--lr) and warmup (--warmup) still come from the recipe unless given."),
    batch_tokens: Optional[str] = typer.Option(None, "--batch-tokens", help="Tokens per optimizer step (global batch). Default: the recipe's."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Training sequence length. Default: the recipe's."),
    val_data: Optional[str] = typer.Option(None, "--val-data", help="Held-out shard directory. Default: <run-dir>/shards/heldout, else 2% of the windows."),
    val_tokens: str = typer.Option("64K", "--val-tokens", help="Tokens of held-out data per validation."),
    flags: TrainingFlags = None,
) -> None:
    """Pre-train (or continue pre-training) a Granite model on token shards for one recipe phase."""
    from granite_cli.data.tokenizer_io import load_tokenizer_checked
    from granite_cli.data.windows import TokenWindows, open_shards
    from granite_cli.recipe import load_recipe, parse_count
    from granite_cli.rundir import resolve_init
    from granite_cli.training.schedules import continue_schedule

    loaded = load_recipe(recipe, run_dir)
    paths = loaded.paths
    spec = loaded.phase(phase)
    training = spec.training
    seq = seq_len or training.seq_len
    global_batch = max(1, (parse_count(batch_tokens, "--batch-tokens") if batch_tokens else training.batch_tokens) // seq)
    out = Path(output) if output else paths.pretrain_checkpoint(phase)
    with TrainingRun("pretrain", out, flags) as run:
        previous = paths.pretrain_checkpoint(phase - 1)
        parent = resolve_init(init_from if phase > 1 or init_from else "none", previous,
                              f"phase {phase} starts from phase {phase - 1}'s weights, but {previous} is not a finished "
                              f"checkpoint; train phase {phase - 1} first, or pass --init-from CKPT (or 'none')")
        tokenizer_dir = Path(parent or tokenizer or paths.tokenizer)
        shard_dirs = [Path(p) for p in shards] if shards else [paths.shards(f"phase-{phase}")]
        tok = load_tokenizer_checked(tokenizer_dir)
        train_sets = open_shards(shard_dirs, tok["sha256"])
        val_dir = Path(val_data) if val_data else paths.heldout_shards
        val_sets = open_shards([val_dir], tok["sha256"]) if (val_data or val_dir.exists()) else None
        windows = TokenWindows(train_sets, seq, flags.seed, global_batch, holdout_every=0 if val_sets else 50,
                               vocab_size=tok["size"])
        val_windows = TokenWindows(val_sets, seq, flags.seed, global_batch, vocab_size=tok["size"]) if val_sets else windows.heldout()
        n_steps = steps or windows.count // global_batch
        if n_steps < 1:
            raise BadInput(f"the shards hold {windows.count} windows of {seq + 1} tokens: fewer than one batch of "
                           f"{global_batch}; lower --batch-tokens or --seq-len, or add data")
        model, lineage = starting_model(parent, preset or loaded.model.preset, tok, seq, flags.seed)
        sched, offset = continue_schedule(spec.schedule, lineage, n_steps * global_batch * seq, lr, warmup, schedule)
        settings = run.settings(sched, training, offset=offset, n_steps=n_steps, global_batch=global_batch, seq=seq, model=model)
        report_plan(phase, model, settings, windows, parent, run.dist)
        trainer = run.trainer(model, settings, windows, tokenizer_dir, lineage)
        trainer.validation = run.validator(trainer, *val_windows.validation_rows(parse_count(val_tokens, "--val-tokens")),
                                           byte_lengths=tok["byte_lengths"])
        run.finish(trainer, run.train(trainer), {
            "phase": phase, "recipe": loaded.name, "steps": n_steps, "seq_len": seq, "global_batch": global_batch,
            "schedule": settings.schedule.__class__.__name__, "command": sys.argv,
        }, [input_record(d, d / "manifest.json") for d in shard_dirs])


def report_plan(phase, model, settings, windows, parent, dist) -> None:
    from granite_cli.recipe import format_count
    from model.presets import count_parameters

    if dist.main:
        source = f"from {parent}" if parent else "from scratch"
        console.print(f"pretrain phase {phase} {source}: {format_count(count_parameters(model))} parameters, "
                      f"{settings.steps} steps x {settings.global_batch} x {settings.seq_len} tokens "
                      f"({format_count(settings.steps * settings.global_batch * settings.seq_len)} of "
                      f"{format_count(windows.count * (settings.seq_len + 1))} in the shards), {settings.precision}, "
                      f"{dist.world} process(es) on {dist.device}, peak {settings.peak_flops / 1e12:.2f} TFLOP/s")


