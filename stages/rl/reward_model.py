"""granite rl reward-model: a Bradley-Terry reward model trained on preference pairs, for the RLHF stage.

    granite rl reward-model [PAIRS ...] [--init-from CKPT] [-o RM]

1. pairs: each record is a prompt (`messages`), a `chosen` and a `rejected` answer (an assistant message or its
   text); a bad record is FILE:LINE and exit 2. Pairs whose prompt falls in rl's held-out share (the same hash of
   the prompt as rl's prompts) are held out to measure pairwise accuracy.
2. model: the starting chat model's backbone with a scalar head at zero (model/reward_model.py says how it is
   stored and loaded with plain transformers).
3. train: the shared loop with the reward model's scorer and the Bradley-Terry loss, -log sigmoid(r_chosen -
   r_rejected) averaged over the step's pairs. A step's pairs are packed best-fit into rows, each pair's chosen
   and rejected conversations side by side with their own position ids (no padding rows; TRL pads each pair).
4. evaluate: held-out pairwise accuracy (a tie counts half) with a bootstrap interval, against the 50% of chance;
   the offset that centres rewards (the mean score of the training answers) goes into reward_model.json.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from granite_cli import options
from granite_cli.console import console
from granite_cli.errors import BadInput
from granite_cli.training import IGNORE
from granite_cli.training.stage import TrainingFlags, TrainingRun, input_record, training_command

CHOSEN, REJECTED = 1, 0  # labels at the scored (last) token of each side of a pair


@training_command
def reward_model_command(
    pairs: Optional[list[str]] = typer.Argument(None, help="Preference pair files (JSONL: messages, chosen, rejected). "
                                                           "Default: the recipe's rl.reward_model data."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Reward model directory. Default: "
                                                                      "<run-dir>/checkpoints/reward-model."),
    init_from: Optional[str] = typer.Option(None, "--init-from", help="The chat model whose backbone starts the reward model. "
                                                                      "Default: <run-dir>/checkpoints/sft."),
    recipe: Optional[str] = options.RecipeOption,
    run_dir: Optional[str] = options.RunDirOption,
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Passes over the training pairs. Recipe default (1)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (3% warmup, linear decay). Recipe default."),
    pairs_per_step: Optional[int] = typer.Option(None, "--pairs-per-step", help="Pairs per optimizer step. Recipe default."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Packed row length in tokens; longer pairs are left out, "
                                                                  "counted. Recipe default."),
    heldout_fraction: Optional[float] = typer.Option(None, "--heldout-fraction", help="Share of pairs held out for accuracy, "
                                                     "by the hash of the prompt rl holds prompts out with. Recipe default "
                                                     "(rl's heldout_fraction: what rl evaluates on, the reward model never trains on)."),
    on_error: str = options.OnErrorOption,
    flags: TrainingFlags = None,
) -> None:
    """Train the reward model of the RLHF stage: Bradley-Terry on chosen/rejected pairs, with held-out pairwise accuracy."""
    from granite_cli.data.records import ErrorPolicy
    from granite_cli.data.tokenizer_io import load_tokenizer
    from granite_cli.recipe import load_recipe
    from granite_cli.rundir import resolve_init
    from granite_cli.training.schedules import build_schedule
    from model.chat_format import ChatRenderer
    from model.checkpoint import read_lineage
    from model.reward_model import RewardScores, calibration_text, from_causal_lm

    loaded = load_recipe(recipe, run_dir)
    table = loaded.rl.reward_model
    paths = list(pairs) if pairs else table.data
    if not paths:
        raise BadInput("no preference pairs: pass PAIRS files or set [rl.reward_model] data in the recipe")
    out = Path(output) if output else loaded.paths.checkpoint("reward-model")
    default_parent = loaded.paths.checkpoint("sft")
    parent = resolve_init(init_from, default_parent, f"no finished checkpoint at {default_parent}: run `granite sft` first, "
                                                     f"or pass --init-from CKPT")
    if parent is None:
        raise BadInput("a reward model starts from a trained model: --init-from none is not allowed")
    length = seq_len or table.seq_len
    fraction = heldout_fraction if heldout_fraction is not None else loaded.rl.heldout_fraction
    policy = ErrorPolicy(on_error)
    train, heldout, counts = read_pairs(paths, policy, fraction)
    policy.report()
    if not train and not heldout:
        raise BadInput(f"no preference pairs in {', '.join(paths)}")
    tokenizer = load_tokenizer(str(parent))
    renderer = ChatRenderer(tokenizer)
    for pool, name in ((train, "train"), (heldout, "heldout")):
        render(pool, renderer)
        kept = [p for p in pool if p.length <= length]
        if len(kept) < len(pool):
            counts[f"left_out_longer_than_{length}_{name}"] += len(pool) - len(kept)
        pool[:] = kept
    if not train:
        raise BadInput(f"no training pairs fit in {length} tokens ({dict(counts)})")
    with TrainingRun("reward-model", out, flags) as run:
        tokenizer_dir = run.workdir / "tokenizer"
        if run.dist.main:
            tokenizer.save_pretrained(str(tokenizer_dir))
        import torch

        torch.manual_seed(flags.seed)
        model = from_causal_lm(parent)
        per_step = min(pairs_per_step or table.pairs_per_step, len(train))
        n_steps = max(1, int((epochs if epochs is not None else table.epochs) * len(train)) // per_step)
        peak_lr = lr if lr is not None else table.lr
        schedule = build_schedule({"name": "linear", "warmup": "3%", "final_lr_ratio": 0.0}, peak_lr, n_steps)
        batches = PairBatches(train, per_step, length, flags.seed, run.dist.world, tokenizer.pad_token_id)
        settings = run.settings(schedule, table, offset=0, n_steps=n_steps, global_batch=flags.micro_batch * run.dist.world,
                                seq=length, model=model)
        settings.schedule_unit = "steps"
        trainer = run.trainer(model, settings, batches, tokenizer_dir, read_lineage(parent), loss=BradleyTerry(),
                              scorer=RewardScores)
        if heldout:
            trainer.validation = PairAccuracy(heldout, length, tokenizer.pad_token_id, flags.micro_batch, trainer.autocast)
        console.print(f"reward model from {parent}: {len(train)} training pairs, {len(heldout)} held out; {n_steps} steps x "
                      f"{per_step} pairs, lr {peak_lr:g}; {settings.precision} on {run.dist.device}")
        summary = run.train(trainer)
        # the mean score of the training answers, chosen and rejected alike, is the reward's zero
        offset = float(np.mean(np.concatenate(pair_scores(trainer.wrapped, train, length, tokenizer.pad_token_id,
                                                          flags.micro_batch, trainer.autocast))))
        results = {"offset": offset, "pairs": dict(counts)}
        if heldout:
            from granite_cli.stats import mean_interval

            # the trainer validates after its last step: the verdicts are the trained model's
            accuracy, low, high = mean_interval(trainer.validation.correct.tolist(), flags.seed)
            results["heldout_accuracy"] = {"n": len(heldout), "accuracy": accuracy, "ci_low": low, "ci_high": high}
            console.print(f"held-out pairwise accuracy {accuracy:.3f} (95% interval [{low:.3f}, {high:.3f}], "
                          f"{len(heldout)} pairs; chance 0.5)")
        run.finish(trainer, summary, {
            "recipe": loaded.name, "steps": n_steps, "lr": peak_lr, "pairs_per_step": per_step, "seq_len": length,
            "heldout_fraction": fraction, "command": sys.argv,
        }, [input_record(Path(p)) for p in paths], results=results, files={"reward_model.json": calibration_text(offset)})


# ------------------------------------------------------------------ pairs
@dataclass
class Pair:
    id: str
    messages: list[dict]
    chosen: str
    rejected: str
    chosen_ids: list[int] = None
    rejected_ids: list[int] = None

    @property
    def length(self) -> int:
        return len(self.chosen_ids) + len(self.rejected_ids)


def read_pairs(paths: list[str], policy, fraction: float) -> tuple[list[Pair], list[Pair], Counter]:
    from granite_cli.data.records import checked_records
    from stages.rl.prompts import is_heldout

    train, heldout, counts = [], [], Counter()
    for pair in checked_records(paths, policy, checked_pair, "bad preference pair"):
        held = is_heldout(pair.messages, fraction)
        (heldout if held else train).append(pair)
        counts["heldout" if held else "train"] += 1
    return train, heldout, counts


def checked_pair(record: dict, path: str, line_no: int) -> Pair:
    from granite_cli.data.chat import normalize_sample, schema_problems

    sample = normalize_sample({"messages": record.get("messages")})
    problems = schema_problems(sample, prompt=True)
    answers = []
    for side in ("chosen", "rejected"):
        answer = record.get(side)
        text = answer.get("content") if isinstance(answer, dict) and answer.get("role", "assistant") == "assistant" else answer
        if not isinstance(text, str) or not text.strip():
            problems.append(f"{side!r} must be an assistant message or its text, not {answer!r}"[:200])
        answers.append(text)
    if problems:
        raise BadInput("; ".join(problems), path, line_no)
    return Pair(str(record.get("id", f"{path}:{line_no}")), sample["messages"], *answers)


def render(pairs: list[Pair], renderer) -> None:
    """Each side's token ids: the conversation with that answer, cut after the answer's end-of-text token."""
    from model.reward_model import end_of_answer

    samples = [{"messages": p.messages + [{"role": "assistant", "content": answer}]}
               for p in pairs for answer in (p.chosen, p.rejected)]
    rendered = renderer.render(samples)
    for i, pair in enumerate(pairs):
        pair.chosen_ids = end_of_answer(rendered[2 * i].ids.tolist(), renderer.eot)
        pair.rejected_ids = end_of_answer(rendered[2 * i + 1].ids.tolist(), renderer.eot)


def pack(pairs: list[Pair], length: int, pad_id: int, rows_multiple: int = 1) -> dict:
    """Rows of whole pairs, best-fit: input ids, labels (CHOSEN / REJECTED at each side's last token, IGNORE elsewhere:
    read in row-major order they alternate chosen, rejected pair by pair) and position ids restarting per side."""
    import torch

    from granite_cli.data.packing import best_fit

    rows = best_fit([p.length for p in pairs], length, np.arange(len(pairs)))
    count = math.ceil(len(rows) / rows_multiple) * rows_multiple  # every process takes as many rows (extra ones are empty)
    ids = np.full((count, length), pad_id, dtype=np.int64)
    labels = np.full((count, length), IGNORE, dtype=np.int64)
    positions = np.tile(np.arange(length, dtype=np.int64), (count, 1))
    for r, row in enumerate(rows):
        start = 0
        for index in row:
            for side, label in ((pairs[index].chosen_ids, CHOSEN), (pairs[index].rejected_ids, REJECTED)):
                n = len(side)
                ids[r, start:start + n] = side
                labels[r, start + n - 1] = label
                positions[r, start:start + n] = np.arange(n)
                start += n
        positions[r, start:] = np.arange(length - start)  # padding: a block of its own
    return {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels), "position_ids": torch.from_numpy(positions)}


class PairBatches:
    """The trainer's batch source: step s takes pairs [s·P, (s+1)·P) of a seeded permutation per epoch, packed."""

    def __init__(self, pairs: list[Pair], per_step: int, length: int, seed: int, world: int, pad_id: int):
        from granite_cli.data.packing import EpochOrder

        self.pairs, self.per_step, self.length, self.world, self.pad_id = pairs, per_step, length, world, pad_id
        self.order = EpochOrder(len(pairs), seed)

    def batch(self, step: int) -> dict:
        chosen = [self.pairs[self.order[p]] for p in range(step * self.per_step, (step + 1) * self.per_step)]
        return pack(chosen, self.length, self.pad_id, self.world)


