"""Reward model training: `granite rl reward-model` against TRL's RewardTrainer, same base model, pairs and settings.

Both start from the tiny recipe's SFT checkpoint (granite's GraniteForSequenceClassification: transformers has
none, so TRL gets the same class) and train two epochs over the bundled preference pairs that rl does not hold
out, 16 pairs a step, LR 3e-4 with 3% warmup and linear decay, fp32 on CPU. Each is scored the way it trained
(granite reads the end-of-text token of the answer, TRL the last token its chat template renders) on the same
held-out pairs: pairwise accuracy, with granite's bootstrap interval. Throughput is pairs per second over the
median step (the first two steps are warm-up); granite packs each step's pairs into rows, TRL pads every pair's
chosen and rejected sides to the longest in the batch.

    python benchmarks/bench_reward_model.py
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import REPO, WORK, save, step_timer  # noqa: E402

SFT = REPO / "runs" / "tiny" / "checkpoints" / "sft"
PAIRS = REPO / "examples" / "data" / "chat" / "preference.jsonl.zst"
EPOCHS, PAIRS_PER_STEP, LR, SEQ, HELDOUT = 2, 16, 3e-4, 512, 0.2


def run_granite() -> dict:
    out = WORK / "rm-granite"
    subprocess.run([sys.executable, "-m", "granite_cli", "rl", "reward-model", str(PAIRS), "--init-from", str(SFT), "-o", str(out),
                    "--epochs", str(EPOCHS), "--pairs-per-step", str(PAIRS_PER_STEP), "--lr", str(LR), "--seq-len", str(SEQ),
                    "--heldout-fraction", str(HELDOUT), "--precision", "fp32", "--log-every", "1", "--peak-tflops", "1",
                    "--overwrite", "--run-dir", str(WORK / "rm-run")], check=True, cwd=REPO, stderr=subprocess.DEVNULL)
    lines = [m for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "grad_norm" in m]  # steps
    tokens = [b["tokens"] - a["tokens"] for a, b in zip([{"tokens": 0}] + lines, lines)]
    seconds = [t / m["tokens_per_second"] for t, m in zip(tokens, lines)]
    accuracy = json.loads((out / "lineage.json").read_text())[-1]["metrics"]["heldout_accuracy"]
    step = statistics.median(seconds[2:])
    return {"steps": len(lines), "seconds_per_step": step, "pairs_per_second": PAIRS_PER_STEP / step,
            "heldout_accuracy": accuracy["accuracy"], "heldout_interval": [accuracy["ci_low"], accuracy["ci_high"]],
            "heldout_pairs": accuracy["n"], "final_loss": lines[-1]["loss"]}


def split_pairs() -> tuple[list[dict], list[dict]]:
    from granite_cli.data.records import read_records
    from stages.rl.prompts import is_heldout

    train, heldout = [], []
    for record in read_records([str(PAIRS)]):
        row = {"chosen": record["messages"] + [record["chosen"]], "rejected": record["messages"] + [record["rejected"]]}
        (heldout if is_heldout(record["messages"], HELDOUT) else train).append(row)
    return train, heldout


def run_trl() -> dict:
    import torch
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    from granite_cli.data.tokenizer_io import load_tokenizer
    from model.reward_model import from_causal_lm

    train, heldout = split_pairs()
    timer = step_timer()
    torch.manual_seed(0)
    tokenizer = load_tokenizer(str(SFT))
    config = RewardConfig(output_dir=str(WORK / "rm-trl"), per_device_train_batch_size=PAIRS_PER_STEP,
                          per_device_eval_batch_size=PAIRS_PER_STEP, gradient_accumulation_steps=1, num_train_epochs=EPOCHS,
                          learning_rate=LR, lr_scheduler_type="linear", warmup_steps=0.03, weight_decay=0.0,
                          max_grad_norm=1.0, max_length=SEQ, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                          bf16=False, seed=0, dataloader_num_workers=0)
    trainer = RewardTrainer(model=from_causal_lm(SFT), args=config, train_dataset=Dataset.from_list(train),
                            eval_dataset=Dataset.from_list(heldout), processing_class=tokenizer, callbacks=[timer])
    trainer.train()
    step = statistics.median(timer.times[2:])
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"steps": len(timer.times), "seconds_per_step": step, "pairs_per_second": PAIRS_PER_STEP / step,
            "heldout_accuracy": pair_accuracy(trainer.model, tokenizer, heldout), "heldout_pairs": len(heldout),
            "final_loss": losses[-1]}


def pair_accuracy(model, tokenizer, pairs: list[dict]) -> float:
    """Each held-out pair scored the way TRL trained on it (its chat template's tokens, the last one read), one pair
    at a time: the share ranked right, a tie counting half (TRL's own eval averages batch means, which weighs a
    short last batch as much as a full one)."""
    import torch

    def score(messages):
        ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            return model(input_ids=ids.to(model.device)).logits[0, 0].item()

    model.eval()
    right = [score(p["chosen"]) - score(p["rejected"]) for p in pairs]
    return sum(1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in right) / len(right)


def main() -> None:
    if not (SFT / "config.json").exists():
        raise SystemExit("needs `make all` first (the SFT checkpoint)")
    granite = run_granite()
    trl = run_trl()
    save("reward_model", {"settings": {"epochs": EPOCHS, "pairs_per_step": PAIRS_PER_STEP, "lr": LR, "max_length": SEQ,
                                       "heldout_fraction": HELDOUT, "precision": "fp32", "device": "cpu"},
                          "granite": granite, "trl": trl, "speed_ratio": granite["pairs_per_second"] / trl["pairs_per_second"],
                          "goal": "same or better held-out accuracy than TRL's RewardTrainer; pairs/s side by side"})


if __name__ == "__main__":
    main()
