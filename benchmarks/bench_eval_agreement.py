"""Eval agreement and speed: granite eval against lm-evaluation-harness, same model, same items, default few-shot.

Two tasks at their default few-shot settings, the data written to local JSONL in the original schema and run by
both tools (lm-eval with its own gsm8k and mmlu task files, only the data location changed):
- GSM8K, 8-shot generation (IBM's setting; lm-eval's sampler draws the shots from the train split with its seed
  1234, greedy, its stop sequences and its strict and flexible filters), from the bundled held-out arithmetic and
  word problems (the first items are the test split, the next the train split);
- MMLU, 5-shot log-likelihood multiple choice (the subject's header line and its first five dev examples), from the
  bundled held-out numeric tasks with three distractors each, as one subject (elementary_mathematics).
lm-eval runs offline with `--model hf` on the local checkpoint. Reported: per-item agreement of the prompt (text for
text), of the generated text, the extracted answers and the verdicts (GSM8K), of the chosen option (MMLU), and the
wall time of each whole run (model load included) as items/s.

    python benchmarks/bench_eval_agreement.py [CHECKPOINT] [--items 60]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import REPO, WORK, save  # noqa: E402

# lm-eval's own task definitions (prompt, few-shot split and sampler, stop sequences, filters, metrics), pointed at
# local files in the original schema: every setting is lm-eval's default except the data's location.
GSM8K_YAML = """task: granite_gsm8k
include: {lm_eval_tasks}/gsm8k/gsm8k.yaml
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    train: {train}
    test: {test}
num_fewshot: 8
generation_kwargs:
  until: ["Question:", "</s>", "<|im_end|>", "<|end_of_text|>"]
  do_sample: false
  max_gen_toks: {max_tokens}
"""

MMLU_YAML = """task: granite_mmlu
include: {lm_eval_tasks}/mmlu/default/mmlu_elementary_mathematics.yaml
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    dev: {dev}
    test: {test}
