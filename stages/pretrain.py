"""granite pretrain: train a Granite model on token shards, one recipe phase at a time.

    granite pretrain [SHARDS ...] --phase N [--init-from CKPT] [-o CKPT]

1. settings: the phase's schedule, token budget and training table from the recipe; flags win.
2. data: fixed windows of seq_len+1 tokens over the shards, visited in a seeded permutation; the
   batch of step s is a pure function of s, which is what makes resume exact.
3. model: a preset built from its config (phase 1), or the previous phase's checkpoint
   (`--init-from`, by default the run directory's previous phase), whose LR and token count the
   schedule continues from.
4. train: the shared loop (granite_cli/trainer.py), with validation loss and bits per byte on the
   held-out shards, metrics.jsonl, step checkpoints kept last-M.
5. checkpoint: a Hugging Face directory with trainer state and lineage, renamed into place at the end.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from granite_cli import options
from granite_cli.console import console
from granite_cli.training.validation import Validator
from granite_cli.errors import BadInput
from granite_cli.training.run import (CheckpointEveryOption, CompileOption, EvalEveryOption, KeepLastOption, LogEveryOption,
                                      MicroBatchOption, OverwriteOption, ParallelOption, PeakTflopsOption, PrecisionOption,
                                      ResumeOption, checkpoint_writer, finish, input_record, prepare_output,
                                      train_settings, work_directory)

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
    warmup: Optional[str] = typer.Option(None, "--warmup", help="Warmup length: tokens (or steps), or a percentage like 2%%."),
    schedule: Optional[str] = typer.Option(None, "--schedule", help="LR schedule: constant, linear, cosine, exponential, power, wsd."),
    batch_tokens: Optional[str] = typer.Option(None, "--batch-tokens", help="Tokens per optimizer step (global batch). Default: the recipe's."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Training sequence length. Default: the recipe's."),
    micro_batch: int = MicroBatchOption,
    val_data: Optional[str] = typer.Option(None, "--val-data", help="Held-out shard directory. Default: <run-dir>/shards/heldout, else 2%% of the windows."),
    val_tokens: str = typer.Option("64K", "--val-tokens", help="Tokens of held-out data per validation."),
    eval_every: int = EvalEveryOption,
    checkpoint_every: int = CheckpointEveryOption,
    keep_last: int = KeepLastOption,
    log_every: int = LogEveryOption,
    resume: bool = ResumeOption,
    overwrite: bool = OverwriteOption,
    seed: int = options.SeedOption,
    precision: str = PrecisionOption,
    compile: bool = CompileOption,
    parallel: str = ParallelOption,
    device: str = options.DeviceOption,
    peak_tflops: Optional[float] = PeakTflopsOption,
) -> None:
    """Pre-train (or continue pre-training) a Granite model on token shards for one recipe phase."""
    from granite_cli.training import distributed
    from granite_cli.recipe import load_recipe, parse_count

    loaded = load_recipe(recipe, run_dir)
    spec = loaded.phase(phase)
    training = dict(spec.training)
    seq = seq_len or int(training.get("seq_len", 4096))
    global_batch = max(1, parse_count(batch_tokens or training.get("batch_tokens", "4M"), "--batch-tokens") // seq)
    out = Path(output) if output else loaded.run_dir / "checkpoints" / f"pretrain-phase-{phase}"
    workdir = work_directory(out)
    prepare_output(out, workdir, resume, overwrite)
    parent = resolve_parent(init_from, loaded.run_dir, phase)
    tokenizer_dir = Path(parent or tokenizer or loaded.run_dir / "tokenizer")
    shard_dirs = [Path(p) for p in shards] if shards else [loaded.run_dir / "shards" / f"phase-{phase}"]

    dist = distributed.setup(device)
    try:
        tok = load_tokenizer_checked(tokenizer_dir)
        train_sets = open_shards(shard_dirs, tok["sha256"])
        val_dir = Path(val_data) if val_data else loaded.run_dir / "shards" / "heldout"
        val_sets = open_shards([val_dir], tok["sha256"]) if (val_data or val_dir.exists()) else None
        windows = TokenWindows(train_sets, seq, seed, global_batch, holdout_every=0 if val_sets else 50)
        val_windows = TokenWindows(val_sets, seq, seed, global_batch) if val_sets else windows.heldout()
        n_steps = steps or windows.count // global_batch
        if n_steps < 1:
            raise BadInput(f"the shards hold {windows.count} windows of {seq + 1} tokens: fewer than one batch of "
                           f"{global_batch}; lower --batch-tokens or --seq-len, or add data")
        model, lineage = build_model(parent, preset or loaded.raw.get("model", {}).get("preset", "tiny-2m"), tok, seq, seed)
        sched, offset = phase_schedule(spec, lineage, n_steps * global_batch * seq, lr, warmup, schedule)
        settings = train_settings(sched, training, offset=offset, n_steps=n_steps, global_batch=global_batch,
                                  micro_batch=min(micro_batch, global_batch), seq=seq, model=model, dist=dist,
                                  precision=precision, compile=compile, parallel=parallel, peak_tflops=peak_tflops,
                                  log_every=log_every, eval_every=eval_every, checkpoint_every=checkpoint_every,
                                  keep_last=keep_last)
        report_plan(phase, model, settings, windows, parent, dist)
        from granite_cli.training.trainer import Trainer

        workdir.mkdir(parents=True, exist_ok=True)
        trainer = Trainer(model, settings, windows, dist, workdir, save=checkpoint_writer(model.config, tokenizer_dir, lineage))
        trainer.validation = window_validator(val_windows, parse_count(val_tokens, "--val-tokens"), min(micro_batch, 16),
                                              tok["byte_lengths"], dist, trainer.autocast)
        if resume and not trainer.resume():
            console.print("no step checkpoint to resume from: starting from the beginning")
        summary = trainer.run()
        finish(trainer, "pretrain", out, workdir, lineage, {
            "phase": phase, "recipe": loaded.name, "steps": n_steps, "seq_len": seq, "global_batch": global_batch,
            "seed": seed, "schedule": settings.schedule.__class__.__name__, "command": sys.argv,
        }, [input_record(d, d / "manifest.json") for d in shard_dirs], tokenizer_dir, summary)
        distributed.barrier(dist)  # rank 0 writes the checkpoint while the others wait for it
    finally:
        distributed.teardown(dist)


# ------------------------------------------------------------------ settings and inputs
def resolve_parent(init_from: Optional[str], run_dir: Path, phase: int) -> Optional[Path]:
    from model.checkpoint import is_checkpoint

    if init_from == "none":
        return None
    if init_from:
        if not (Path(init_from) / "config.json").exists():
            raise BadInput("--init-from is not a checkpoint directory (no config.json)", init_from)
        return Path(init_from)
    previous = run_dir / "checkpoints" / f"pretrain-phase-{phase - 1}"
    if phase > 1 and not is_checkpoint(previous):
        raise BadInput(f"phase {phase} starts from phase {phase - 1}'s weights, but {previous} is not a finished "
                       f"checkpoint; train phase {phase - 1} first, or pass --init-from CKPT (or 'none')")
    return previous if phase > 1 else None


def load_tokenizer_checked(directory: Path) -> dict:
    """The tokenizer's hash (to match against shards) and per-token byte lengths (for bits per byte)."""
    from granite_cli.data.tokenizer_io import load_tokenizer, tokenizer_identity

    tok = load_tokenizer(str(directory))
    identity = tokenizer_identity(tok, str(directory))
    return {**identity, "byte_lengths": token_byte_lengths(tok), "eos_id": tok.eos_token_id,
            "pad_id": tok.pad_token_id, "size": len(tok)}


