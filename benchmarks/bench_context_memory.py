"""Peak memory of one long-context training step (forward + backward of one row) at each length: granite's chunked
log-probabilities (with and without activation checkpointing) against the plain transformers loss
(`model(input_ids, labels=...)`, which materialises the whole row's fp32 logits); and, for a row packed with two
documents as extend-context packs them, one process against the row's positions split over two processes
(`--context-parallel 2`).

The model is the tiny-2m preset with Granite's real 100,352-entry vocabulary, where the logits dominate: at 8K
tokens a row's fp32 logits alone are 3.3 GB (and their gradient as much again). Each configuration runs in its own
process (the context-parallel one in two, under torchrun; its figure is the larger rank's); the figure is the
kernel's peak RSS during the step minus the peak before it (model built, data ready).

    python benchmarks/bench_context_memory.py [--lengths 1024,4096,8192]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import REPO, WORK, save  # noqa: E402

VOCAB = 100_352
CHILD = """
import json, resource, sys, time
import torch
from transformers import GraniteForCausalLM
sys.path.insert(0, {repo!r})
from granite_cli.training import context_parallel, distributed
from granite_cli.training.logprobs import TokenLogprobs
from model.presets import build_config

length, how = int(sys.argv[1]), sys.argv[2]
dist = distributed.setup("cpu")
torch.manual_seed(0)
config = build_config("tiny-2m", vocab_size={vocab}, bos_id=0, eos_id=0, pad_id=1)
config.max_position_embeddings = max(length, config.max_position_embeddings)
model = GraniteForCausalLM(config)
if how == "granite+checkpointing":
    model.gradient_checkpointing_enable()
model.train()
ids = torch.randint(0, {vocab}, (1, length + 1))
batch = {{"input_ids": ids[:, :-1], "labels": ids[:, 1:]}}
if how.startswith("packed"):  # two documents, positions restarting at the second (attention stays inside each)
    batch["position_ids"] = torch.cat([torch.arange(length // 2), torch.arange(length - length // 2)])[None]
attention = {{}}
if dist.world > 1:
    split = context_parallel.ContextParallel.create(dist, dist.world)
    model.set_attn_implementation(context_parallel.register())
    batch, attention["context_parallel"] = split.split(batch)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
if how == "transformers":
    loss = model(input_ids=ids[:, :-1], labels=ids[:, :-1]).loss
else:
    logprobs, _ = TokenLogprobs(model)(batch["input_ids"], batch["labels"], batch.get("position_ids"), **attention)
    loss = -logprobs.mean()
loss.backward()
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"step_mb": (peak - before) / 1024, "peak_mb": peak / 1024, "seconds": seconds}}))
distributed.teardown(dist)
"""
HOWS = ("transformers", "granite", "granite+checkpointing", "packed", "packed, context parallel x2")


def measure(length: int, how: str) -> dict:
    child = CHILD.format(repo=str(REPO), vocab=VOCAB)
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29561"] \
        if "context parallel" in how else [sys.executable]
    WORK.mkdir(parents=True, exist_ok=True)
    script = WORK / "context_memory_child.py"
    script.write_text(child)
    out = subprocess.run([*launch, str(script), str(length), how], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"} if "context parallel" in how else None)
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    ranks = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return max(ranks, key=lambda r: r["step_mb"])  # the rank that needs the most


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", default="1024,4096,8192")
    lengths = [int(n) for n in parser.parse_args().lengths.split(",")]
    rows = {}
    for length in lengths:
        rows[length] = {how: measure(length, how) for how in HOWS}
        print(length, json.dumps(rows[length]), flush=True)
    save("context_memory", {"vocab": VOCAB, "preset": "tiny-2m", "lengths": rows,
                            "saved_mb": {length: row["transformers"].get("step_mb", 0) - row["granite"].get("step_mb", 0)
                                         for length, row in rows.items()},
                            "context_parallel_saved_mb": {length: row["packed"].get("step_mb", 0)
                                                          - row["packed, context parallel x2"].get("step_mb", 0)
                                                          for length, row in rows.items()}})


if __name__ == "__main__":
    main()
