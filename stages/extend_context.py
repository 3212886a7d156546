"""granite extend-context: phase 5, the context grown stage by stage, each stage merged with its parent.

    granite extend-context [--stage NAME] [--init-from CKPT]

For each of the recipe's phase-5 stages in order (or the one `--stage` names):

1. parent: the previous stage's merged model (the first stage: the phase-4 checkpoint, or --init-from).
2. RoPE: the stage's `rope_theta` (or model/rope.py's rule) at the stage's length, or YaRN / linear / dynamic
   scaling with `--rope`; written into config.json, so the checkpoint runs at its new length in transformers.
3. data: the stage's shards (`granite mix --phase 5 --stage NAME | granite tokenize --phase 5`), whole documents
   packed best-fit with position ids restarting per document (granite_cli/data/documents.py), so attention stays
   inside a document; `--cross-document` trains on windows that run across documents instead, for comparison.
4. train: the shared loop, the phase's LR schedule over the stage's token budget, continuing the lineage; under
   torchrun, `--context-parallel N` splits every row's positions across N processes (granite_cli/training/context_parallel.py).
5. merge: parent and extended model, linear with the recipe's parent weight (15%), SLERP, or mergekit's TIES / DARE
   (model/merging.py);
   with `--merge-weights` each candidate is scored (short-context validation loss, long-context loss) and the
   rule below picks one; the table goes into lineage.
6. evaluate: loss by position (granite_cli/training/positions.py) of the parent, the extended and the merged
   model on held-out long text at the new length.

Outputs per stage: checkpoints/extend-context-NAME-trained (before the merge) and checkpoints/extend-context-NAME
(merged, what the next stage starts from); the last stage's merged model is also checkpoints/extend-context, where
sft looks first.

The merge-weight rule: the largest parent weight whose long-context loss gives up at most `--merge-tolerance` (a
quarter) of what the stage gained on long text over its parent: the parent brings back short-context quality, the
merge keeps most of what the stage learned.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Optional

import typer

from granite_cli import options
from granite_cli.console import console
from granite_cli.errors import BadInput
from granite_cli.training.distributed import launch_position
from granite_cli.training.stage import TrainingFlags, TrainingRun, input_record, training_command

PHASE = 5
HELDOUT_EVERY = 10  # every 10th full-length piece of a long document is held out for loss by position
HELDOUT_ROWS = 16


@training_command
def extend_context_command(
    shards: Optional[list[str]] = typer.Argument(None, help="Token shards of one stage (with --stage). Default: "
                                                            "<run-dir>/shards/phase-5-NAME for each stage."),
    stage: Optional[str] = typer.Option(None, "--stage", help="Run only this phase-5 stage (default: every stage, in order)."),
    init_from: Optional[str] = typer.Option(None, "--init-from", help="The first stage's parent. Default: the previous "
                                                                      "stage's merged model, or pretrain phase 4."),
    recipe: Optional[str] = options.RecipeOption,
    run_dir: Optional[str] = options.RunDirOption,
    rope: str = typer.Option("theta", "--rope", help="How positions reach the new length: theta (raise rope_theta: the "
                                                     "stage's, else the NTK rule; the recipe's way), yarn, linear or dynamic."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak LR. Default: the phase's schedule (tiny: 1e-4)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimizer steps per stage. Default: the stage's token budget."),
    batch_tokens: Optional[str] = typer.Option(None, "--batch-tokens", help="Tokens per step. Default: the phase's "
                                                                           "training table's batch_tokens (tiny: 8K)."),
    cross_document: bool = typer.Option(False, "--cross-document", help="Train on windows that run across documents "
                                                                       "(as pretrain does) instead of whole documents."),
    checkpointing: bool = typer.Option(False, "--activation-checkpointing", help="Recompute each layer's activations in "
                                                                                "backward: memory for long rows."),
    context_parallel: int = typer.Option(1, "--context-parallel", help="Under torchrun: split every row's positions across "
                                                                      "N processes, which all-gather keys and values in "
                                                                      "each attention layer (rows longer than one device "
                                                                      "holds; the processes must be a multiple of N)."),
    merge_method: Optional[str] = typer.Option(None, "--merge", help="linear, slerp, or ties / dare_ties / dare_linear "
                                                                  "(mergekit, the parent as base). Default: the recipe's phase-5 merge table (linear)."),
    merge_weight: Optional[float] = typer.Option(None, "--merge-weight", help="The parent's weight in the merge. Default: "
                                                                             "the recipe's (IBM: 0.15)."),
    merge_weights: Optional[str] = typer.Option(None, "--merge-weights", help="Candidate parent weights, e.g. "
                                                                             "0,0.15,0.3,0.5: each is scored, the rule picks."),
    merge_tolerance: float = typer.Option(0.25, "--merge-tolerance", help="With --merge-weights: the share of the stage's "
                                                                         "long-context gain (parent's long loss minus the "
                                                                         "extended model's) a merge may give up."),
    flags: TrainingFlags = None,
) -> None:
    """Extend the context window stage by stage (phase 5), merging each stage with its parent."""
    from granite_cli.recipe import load_recipe, parse_count
    from model.merging import MERGEKIT_METHODS, METHODS
    from model.rope import METHODS as ROPES

    loaded = load_recipe(recipe, run_dir)
    phase = loaded.phase(PHASE)
    if not phase.stages:
        raise BadInput(f"recipe {loaded.name!r} has no [[phases.stages]] in phase 5")
    chosen = [phase.stage(stage)] if stage else phase.stages
    if shards and len(chosen) != 1:
        raise BadInput("shard directories are for one stage: add --stage NAME")
    _, processes = launch_position()
    if context_parallel < 1:
        raise BadInput("--context-parallel must be 1 or more (1: every process holds whole rows)")
    if processes % context_parallel:
        raise BadInput(f"--context-parallel {context_parallel} must divide the number of processes ({processes})")
    if context_parallel > 1 and (uneven := [s.name for s in chosen if s.length % (2 * context_parallel)]):
        raise BadInput(f"--context-parallel {context_parallel} cuts each row into {2 * context_parallel} equal chunks: "
                       f"the length of stage {', '.join(uneven)} is not a multiple of {2 * context_parallel}")
    if len(chosen) != 1 and processes > 1:
        raise BadInput("under torchrun, extend-context runs one stage a launch (--stage NAME), as "
                       "examples/slurm/extend-context.sbatch does: the merge after a stage runs in the first process only")
    if rope not in ROPES:
        raise BadInput(f"--rope must be one of {', '.join(ROPES)}")
    method = merge_method or (phase.merge.method if phase.merge else "linear")
    if method not in METHODS + MERGEKIT_METHODS:
        raise BadInput(f"--merge must be one of {', '.join(METHODS + MERGEKIT_METHODS)}")
    weight = merge_weight if merge_weight is not None else (phase.merge.base_weight if phase.merge else 0.15)
    candidates = parse_candidates(merge_weights) if merge_weights else [weight]
    tokens_per_step = parse_count(batch_tokens, "--batch-tokens") if batch_tokens else phase.training.batch_tokens
    index = phase.stages.index(chosen[0])
    parent = Path(init_from) if init_from else (loaded.paths.checkpoint(f"extend-context-{phase.stages[index - 1].name}")
                                                if index else loaded.paths.pretrain_checkpoint(PHASE - 1))
    for spec in chosen:
        shard_dirs = [Path(p) for p in shards] if shards else [loaded.paths.shards(f"phase-{PHASE}-{spec.name}")]
        parent = run_stage(loaded, phase, spec, parent, shard_dirs, rope, lr, steps, tokens_per_step, cross_document,
                           checkpointing, context_parallel, method, candidates, merge_tolerance, flags)
    if chosen[-1] is phase.stages[-1] and first_process():
        final = loaded.paths.checkpoint("extend-context")
        publish_copy(parent, final)
        console.print(f"phase 5 done: [bold]{final}[/] is the last stage's merged model (sft starts from it)")


def first_process() -> bool:
    return launch_position()[0] == 0


def parse_candidates(text: str) -> list[float]:
    try:
        weights = [float(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise BadInput(f"--merge-weights takes numbers separated by commas, not {text!r}") from None
    if not weights or any(not 0 <= w < 1 for w in weights):
        raise BadInput("--merge-weights: parent weights in [0, 1)")
    return weights


def run_stage(loaded, phase, spec, parent: Path, shard_dirs: list[Path], rope: str, lr, steps, tokens_per_step: int,
              cross_document: bool, checkpointing: bool, context_parallel: int, method: str, candidates: list[float],
              tolerance: float, flags: TrainingFlags) -> Path:
    """Train one stage from `parent`, merge, evaluate; returns the merged checkpoint (the next stage's parent)."""
    from granite_cli.data.documents import PackedDocuments
    from granite_cli.data.tokenizer_io import load_tokenizer_checked
    from granite_cli.data.windows import TokenWindows, open_shards
    from granite_cli.data.atomic import partial_directory
    from granite_cli.training import positions
    from model.checkpoint import is_checkpoint, read_lineage

    if not is_checkpoint(parent):
        raise BadInput(f"stage {spec.name} starts from {parent}, which is not a finished checkpoint: run the stage before "
                       f"(or pretrain phase 4), or pass --init-from CKPT")
    length = spec.length
    trained_out = loaded.paths.checkpoint(f"extend-context-{spec.name}-trained")
    merged_out = loaded.paths.checkpoint(f"extend-context-{spec.name}")
    if flags.resume and is_checkpoint(merged_out) and not flags.overwrite:
        console.print(f"stage {spec.name}: {merged_out} is finished; resuming after it")
        return merged_out
    global_batch = max(1, tokens_per_step // length)
    tok = load_tokenizer_checked(parent)
    sets = open_shards(shard_dirs, tok["sha256"])
    long_dirs = [loaded.paths.shards(f"phase-{PHASE}-{phase.stages[-1].name}")]
    evaluates_on_own = [d.resolve() for d in shard_dirs] == [d.resolve() for d in long_dirs] or not long_dirs[0].exists()
    documents = PackedDocuments(sets, length, flags.seed, global_batch, holdout_every=HELDOUT_EVERY if evaluates_on_own else 0,
                                vocab_size=tok["size"])
    data = TokenWindows(sets, length, flags.seed, global_batch, vocab_size=tok["size"]) if cross_document else documents
    n_steps = steps or max(1, spec.tokens // (global_batch * length))
    heldout = long_heldout(documents if evaluates_on_own else None, long_dirs, phase, length, tok, flags.seed)
    if not heldout and len(candidates) > 1:
        raise BadInput(f"no held-out long text for stage {spec.name} (no document is {length} tokens long): "
                       f"--merge-weights has nothing to choose by; merge at one weight")
    spans = positions.buckets(length)
    if flags.resume and is_checkpoint(trained_out) and not partial_directory(trained_out).exists():
        console.print(f"stage {spec.name}: {trained_out} is trained; merging it")
        old_length = read_lineage(trained_out)[-1]["arguments"]["old_length"]
    else:
        old_length = train_stage(loaded, phase, spec, parent, trained_out, shard_dirs, sets, data, heldout, tok, rope, lr,
                                 n_steps, global_batch, cross_document, checkpointing, context_parallel, flags)
    if not first_process():  # under torchrun the others are done once the trained checkpoint is written
        return merged_out
    table, chosen = merge_and_score(parent, trained_out, merged_out, method, candidates, tolerance, heldout, spans, loaded)
    if table:
        show_positions(table, spec.name, old_length)
    return merged_out


def train_stage(loaded, phase, spec, parent: Path, trained_out: Path, shard_dirs, sets, data, heldout, tok, rope, lr,
                n_steps: int, global_batch: int, cross_document: bool, checkpointing: bool, context_parallel: int,
                flags) -> int:
    """The stage's training run (the shared loop; resumable); returns the length the parent was trained at."""
    from granite_cli.training.schedules import continue_schedule
    from model.checkpoint import read_lineage

    length = spec.length
    with TrainingRun("extend-context", trained_out, flags) as run:
        model, old_length, rope_parameters = extended_model(parent, length, rope, spec.rope_theta, flags.seed)
        if checkpointing:
            model.gradient_checkpointing_enable()
        lineage = read_lineage(parent)
        schedule, offset = continue_schedule(phase.schedule, lineage, n_steps * global_batch * length, lr, None, None)
        settings = run.settings(schedule, phase.training, offset=offset, n_steps=n_steps, global_batch=global_batch,
                                seq=length, model=model)
        settings.context_parallel = context_parallel
        console.print(f"extend-context stage {spec.name}: {old_length} -> {length} tokens ({rope}: {rope_parameters}), "
                      f"{n_steps} steps x {global_batch} x {length} tokens, {data.count} rows of "
                      f"{'windows across documents' if cross_document else 'whole documents packed'}, "
                      f"{len(heldout['input_ids']) if heldout else 0} held-out long rows, from {parent}")
        trainer = run.trainer(model, settings, data, parent, lineage)
        if heldout:
            trainer.validation = run.validator(trainer, lambda idx: {k: v[idx] for k, v in heldout.items()},
                                               len(heldout["input_ids"]), byte_lengths=tok["byte_lengths"])
        run.finish(trainer, run.train(trainer), {
            "phase": PHASE, "stage": spec.name, "length": length, "old_length": old_length, "rope": rope,
            "rope_parameters": rope_parameters, "steps": n_steps, "global_batch": global_batch,
            "cross_document": cross_document, "context_parallel": context_parallel, "recipe": loaded.name, "command": sys.argv,
        }, [input_record(d, d / "manifest.json") for d in shard_dirs])
    return old_length


def long_heldout(documents, long_dirs: list[Path], phase, length: int, tok: dict, seed: int) -> dict:
    """Held-out long text at `length` tokens a row: every 10th full-length piece of the last stage's documents (books
    and code repositories, which no earlier stage trains on) at the longest stage length, cut to this stage's length;
    the last stage holds those very pieces out of its training. Without the last stage's shards, the stage's own."""
    from granite_cli.data.documents import PackedDocuments
    from granite_cli.data.windows import open_shards

    if documents is None or documents.seq_len != max(s.length for s in phase.stages):
        if long_dirs[0].exists():
            longest = max(s.length for s in phase.stages)
            documents = PackedDocuments(open_shards(long_dirs, tok["sha256"]), longest, seed, 1,
                                        holdout_every=HELDOUT_EVERY, vocab_size=tok["size"])
    rows = documents.heldout_rows(HELDOUT_ROWS)
    return {k: v[:, :length].contiguous() for k, v in rows.items()}


def extended_model(parent: Path, length: int, rope: str, theta: Optional[float], seed: int):
    """The parent's weights under a config whose RoPE reaches `length`: (model, old length, rope parameters)."""
    import torch
    from transformers import AutoConfig

    from model.checkpoint import load_model, read_lineage
    from model.rope import extended_rope, trained_length

    config = AutoConfig.from_pretrained(str(parent), local_files_only=True)
    old_length = trained_length(read_lineage(parent)) or config.max_position_embeddings
    if length <= old_length:
        raise BadInput(f"the stage's length ({length}) is not longer than the {old_length} tokens the parent was trained at",
                       str(parent))
    parameters = extended_rope(config, old_length, length, rope, theta if rope == "theta" else None)
    torch.manual_seed(seed)
    return load_model(parent, dtype=torch.float32, config=config), old_length, parameters


def merge_and_score(parent: Path, trained: Path, merged_out: Path, method: str, candidates: list[float], tolerance: float,
                    heldout: dict, spans, loaded) -> tuple[dict, float]:
    """Merge parent and extended model at each candidate parent weight, score each, keep the one the rule picks.

    Returns ({model: loss by position}, chosen weight); the merged checkpoint is written to `merged_out` with the
    candidates' table in its lineage."""
    import torch

    from granite_cli.training.positions import loss_by_position
    from model.checkpoint import load_model, read_lineage, save_checkpoint
    from model.merging import compatible, merged_state, parents_entry

    parent_state, trained_state = compatible([parent, trained])
    short_rows, old_length = short_context_rows(loaded, trained)
    models = {"parent": load_model(parent, dtype=torch.float32), "extended": load_model(trained, dtype=torch.float32)}
    if not heldout:
        console.print("[yellow]warning:[/] no held-out long text: no loss by position, and the merge takes the given weight")
    table = {name: loss_by_position(lm, heldout, spans) for name, lm in models.items()} if heldout else {}
    short = {name: short_loss(lm, short_rows, old_length) for name, lm in models.items()}
    merged = models["extended"]  # the extended architecture and config; its weights are replaced by each candidate
    scores = []
    for weight in candidates:
        load_weights(merged, merged_state([parent, trained], [parent_state, trained_state], method, [weight, 1 - weight]))
        by_position = loss_by_position(merged, heldout, spans) if heldout else {}
        scores.append({"parent_weight": weight, "long_loss": mean_loss(by_position),
                       "short_loss": short_loss(merged, short_rows, old_length), "by_position": by_position})
    extended_long = mean_loss(table["extended"]) if table else None
    limit = None
    if table:  # the merge may give up `tolerance` of what the stage gained on long text over its parent
        limit = extended_long + tolerance * max(mean_loss(table["parent"]) - extended_long, 0.0)
    allowed = [s for s in scores if limit is None or s["long_loss"] <= limit + 1e-12]
    chosen = max(allowed or scores, key=lambda s: s["parent_weight"])
    if table:
        table["merged"] = chosen["by_position"]
    rows = scores
    show_candidates(rows, chosen["parent_weight"], extended_long, short, tolerance)
    state = merged_state([parent, trained], [parent_state, trained_state], method,
                         [chosen["parent_weight"], 1 - chosen["parent_weight"]])
    entry = parents_entry([parent, trained], method, [chosen["parent_weight"], 1 - chosen["parent_weight"]], {
        "candidates": rows, "rule": f"largest parent weight keeping {1 - tolerance:.0%} of the stage's long-context gain",
        "loss_by_position": table, "short_loss": {**short, "merged": chosen["short_loss"]}})
    save_checkpoint(merged_out, state, merged.config, trained, read_lineage(trained) + [entry])
    console.print(f"wrote [bold]{merged_out}[/]: {method} merge, parent weight {chosen['parent_weight']:g}")
    return table, chosen["parent_weight"]


def load_weights(lm, state: dict) -> None:
    """Put a merged state into a model of the same architecture (a tied LM head comes with the embeddings)."""
    result = lm.load_state_dict(state, strict=False)
    if result.unexpected_keys or set(result.missing_keys) - {"lm_head.weight"}:
        raise BadInput(f"the merged weights do not fit the model: missing {result.missing_keys[:3]}, "
                       f"unexpected {result.unexpected_keys[:3]}")


def short_context_rows(loaded, trained: Path):
    """Held-out rows at the length the parent was trained at (the phase-4 validation shards): short-context quality."""
    from granite_cli.data.tokenizer_io import load_tokenizer_checked
    from granite_cli.data.windows import TokenWindows, open_shards
    from model.checkpoint import read_lineage

    old_length = read_lineage(trained)[-1]["arguments"]["old_length"]
    directory = loaded.paths.heldout_shards
    if not directory.exists():
        return None, old_length
    tok = load_tokenizer_checked(trained)
    windows = TokenWindows(open_shards([directory], tok["sha256"]), old_length, 0, 1, vocab_size=tok["size"])
    rows, count = windows.validation_rows(64 * 1024)
    return rows(list(range(count))), old_length


def short_loss(lm, rows: Optional[dict], length: int) -> Optional[float]:
    import torch

    from granite_cli.training.positions import loss_by_position

    if rows is None:
        return None
    rows = {**rows, "position_ids": torch.arange(rows["input_ids"].shape[1]).expand_as(rows["input_ids"])}
    return mean_loss(loss_by_position(lm, rows, [(0, length)]))


def mean_loss(by_position: dict) -> Optional[float]:
    values = [v for v in by_position.values() if v is not None]
    return sum(values) / len(values) if values else None


def show_candidates(rows: list[dict], chosen: float, extended_long, short: dict, tolerance: float) -> None:
    from rich.table import Table

    view = Table(title=f"merge candidates (extended model: long loss {fmt(extended_long)}, short loss "
                       f"{fmt(short['extended'])}; parent short loss {fmt(short['parent'])})")
    for column in ("parent weight", "long-context loss", "short-context loss", ""):
        view.add_column(column, justify="right")
    for row in rows:
        view.add_row(f"{row['parent_weight']:g}", fmt(row["long_loss"]), fmt(row["short_loss"]),
                     "chosen" if row["parent_weight"] == chosen else "")
    console.print(view)


def show_positions(table: dict, stage: str, old_length: int) -> None:
    from rich.table import Table

    view = Table(title=f"stage {stage}: held-out loss by position (trained at {old_length} before)")
    view.add_column("positions")
    for name in table:
        view.add_column(name, justify="right")
    for bucket in next(iter(table.values())):
        view.add_row(bucket, *(fmt(table[name][bucket]) for name in table))
    console.print(view)


def fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def publish_copy(source: Path, target: Path) -> None:
    """A copy of a finished checkpoint under another name, replacing what was there, appearing at once."""
    from granite_cli.data.atomic import atomic_directory

    with atomic_directory(target) as staged:
        shutil.rmtree(staged)
        shutil.copytree(source, staged)