def token_byte_lengths(tok):
    """UTF-8 bytes each token id stands for (0 for special tokens): the denominator of bits per byte."""
    import numpy as np

    lengths = np.zeros(len(tok), dtype=np.int64)
    byte_level = json.loads(tok.backend_tokenizer.to_str()).get("decoder", {}) or {}
    special = set(tok.all_special_ids) | {i for i, t in tok.added_tokens_decoder.items() if t.special}
    for token_id, token in enumerate(tok.convert_ids_to_tokens(list(range(len(tok))))):
        if token_id in special or token is None:
            continue
        # byte-level BPE maps each byte to one printable character, so characters count bytes
        lengths[token_id] = len(token) if byte_level.get("type") == "ByteLevel" else len(tok.decode([token_id]).encode())
    return lengths


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


def build_model(parent: Optional[Path], preset: str, tok: dict, seq_len: int, seed: int):
    """The model to train and the lineage it carries: the parent's weights, or a fresh preset."""
    import torch
    from transformers import GraniteForCausalLM

    from model.checkpoint import load_model, read_lineage
    from model.presets import build_config

    torch.manual_seed(seed)
    if parent:
        model = load_model(parent, dtype=torch.float32)
        lineage = read_lineage(parent)
        if model.config.vocab_size < tok["size"]:
            raise BadInput(f"the checkpoint's vocabulary ({model.config.vocab_size}) is smaller than its tokenizer's", str(parent))
    else:
        config = build_config(preset, vocab_size=tok["size"], bos_id=tok["eos_id"], eos_id=tok["eos_id"], pad_id=tok["pad_id"])
        model = GraniteForCausalLM(config)
        lineage = []
    if seq_len > model.config.max_position_embeddings:
        raise BadInput(f"--seq-len {seq_len} exceeds the model's max_position_embeddings ({model.config.max_position_embeddings})")
    return model, lineage


