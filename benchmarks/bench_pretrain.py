"""Pre-training throughput: granite's trainer against the Hugging Face `Trainer` at each one's settings, and CPU MFU.

Same model (a preset built from its config), same token windows, same global batch and micro batch, on this
machine's CPU, in one run, at each setting: fp32, bf16 autocast, and bf16 with torch.compile (HF: `bf16=True`,
`torch_compile=True`). Each figure is the median seconds per optimizer step after the warm-up steps (compilation
happens there); tokens/s = global batch tokens / that median. The goal compares each tool's best setting. MFU
divides achieved model FLOP/s (granite_cli/training/flops.py) by this machine's measured fp32 matmul peak.

    python benchmarks/bench_pretrain.py [--preset small-10m] [--steps 8] [--settings fp32,bf16,bf16+compile] [--rounds 3]

With --rounds R every setting runs R times for each tool, the two tools taking turns, and each figure is the median
of its R runs; the JSON keeps every round's best-against-best ratio, whose spread says how far one run can be trusted.

Where granite's step time goes: `granite pretrain --profile 4:6` (granite_cli/training/profiling.py). Every run of this
benchmark, granite's and HF's, shares granite's allocator setting (set by granite's trainer on the CPU, and by
benchmarks/common.py for whichever runs first); what the setting is worth alone is measured separately, with the
CLI run with and without it (`--allocator-presets`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import REPO, save, tokenizer  # noqa: E402

SEQ, GLOBAL, MICRO = 256, 32, 16


def windows_source(seq: int, batch: int):
    """Token windows over the tiny recipe's phase-1 shards (made by `make all`)."""
    from granite_cli.data.shards import ShardSet
    from granite_cli.data.windows import TokenWindows

    shards = REPO / "runs" / "tiny" / "shards" / "phase-1"
    if not (shards / "manifest.json").exists():
        raise SystemExit(f"{shards} is missing: run `make all` (or mix and tokenize phase 1) first")
    return TokenWindows([ShardSet(shards)], seq, seed=0, batch_size=batch)


WARMUP = 3  # steps left out of the median: the first ones compile (and warm the allocator)


def granite_seconds_per_step(preset: str, steps: int, vocab: int, setting: str = "fp32") -> tuple[float, object]:
    import torch
    from transformers import GraniteForCausalLM

    from granite_cli.training import distributed
    from granite_cli.training.schedules import build_schedule
    from granite_cli.training.trainer import Trainer, TrainSettings
    from model.presets import build_config

    torch.manual_seed(0)
    model = GraniteForCausalLM(build_config(preset, vocab_size=vocab))
    settings = TrainSettings(steps=steps, global_batch=GLOBAL, micro_batch=MICRO, seq_len=SEQ,
                             schedule=build_schedule({"name": "constant"}, 1e-3, total=1),
                             precision="bf16" if setting.startswith("bf16") else "fp32", compile=setting.endswith("compile"))
    dist = distributed.Dist(0, 1, 0, torch.device("cpu"))
    batches = windows_source(SEQ, GLOBAL)
    trainer = Trainer(model, settings, batches, dist, Path("/tmp"), save=lambda *a: None)
    times = []
    for _ in range(steps + WARMUP):
        start = time.perf_counter()
        trainer.step_on(batches.batch(trainer.step))
        times.append(time.perf_counter() - start)
    return statistics.median(times[WARMUP:]), model.config


def hf_trainer_seconds_per_step(preset: str, steps: int, vocab: int, setting: str = "fp32") -> float:
    import torch
    from transformers import GraniteForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from model.presets import build_config

    torch.manual_seed(0)
    model = GraniteForCausalLM(build_config(preset, vocab_size=vocab))
    source = windows_source(SEQ, 1)

    class Windows(torch.utils.data.Dataset):
        def __len__(self):
            return GLOBAL * (steps + WARMUP)

        def __getitem__(self, i):
            row = source.rows([i % source.count])
            # HF shifts labels itself: give it the full window as both inputs and labels
            window = torch.cat([row["input_ids"][0], row["labels"][0, -1:]])
            return {"input_ids": window, "labels": window}

    times = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.start)

    args = TrainingArguments(output_dir="/tmp/hf-bench", per_device_train_batch_size=MICRO,
                             gradient_accumulation_steps=GLOBAL // MICRO, max_steps=steps + WARMUP, learning_rate=1e-3,
                             lr_scheduler_type="constant", optim="adamw_torch", logging_strategy="no", save_strategy="no",
                             report_to=[], use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, max_grad_norm=1.0,
                             bf16=setting.startswith("bf16"), torch_compile=setting.endswith("compile"))
    Trainer(model=model, args=args, train_dataset=Windows(), callbacks=[Clock()]).train()
    return statistics.median(times[WARMUP:])