num_fewshot: 5
"""


def make_data(root: Path, items: int, seed: int) -> None:
    from granite_cli.data.records import read_records

    heldout = list(read_records([str(REPO / "examples" / "data" / "eval" / "heldout.jsonl.zst")]))
    numeric = [r for r in heldout if r["verifier"]["type"] == "numeric"]
    test, shots = numeric[:items], numeric[items:items + 40]
    if len(test) < items or len(shots) < 40:
        raise SystemExit(f"the held-out set has {len(numeric)} numeric items: fewer than --items + 40")
    rng = random.Random(seed)

    def gsm8k(rows):
        return [{"question": r["messages"][-1]["content"], "answer": f"{r['response']}\n#### {r['answer']}"} for r in rows]

    def mmlu(rows):
        out = []
        for r in rows:
            gold = float(r["answer"])
            options = [gold, gold + rng.randint(1, 9), gold - rng.randint(1, 9), gold * 2 + 1]
            rng.shuffle(options)
            out.append({"question": r["messages"][-1]["content"], "subject": "elementary_mathematics",
                        "choices": [f"{o:g}" for o in options], "answer": options.index(gold)})
        return out

    splits = {("gsm8k", "test"): gsm8k(test), ("gsm8k", "train"): gsm8k(shots),
              ("mmlu", "test"): mmlu(test), ("mmlu", "dev"): mmlu(shots[:5])}
    for (name, split), rows in splits.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / f"{split}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))


def run(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1",
                                                        "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    return time.perf_counter() - start


def lm_eval_samples(out: Path, task: str) -> list[dict]:
    path = next(out.rglob(f"samples_{task}_*.jsonl"))
    return sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda s: s["doc_id"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", nargs="?", default=str(REPO / "runs" / "tiny" / "checkpoints" / "pretrain-phase-4"))
    parser.add_argument("--items", type=int, default=60)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    root = WORK / "agreement"
    shutil.rmtree(root, ignore_errors=True)  # lm-eval adds timestamped files: keep only this run's
    data, lm_out, granite_out = root / "data", root / "lm-eval", root / "granite"
    make_data(data, args.items, seed=0)
    (root / "tasks").mkdir(parents=True, exist_ok=True)
    import lm_eval

    tasks = Path(lm_eval.__file__).parent / "tasks"
    (root / "tasks" / "gsm8k.yaml").write_text(GSM8K_YAML.format(
        lm_eval_tasks=tasks, train=data / "gsm8k" / "train.jsonl", test=data / "gsm8k" / "test.jsonl", max_tokens=args.max_tokens))
    (root / "tasks" / "mmlu.yaml").write_text(MMLU_YAML.format(lm_eval_tasks=tasks, dev=data / "mmlu" / "dev.jsonl",
                                                               test=data / "mmlu" / "test.jsonl"))

    lm_seconds = run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                      f"pretrained={args.checkpoint},dtype=float32", "--tasks", "granite_gsm8k,granite_mmlu",
                      "--include_path", str(root / "tasks"), "--batch_size", str(args.batch_size), "--device", "cpu",
                      "--log_samples", "--output_path", str(lm_out)])
    granite_seconds = run([sys.executable, "-m", "granite_cli", "eval", args.checkpoint, "--tasks", "gsm8k,mmlu",
                           "--chat-template", "off", "--data-dir", str(data), "-o", str(granite_out),
                           "--batch-size", str(args.batch_size), "--max-new-tokens", str(args.max_tokens)])

    ours = {}
    for line in (granite_out / "samples.jsonl").read_text().splitlines():
        row = json.loads(line)
        ours.setdefault(row["task"], []).append(row)
    generated = lm_eval_samples(lm_out, "granite_gsm8k")  # one row per document and filter
    strict = [s for s in generated if s["filter"] == "strict-match"]
    flexible = [s for s in generated if s["filter"] == "flexible-extract"]
    theirs_mc = lm_eval_samples(lm_out, "granite_mmlu")
    same_gsm8k_prompt = [o["prompt"] == t["arguments"]["gen_args_0"]["arg_0"] for o, t in zip(ours["gsm8k"], strict)]
    same_mmlu_prompt = [o["prompt"] == t["arguments"]["gen_args_0"]["arg_0"] for o, t in zip(ours["mmlu"], theirs_mc)]
    same_text = [o["output"].strip() == t["resps"][0][0].strip() for o, t in zip(ours["gsm8k"], strict)]
    same_strict = [o["scores"]["exact_match_strict"] == t["exact_match"] for o, t in zip(ours["gsm8k"], strict)]
    same_flexible = [o["scores"]["exact_match_flexible"] == t["exact_match"] for o, t in zip(ours["gsm8k"], flexible)]
    # lm-eval logs each option's log-likelihood as a string
    their_choice = [max(range(len(t["resps"])), key=lambda j: float(t["resps"][j][0][0])) for t in theirs_mc]
    our_choice = [["A", "B", "C", "D"].index(o["output"].strip()) for o in ours["mmlu"]]
    n = len(ours["gsm8k"]) + len(ours["mmlu"])
    save("eval_agreement", {
        "checkpoint": args.checkpoint, "items_per_task": args.items,
        "gsm8k_8shot": {"same_prompt": sum(same_gsm8k_prompt) / len(same_gsm8k_prompt),
                        "same_output_text": sum(same_text) / len(same_text),
                         "same_strict_verdict": sum(same_strict) / len(same_strict),
                         "same_flexible_verdict": sum(same_flexible) / len(same_flexible)},
        "mmlu_5shot": {"same_prompt": sum(same_mmlu_prompt) / len(same_mmlu_prompt),
                       "same_choice": sum(a == b for a, b in zip(our_choice, their_choice)) / len(our_choice)},
        "wall_seconds": {"granite": granite_seconds, "lm_eval": lm_seconds},
        "items_per_second": {"granite": n / granite_seconds, "lm_eval": n / lm_seconds},
        "ratio_granite_vs_lm_eval": lm_seconds / granite_seconds, "goal": ">= 1.0 and verdicts agree",
    })


if __name__ == "__main__":
    main()