def lineage_tokens_and_lr(lineage: list[dict]) -> tuple[int, Optional[float]]:
    """Tokens trained on so far along the lineage, and the last LR it used (a continuing schedule starts there)."""
    tokens = sum(entry.get("metrics", {}).get("tokens", 0) for entry in lineage)
    last_lr = lineage[-1].get("metrics", {}).get("final_lr") if lineage else None
    return tokens, last_lr


def phase_schedule(spec, lineage: list[dict], total_tokens: int, lr, warmup, schedule_name):
    """The phase's LR schedule: the recipe's table, flags on top, continuing the lineage's token count and last LR."""
    from granite_cli.training.schedules import build_schedule

    offset, parent_lr = lineage_tokens_and_lr(lineage)
    table = dict(spec.schedule)
    if schedule_name:
        table["name"] = schedule_name
    if warmup is not None:
        table["warmup"] = warmup
    peak = lr if lr is not None else (table.get("peak_lr") or parent_lr)
    return build_schedule(table, peak, total_tokens, offset), offset


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


# ------------------------------------------------------------------ data
class TokenWindows:
    """Windows of seq_len+1 tokens cut from each shard (documents run on across EOS, as in pretraining).

    The batch of step s takes positions [s·B, (s+1)·B) of an endless sequence of seeded permutations
    (one per epoch), so it is a pure function of the step.
    """

    def __init__(self, shard_sets, seq_len: int, seed: int, batch_size: int, holdout_every: int = 0):
        import numpy as np

        self.shard_sets, self.seq_len, self.seed, self.batch_size = shard_sets, seq_len, seed, batch_size
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
        view.places, view.held, view.count, view._epoch_order = self.held, self.held[:0], len(self.held), {}
        return view

    def order(self, epoch: int):
        import numpy as np

        if epoch not in self._epoch_order:
            self._epoch_order = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.count)}
        return self._epoch_order[epoch]

    def window(self, place):
        set_index, shard_index, start = (int(x) for x in place)
        tokens = self.shard_sets[set_index].tokens(shard_index)
        return tokens[start:start + self.seq_len + 1]

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


def window_validator(windows: TokenWindows, tokens: int, micro_batch: int, byte_lengths, dist, autocast) -> Validator:
    """Validation on `tokens` of held-out windows: a seeded sample, the same at every validation."""
    count = min(windows.count, max(1, tokens // windows.seq_len))
    sample = windows.order(0)[:count].tolist()
    return Validator(lambda indices: windows.rows([sample[i] for i in indices]), count, micro_batch, dist, autocast, byte_lengths)