# ------------------------------------------------------------------ loss and evaluation
class BradleyTerry:
    """-log sigmoid(r_chosen - r_rejected), averaged over the global batch's pairs; logs pairwise accuracy and margin."""

    wants_entropy = False

    def denominator(self, batch: dict) -> float:
        return float((batch["labels"] == CHOSEN).sum())

    def __call__(self, scores, entropy, micro: dict):
        import torch.nn.functional as F

        margin = scores[micro["labels"] == CHOSEN] - scores[micro["labels"] == REJECTED]
        return -F.logsigmoid(margin).sum(), {"accuracy": (margin > 0).float().sum() + 0.5 * (margin == 0).float().sum(),
                                             "margin": margin.sum()}


def pair_scores(scorer, pairs: list[Pair], length: int, pad_id: int, micro_batch: int, autocast):
    """(chosen scores, rejected scores) of the pairs as numpy arrays, pair by pair in pack order."""
    import torch

    batch = pack(pairs, length, pad_id)
    device = next(scorer.parameters()).device
    chosen, rejected = [], []
    was_training = scorer.training
    scorer.eval()
    with torch.no_grad(), autocast():
        for start in range(0, len(batch["input_ids"]), micro_batch):
            micro = {k: v[start:start + micro_batch].to(device) for k, v in batch.items()}
            scores, _ = scorer(micro["input_ids"], micro["labels"], micro["position_ids"])
            chosen.append(scores[micro["labels"] == CHOSEN].float().cpu())
            rejected.append(scores[micro["labels"] == REJECTED].float().cpu())
    scorer.train(was_training)
    return torch.cat(chosen).numpy(), torch.cat(rejected).numpy()


class PairAccuracy:
    """The trainer's validation: held-out Bradley-Terry loss and pairwise accuracy (a tie counts half). The last
    evaluation's per-pair verdicts stay in `correct` (1 ranked right, 0.5 tie, 0 wrong) for the final interval.

    Every process scores every held-out pair (a few hundred pairs: less than one training step)."""

    def __init__(self, pairs: list[Pair], length: int, pad_id: int, micro_batch: int, autocast):
        self.pairs, self.length, self.pad_id, self.micro, self.autocast = pairs, length, pad_id, micro_batch, autocast
        self.correct = None

    def __call__(self, scorer) -> dict:
        chosen, rejected = pair_scores(scorer, self.pairs, self.length, self.pad_id, self.micro, self.autocast)
        self.correct = (chosen > rejected) + 0.5 * (chosen == rejected)
        loss = float(np.mean(np.logaddexp(0.0, rejected - chosen)))  # -log sigmoid(margin)
        return {"val_loss": loss, "val_accuracy": float(self.correct.mean())}
