"""granite sft: supervised fine-tuning on chat samples, loss on assistant tokens only, packed sequences.

    granite sft [DATA ...] [--init-from CKPT] [-o CKPT]

1. settings: the recipe's [sft] table (IBM: 3 epochs, LR 5e-6, 3% warmup then linear decay, 16K
   packed sequences, 256 sequences a step); flags win.
2. data: chat samples (docs/design.md, contract 2) rendered by model/chat_format.py into ids and a loss
   mask; a seeded hash of each id sets aside the validation split; over-long conversations have
   their last answer truncated or are dropped (`--overlong`), each counted.
3. packing: best-fit decreasing into rows of seq_len tokens; position ids restart at every
   conversation, which the attention reads as a block-diagonal mask (transformers derives it from
   the position ids when no attention mask is given), so no token sees another conversation.
4. train: the shared loop (granite_cli/training/); the loss is the sum over trained tokens divided
   by the trained tokens of the global batch, so packing changes nothing but speed.
5. checkpoint: a Hugging Face directory whose chat template is the one trained on, plus lineage.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from granite_cli import options
from granite_cli.console import console
from granite_cli.data.packing import EpochOrder, best_fit
from granite_cli.errors import BadInput
from granite_cli.training import IGNORE
from granite_cli.training.stage import TrainingFlags, TrainingRun, input_record, training_command

OVERLONG = ("truncate", "drop")


@training_command
def sft_command(
    data: Optional[list[str]] = typer.Argument(None, help="Chat-sample JSONL files. Default: <run-dir>/filter/kept.jsonl.zst."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Checkpoint directory. Default: <run-dir>/checkpoints/sft."),
    init_from: Optional[str] = typer.Option(None, "--init-from", help="The base checkpoint. Default: the run directory's last "
                                                                      "pre-training checkpoint (extend-context, else the highest pretrain phase)."),
    recipe: Optional[str] = options.RecipeOption,
    run_dir: Optional[str] = options.RunDirOption,
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Passes over the training split. Recipe default (IBM: 3)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate. Recipe default (IBM: 5e-6)."),
    warmup: Optional[str] = typer.Option(None, "--warmup", help="Linear warmup, tokens or a percentage (IBM: 3%); then linear decay to 0."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Packed sequence length. Recipe default (IBM: 16384)."),
    batch_sequences: Optional[int] = typer.Option(None, "--batch-sequences", help="Packed sequences per optimizer step. Recipe default (IBM: 256)."),
    val_fraction: Optional[float] = typer.Option(None, "--val-fraction", help="Share of samples (by a hash of their id) held out for validation loss."),
    overlong: str = typer.Option("truncate", "--overlong", help="A conversation longer than --seq-len: 'truncate' its last "
                                                                "answer (dropped when even its start does not fit) or 'drop' it."),
    packing: bool = typer.Option(True, "--packing/--no-packing", help="Pack several conversations per sequence (best-fit), or one per sequence."),
    on_error: str = options.OnErrorOption,
    flags: TrainingFlags = None,
) -> None:
    """Fine-tune a checkpoint on chat samples (assistant tokens only), packed, with the shared training loop."""
    from granite_cli.data.records import ErrorPolicy, read_records
    from granite_cli.recipe import load_recipe
    from granite_cli.rundir import resolve_init
    from granite_cli.training.schedules import build_schedule

    loaded = load_recipe(recipe, run_dir)
    table = loaded.sft
    seq = seq_len or table.seq_len
    global_batch = batch_sequences or table.batch_sequences
    n_epochs = epochs if epochs is not None else table.epochs
    if overlong not in OVERLONG:
        raise BadInput(f"--overlong must be one of {', '.join(OVERLONG)}")
    paths = list(data) if data else [str(loaded.paths.kept_samples)]
    out = Path(output) if output else loaded.paths.checkpoint("sft")
    with TrainingRun("sft", out, flags) as run:
        parent = resolve_init(init_from, loaded.paths.newest_base_model(),
                              f"no pre-trained checkpoint in {loaded.paths.checkpoint('')}: run `granite pretrain` first, "
                              f"or pass --init-from CKPT")
        tokenizer_dir = run.workdir / "tokenizer"
        tokenizer = chat_tokenizer(parent, tokenizer_dir if run.dist.main else None)
        policy = ErrorPolicy(on_error)
        fraction = val_fraction if val_fraction is not None else table.val_fraction
        train_set, val_set, counts = prepare_conversations(read_records(paths, policy), tokenizer, seq, overlong, fraction,
                                                           flags.seed, policy)
        policy.report()
        model, lineage = base_model(parent, seq, flags.seed)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id  # never trained on
        train = PackedConversations(train_set, seq, global_batch, flags.seed, n_epochs, packing, pad_id)
        if train.steps < 1:
            raise BadInput(f"{len(train_set)} training conversations pack into {train.rows_per_epoch} sequences: fewer than "
                           f"one batch of {global_batch}; lower --batch-sequences or add data")
        peak_lr = lr if lr is not None else table.lr
        schedule = build_schedule({"name": "linear", "warmup": warmup or table.warmup, "final_lr_ratio": 0.0},
                                  peak_lr, train.steps * global_batch * seq)
        settings = run.settings(schedule, table, offset=0, n_steps=train.steps, global_batch=global_batch, seq=seq, model=model)
        report_plan(parent, train, counts, settings, peak_lr, run.dist)
        trainer = run.trainer(model, settings, train, tokenizer_dir, lineage)
        if val_set:
            val = PackedConversations(val_set, seq, 1, flags.seed, 1, packing, pad_id)
            trainer.validation = run.validator(trainer, val.rows_at, val.rows_per_epoch)
        run.finish(trainer, run.train(trainer), {
            "recipe": loaded.name, "epochs": n_epochs, "steps": train.steps, "seq_len": seq, "global_batch": global_batch,
            "lr": peak_lr, "packing": packing, "overlong": overlong, "conversations": counts, "command": sys.argv,
        }, [input_record(Path(p)) for p in paths if p != "-"])


# ------------------------------------------------------------------ inputs
def base_model(parent: Path, seq_len: int, seed: int):
    """The base checkpoint's weights (in fp32, seeded) and its lineage."""
    import torch

    from model.checkpoint import load_model, read_lineage

    torch.manual_seed(seed)
    model = load_model(parent, dtype=torch.float32)
    if seq_len > model.config.max_position_embeddings:
        raise BadInput(f"--seq-len {seq_len} exceeds the model's max_position_embeddings ({model.config.max_position_embeddings})")
    return model, read_lineage(parent)


