"""SFT throughput: `granite sft` against TRL's SFTTrainer (assistant-only loss, best-fit packing), same model and data.

Both train one epoch of the tiny recipe's filtered SFT data (conversations that fit 512 tokens and
have no tool calls: Arrow, under `datasets`, would add null keys to tool-call arguments and change
what TRL renders) from the phase-4 checkpoint, 16 packed sequences of 512 tokens a step, on
CPU. The trained (assistant) tokens of an epoch are counted on both sides and must be equal.
Throughput is the mean trained tokens of a step over the median step time (the first two steps are
warm-up). granite drops the last partial batch of the run, TRL keeps it: the per-step rate is what
is compared.

Each tool runs at each setting, fp32, bf16 autocast, and bf16 with torch.compile (granite: `--precision bf16
--compile`; TRL: `bf16=True, torch_compile=True`), in one run; the goal compares each tool's best.

TRL runs padding-free (its default with best-fit packing): a micro-batch is one flattened sequence
with position ids. With 16 sequences per micro-batch that sequence is 8K tokens long and attention
on CPU (sdpa with a block mask) grows with its square, so TRL gets its best CPU setting here:
micro-batches of one packed sequence, 16 accumulation steps. granite runs its defaults (one
micro-batch of 16 rows of 512).

    python benchmarks/bench_sft.py [--settings fp32,bf16,bf16+compile]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import REPO, WORK, save, step_timer  # noqa: E402
from granite_cli.data.records import read_records  # noqa: E402

BASE = REPO / "runs" / "tiny" / "checkpoints" / "pretrain-phase-4"
KEPT = REPO / "runs" / "tiny" / "filter" / "kept.jsonl.zst"
SEQ, BATCH, LR = 512, 16, 3e-3


def bench_data() -> tuple[Path, int]:
    from granite_cli.data.tokenizer_io import load_tokenizer
    from model.chat_format import ChatRenderer

    renderer = ChatRenderer(load_tokenizer(str(BASE)))
    samples = [s for s in read_records([str(KEPT)]) if not any(m.get("tool_calls") for m in s["messages"])]
    rendered = renderer.render(samples)
    chosen = [(s, r) for s, r in zip(samples, rendered) if len(r.ids) <= SEQ]
    path = WORK / "sft-bench.jsonl"
    WORK.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(s) + "\n" for s, _ in chosen))
    return path, sum(int(r.trained[1:].sum()) for _, r in chosen)


def run_granite(data: Path, setting: str) -> dict:
    out = WORK / "sft-granite"
    precision = ["--precision", "bf16" if setting.startswith("bf16") else "fp32"]
    subprocess.run([sys.executable, "-m", "granite_cli", "sft", str(data), "--init-from", str(BASE), "-o", str(out),
                    "--seq-len", str(SEQ), "--batch-sequences", str(BATCH), "--micro-batch", str(BATCH), "--epochs", "1",
                    "--lr", str(LR), "--val-fraction", "0", "--log-every", "1", "--peak-tflops", "1", "--overwrite",
                    "--run-dir", str(WORK / "sft-run"), *precision, *(["--compile"] if setting.endswith("compile") else [])],
                   check=True, cwd=REPO, stderr=subprocess.DEVNULL)
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in steps if "loss" in m]
    seconds = [SEQ * BATCH / m["tokens_per_second"] for m in steps]
    per_step = steps[-1]["trained_tokens"] / len(steps)
    return {"steps": len(steps), "trained_tokens_trained": steps[-1]["trained_tokens"],
            "trained_tokens_per_second": per_step / statistics.median(seconds[2:]), "final_loss": steps[-1]["loss"]}


def run_trl(data: Path, setting: str) -> dict:
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from granite_cli.data.tokenizer_io import load_tokenizer
    from model.chat_template import GRANITE_CHAT_TEMPLATE
    from model.checkpoint import load_model

    rows = []
    for sample in read_records([str(data)]):
        row = {"messages": [{"role": m["role"], "content": m["content"]} for m in sample["messages"]],
               "tools": json.dumps(sample["tools"]) if sample.get("tools") else None}
        row["chat_template_kwargs"] = {"documents": sample["documents"]} if sample.get("documents") else {}
        rows.append(row)
    tokenizer = load_tokenizer(str(BASE))
    tokenizer.chat_template = GRANITE_CHAT_TEMPLATE
    torch.manual_seed(0)
    model = load_model(BASE, dtype=torch.float32)

    timer = step_timer()
    config = SFTConfig(output_dir=str(WORK / "sft-trl"), max_length=SEQ, packing=True, packing_strategy="bfd",
                       assistant_only_loss=True, per_device_train_batch_size=1, gradient_accumulation_steps=BATCH,
                       num_train_epochs=1, learning_rate=LR, lr_scheduler_type="linear", warmup_steps=0.03,
                       weight_decay=0.0, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                       dataloader_num_workers=0, seed=0, bf16=setting.startswith("bf16"),
                       torch_compile=setting.endswith("compile"))
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         callbacks=[timer])
    labels = trainer.train_dataset["labels"]  # -100 outside assistant turns; the model shifts them by one
    trained = sum(sum(1 for label in row if label != -100) for row in labels)
    packed = len(labels)
    trainer.train()
    per_step = trained / max(1, len(timer.times))
    return {"steps": len(timer.times), "packed_sequences": packed, "trained_tokens_per_epoch": trained,
            "trained_tokens_per_second": per_step / statistics.median(timer.times[2:]),
            "final_loss": trainer.state.log_history[-2].get("loss") if len(trainer.state.log_history) > 1 else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", default="fp32,bf16,bf16+compile")
    args = parser.parse_args()
    if not (BASE / "config.json").exists() or not KEPT.exists():
        raise SystemExit("needs `make all` first (the phase-4 checkpoint and the filtered SFT data)")
    data, expected_trained = bench_data()
    granite, trl = {}, {}
    for setting in args.settings.split(","):
        granite[setting], trl[setting] = run_granite(data, setting), run_trl(data, setting)
        print(f"{setting}: granite {granite[setting]['trained_tokens_per_second']:.0f} trained tokens/s, "
              f"TRL {trl[setting]['trained_tokens_per_second']:.0f}", file=sys.stderr)
    rate = lambda results, s: results[s]["trained_tokens_per_second"]  # noqa: E731
    best_granite, best_trl = max(granite, key=lambda s: rate(granite, s)), max(trl, key=lambda s: rate(trl, s))
    save("sft", {"data": {"conversations": sum(1 for _ in read_records([str(data)])),
                          "trained_tokens_per_epoch": expected_trained},
                 "granite": granite, "trl": trl,
                 "same_trained_tokens_per_epoch": all(expected_trained == r["trained_tokens_per_epoch"] for r in trl.values()),
                 "ratio_same_setting": {s: rate(granite, s) / rate(trl, s) for s in granite},
                 "best": {"granite": best_granite, "trl": best_trl},
                 "ratio_best_vs_best": rate(granite, best_granite) / rate(trl, best_trl),
                 "goal": ">= 1.2 (best against best), the same trained tokens"})


if __name__ == "__main__":
    main()
