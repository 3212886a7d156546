"""RL step time: `granite rl` against TRL's GRPOTrainer, same model, prompts, rewards, G, completion length, loss.

Both start from the tiny recipe's SFT checkpoint and train on the bundled stage-1 prompts that a verifier scores
(chat prompts need a reward model and are left out on both sides), each completion scored by the same
granite_cli.verify call. Shared settings: G=4 completions for each of 8 prompts a step (32 sequences), up to 64
new tokens, temperature 1, DAPO loss with clip 0.2/0.28, KL beta 0.05 to the starting model, one update per
rollout batch, fp32 on CPU (each tool's best CPU setting: bf16 autocast in generation is slower here), LR 1e-4.

Reported: the median seconds per step after two warm-up steps, and the share of a step spent generating
(granite logs it; TRL's generation is timed by wrapping its `_generate`). Goal (issue 12): granite at most
0.5x TRL's time per step.

    python benchmarks/bench_rl.py [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import REPO, WORK, save, step_timer  # noqa: E402
from granite_cli.data.records import read_records  # noqa: E402

SFT = REPO / "runs" / "tiny" / "checkpoints" / "sft"
PROMPTS = REPO / "examples" / "data" / "rl" / "multi-domain.jsonl.zst"
G, PROMPTS_PER_STEP, NEW_TOKENS, BETA, LR = 4, 8, 64, 0.05, 1e-4


def bench_prompts() -> Path:
    path = WORK / "rl-bench.jsonl"
    WORK.mkdir(parents=True, exist_ok=True)
    rows = [r for r in read_records([str(PROMPTS)]) if r["verifier"]["type"] != "reward_model"]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_granite(prompts: Path, steps: int) -> dict:
    out = WORK / "rl-granite"
    subprocess.run([sys.executable, "-m", "granite_cli", "rl", str(prompts), "--init-from", str(SFT), "-o", str(out),
                    "--steps", str(steps), "-G", str(G), "--prompts-per-step", str(PROMPTS_PER_STEP),
                    "--max-new-tokens", str(NEW_TOKENS), "--temperature", "1.0", "--beta", str(BETA), "--lr", str(LR), "--loss", "dapo",
                    "--heldout-fraction", "0", "--precision", "fp32", "--peak-tflops", "1", "--overwrite",
                    "--run-dir", str(WORK / "rl-run")], check=True, cwd=REPO, stderr=subprocess.DEVNULL)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    step = [m["seconds_rollout"] + m["seconds_update"] for m in lines]
    generation = [m["seconds_generation"] for m in lines]
    return {"steps": len(lines), "seconds_per_step": statistics.median(step[2:]),
            "generation_share": statistics.median(g / s for g, s in zip(generation[2:], step[2:])),
            "mean_reward": statistics.mean(m["reward"] for m in lines),
            "completion_tokens_mean": statistics.mean(m["length_mean"] for m in lines)}


def run_trl(prompts: Path, steps: int) -> dict:
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from granite_cli.data.tokenizer_io import load_tokenizer
    from granite_cli.verify import verify
    from model.checkpoint import load_model

    records = list(read_records([str(prompts)]))
    dataset = Dataset.from_list([{"prompt": r["messages"], "verifier": json.dumps(r["verifier"])} for r in records])

    def reward(prompts, completions, verifier, **kwargs):
        return [verify(c[-1]["content"] if isinstance(c, list) else c, json.loads(v)).score for c, v in zip(completions, verifier)]

    timer = step_timer()
    torch.manual_seed(0)
    tokenizer = load_tokenizer(str(SFT))
    tokenizer.padding_side = "left"
    config = GRPOConfig(output_dir=str(WORK / "rl-trl"), num_generations=G, per_device_train_batch_size=G * PROMPTS_PER_STEP,
                        gradient_accumulation_steps=1, max_completion_length=NEW_TOKENS, temperature=1.0, top_p=1.0,
                        loss_type="dapo", beta=BETA, epsilon=0.2, epsilon_high=0.28, learning_rate=LR,
                        lr_scheduler_type="constant", max_steps=steps, logging_steps=1, save_strategy="no", report_to=[],
                        use_cpu=True, bf16=False, seed=0, dataloader_num_workers=0)
    trainer = GRPOTrainer(model=load_model(SFT, dtype=torch.float32), reward_funcs=reward, args=config,
                          train_dataset=dataset, processing_class=tokenizer, callbacks=[timer])
    generation: list[float] = []
    original = trainer._generate

    def timed(*args, **kwargs):
        started = time.perf_counter()
        result = original(*args, **kwargs)
        generation.append(time.perf_counter() - started)
        return result

    trainer._generate = timed
    trainer.train()
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    return {"steps": len(timer.times), "seconds_per_step": statistics.median(timer.times[2:]),
            "generation_share": statistics.median(g / s for g, s in zip(generation[2:], timer.times[2:])),
            "mean_reward": statistics.mean(rewards) if rewards else None}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10)
    steps = parser.parse_args().steps
    if not (SFT / "config.json").exists():
        raise SystemExit("needs `make all` first (the SFT checkpoint)")
    prompts = bench_prompts()
    granite = run_granite(prompts, steps)
    trl = run_trl(prompts, steps)
    save("rl", {"settings": {"G": G, "prompts_per_step": PROMPTS_PER_STEP, "max_new_tokens": NEW_TOKENS, "beta": BETA,
                             "loss": "dapo", "precision": "fp32", "steps": steps},
                "granite": granite, "trl": trl, "time_ratio": granite["seconds_per_step"] / trl["seconds_per_step"],
                "goal": "granite at most 0.5x TRL's seconds per step"})


if __name__ == "__main__":
    main()