def chat_tokenizer(parent: Path, save_to: Optional[Path]):
    """The base checkpoint's tokenizer with the Granite chat template, which the SFT checkpoint is saved with."""
    from granite_cli.data.tokenizer_io import load_tokenizer
    from model.chat_template import GRANITE_CHAT_TEMPLATE

    tokenizer = load_tokenizer(str(parent))
    tokenizer.chat_template = GRANITE_CHAT_TEMPLATE
    if save_to is not None:
        tokenizer.save_pretrained(str(save_to))
    return tokenizer


@dataclass
class Conversation:
    ids: np.ndarray      # int32
    trained: np.ndarray  # bool


def prepare_conversations(samples, tokenizer, seq_len: int, overlong: str, val_fraction: float, seed: int, policy,
                          chunk: int = 512):
    """Render every sample; split train/validation by a seeded hash of its id; fit each into seq_len. Counts everything."""
    from model.chat_format import ChatRenderer

    renderer = ChatRenderer(tokenizer)
    train: list[Conversation] = []
    val: list[Conversation] = []
    counts = {"read": 0, "train": 0, "validation": 0, "truncated": 0, "dropped_too_long": 0}
    pending: list[dict] = []

    def flush():
        valid, all_pieces = [], []
        for sample in pending:
            try:
                sample = normalized(sample)
            except BadInput as err:
                policy.bad(err, "malformed sample")
                continue
            try:
                all_pieces.append(renderer.pieces(sample))
            except BadInput as err:
                policy.bad(err, "template token in content")
                continue
            valid.append(sample)
        for sample, rendered in zip(valid, renderer.encode(valid, all_pieces)):
            conversation = fit(Conversation(rendered.ids, rendered.trained), seq_len, overlong, sample, counts)
            if conversation is None:
                continue
            if not conversation.trained[1:].any():
                policy.bad(BadInput(f"sample {sample.get('id')!r} has no trained token (no assistant turn)"), "no trained token")
                continue
            held = is_validation(str(sample.get("id", counts["read"])), val_fraction, seed)
            (val if held else train).append(conversation)
            counts["validation" if held else "train"] += 1
        pending.clear()

    for sample in samples:
        counts["read"] += 1
        pending.append(sample)
        if len(pending) == chunk:
            flush()
    flush()
    return train, val, counts