def allocator_ratio(preset: str, rounds: int, steps: int = 8) -> dict:
    """`granite pretrain` (the CLI, fp32) with granite's allocator setting against glibc's defaults
    (GRANITE_KEEP_FREED_MEMORY=0; granite_cli/allocator.py): median tokens/s of the steps after the warm-up, the
    two taking turns in each round. Both runs of the HF comparison above share the setting, so it is measured here."""
    out = REPO / "runs" / "bench" / "allocator"

    def tokens_per_second(keep: str) -> float:
        subprocess.run([sys.executable, "-m", "granite_cli", "pretrain", "--run-dir", str(REPO / "runs" / "tiny"), "-o",
                        str(out), "--overwrite", "--preset", preset, "--seq-len", str(SEQ), "--batch-tokens",
                        str(GLOBAL * SEQ), "--micro-batch", str(MICRO), "--steps", str(steps), "--precision", "fp32",
                        "--peak-tflops", "1", "--log-every", "1", "--val-tokens", str(SEQ)], check=True, cwd=REPO,
                       env={**os.environ, "GRANITE_KEEP_FREED_MEMORY": keep}, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        rates = [m["tokens_per_second"] for m in lines if "tokens_per_second" in m]  # not the validation lines
        return statistics.median(rates[WARMUP:steps])

    rates = {"1": [], "0": []}
    for _ in range(rounds):
        for keep in rates:
            rates[keep].append(tokens_per_second(keep))
    kept, default = statistics.median(rates["1"]), statistics.median(rates["0"])
    return {"preset": preset, "tokens_per_second": {"keep_freed_memory": kept, "glibc_defaults": default},
            "ratio_keep_freed_memory_vs_glibc_defaults": kept / default}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small-10m")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--settings", default="fp32,bf16,bf16+compile")
    parser.add_argument("--rounds", type=int, default=3, help="runs of every setting for each tool (medians of them)")
    parser.add_argument("--mfu-presets", default="tiny-2m,base-50m")
    parser.add_argument("--allocator-presets", default="tiny-2m,small-10m",
                        help="presets whose `granite pretrain` runs with and without granite's allocator setting")
    parser.add_argument("--allocator-rounds", type=int, default=3)
    args = parser.parse_args()
    if args.rounds < 1 or args.steps < 1:
        parser.error("--rounds and --steps must be at least 1")
    import torch

    from granite_cli.training.flops import flops_per_token, measure_peak_flops
    from granite_cli.data.tokenizer_io import load_tokenizer

    vocab = len(load_tokenizer(str(tokenizer())))
    tokens_per_step = GLOBAL * SEQ
    settings = args.settings.split(",")
    rounds, config = [], None  # rounds[r][tool][setting]: seconds a step
    for number in range(args.rounds):
        granite, hf = {}, {}
        for setting in settings:
            granite[setting], config = granite_seconds_per_step(args.preset, args.steps, vocab, setting)
            hf[setting] = hf_trainer_seconds_per_step(args.preset, args.steps, vocab, setting)
            print(f"round {number + 1}/{args.rounds}, {setting}: granite {granite[setting]:.3f} s/step, "
                  f"HF Trainer {hf[setting]:.3f}", file=sys.stderr)
        rounds.append({"granite": granite, "hf_trainer": hf})
    ours = {s: statistics.median(r["granite"][s] for r in rounds) for s in settings}
    theirs = {s: statistics.median(r["hf_trainer"][s] for r in rounds) for s in settings}
    best_ours, best_theirs = min(ours, key=ours.get), min(theirs, key=theirs.get)
    round_ratios = [min(r["hf_trainer"].values()) / min(r["granite"].values()) for r in rounds]
    peak = measure_peak_flops(torch.device("cpu"), torch.float32, seconds=2.0)
    mfu = {}
    for preset in [args.preset, *filter(None, args.mfu_presets.split(","))]:
        step, preset_config = (ours["fp32"], config) if preset == args.preset and "fp32" in ours else \
            granite_seconds_per_step(preset, 4, vocab)
        rate = tokens_per_step / step
        mfu[preset] = {"tokens_per_second": rate, "mfu": rate * flops_per_token(preset_config, SEQ) / peak}
    save("pretrain", {
        "preset": args.preset, "seq_len": SEQ, "global_batch": GLOBAL, "micro_batch": MICRO,
        "median_seconds_per_step": {"granite": ours, "hf_trainer": theirs},
        "tokens_per_second": {"granite": {s: tokens_per_step / v for s, v in ours.items()},
                              "hf_trainer": {s: tokens_per_step / v for s, v in theirs.items()}},
        "ratio_same_setting": {s: theirs[s] / ours[s] for s in ours},
        "best": {"granite": best_ours, "hf_trainer": best_theirs},
        "ratio_best_vs_best": theirs[best_theirs] / ours[best_ours], "goal": {"ratio_best_vs_best": ">= 1.3"},
        "rounds": rounds, "ratio_best_vs_best_each_round": round_ratios,
        "cpu_peak_fp32_tflops": peak / 1e12, "cpu_mfu_fp32": mfu,
        "allocator": {preset: allocator_ratio(preset, args.allocator_rounds)
                      for preset in filter(None, args.allocator_presets.split(","))},
    })


if __name__ == "__main__":
    main()