def normalized(sample: dict) -> dict:
    """Chat samples as the template sees them: in our shape, checked as filter checks them (an unknown role, an
    empty assistant turn or unparsable tool arguments is bad input), a missing content empty."""
    from granite_cli.data.chat import normalize_sample, schema_problems

    sample = normalize_sample(sample)
    problems = schema_problems(sample)
    if problems:
        raise BadInput(f"sample {sample.get('id')!r}: {'; '.join(problems)}")
    return {**sample, "messages": [{**m, "content": m.get("content") or ""} for m in sample["messages"]]}


def fit(conversation: Conversation, seq_len: int, overlong: str, sample: dict, counts: dict) -> Optional[Conversation]:
    """The conversation if it fits; else its last answer cut to fit (with --overlong truncate), else None (counted)."""
    if len(conversation.ids) <= seq_len:
        return conversation
    trained = conversation.trained
    starts = np.flatnonzero(trained[1:] & ~trained[:-1]) + 1  # where each trained run (an answer) begins
    last_answer = int(starts[-1]) if len(starts) else len(trained)
    if overlong == "truncate" and last_answer <= seq_len - 1:  # only the last answer is cut, and some of it stays
        counts["truncated"] += 1
        return Conversation(conversation.ids[:seq_len], trained[:seq_len])
    counts["dropped_too_long"] += 1
    return None


def is_validation(sample_id: str, fraction: float, seed: int) -> bool:
    digest = hashlib.blake2b(f"{seed}:{sample_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


# ------------------------------------------------------------------ packing
class PackedConversations:
    """The training batches: rows of packed conversations, a seeded row order per epoch; batch(s) is a pure function of s."""

    def __init__(self, conversations: list[Conversation], seq_len: int, batch_size: int, seed: int, epochs: float,
                 packing: bool, pad_id: int):
        self.conversations, self.seq_len, self.batch_size, self.seed, self.pad_id = conversations, seq_len, batch_size, seed, pad_id
        lengths = [len(c.ids) for c in conversations]
        shuffled = np.random.default_rng([seed, 0]).permutation(len(conversations))
        self.rows = best_fit(lengths, seq_len, shuffled) if packing else [[int(i)] for i in shuffled]
        self.rows_per_epoch = len(self.rows)
        self.steps = int(epochs * self.rows_per_epoch) // batch_size
        self.trained_tokens_per_epoch = sum(int(c.trained[1:].sum()) for c in conversations)
        self.order = EpochOrder(self.rows_per_epoch, seed)

    def batch(self, step: int) -> dict:
        positions = range(step * self.batch_size, (step + 1) * self.batch_size)
        return self.make_rows([self.rows[self.order[p]] for p in positions])

    def rows_at(self, indices: list[int]) -> dict:
        return self.make_rows([self.rows[i] for i in indices])

    def make_rows(self, rows: list[list[int]]) -> dict:
        """input_ids, labels (next token where it is trained, else -100) and position ids restarting per conversation."""
        import torch

        ids = np.full((len(rows), self.seq_len), self.pad_id, dtype=np.int64)
        labels = np.full((len(rows), self.seq_len), IGNORE, dtype=np.int64)
        positions = np.zeros((len(rows), self.seq_len), dtype=np.int64)
        for r, row in enumerate(rows):
            start = 0
            for index in row:
                conversation = self.conversations[index]
                n = len(conversation.ids)
                ids[r, start:start + n] = conversation.ids
                labels[r, start:start + n - 1] = np.where(conversation.trained[1:], conversation.ids[1:], IGNORE)
                positions[r, start:start + n] = np.arange(n)
                start += n
            positions[r, start:] = np.arange(self.seq_len - start)  # padding: a block of its own
        return {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels), "position_ids": torch.from_numpy(positions)}


def report_plan(parent: Path, train: PackedConversations, counts: dict, settings, peak_lr: float, dist) -> None:
    from granite_cli.recipe import format_count

    if not dist.main:
        return
    filled = sum(len(c.ids) for c in train.conversations) / max(1, train.rows_per_epoch * train.seq_len)
    console.print(f"sft from {parent}: {counts['train']} conversations ({counts['validation']} held out for validation, "
                  f"{counts['truncated']} truncated, {counts['dropped_too_long']} dropped as too long) packed into "
                  f"{train.rows_per_epoch} sequences of {train.seq_len} ({filled:.0%} filled); "
                  f"{format_count(train.trained_tokens_per_epoch)} trained tokens an epoch; {settings.steps} steps x "
                  f"{settings.global_batch} sequences, peak LR {peak_lr:g}, {settings.precision}, "
                  f"{dist.world} process(es) on {dist.device}")
