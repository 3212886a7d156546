"""GPU pre-training throughput and MFU: the ~1B preset, bf16 autocast, torch.compile, one GPU.

Runs `granite pretrain` itself (no separate loop) on synthetic token shards with a 100352-entry
vocabulary (the Granite tokenizer's size), once with DDP-less single-GPU training and once with
FSDP2 on one rank. MFU uses the GPU's measured bf16 matmul peak unless --peak-tflops is given.
Needs an H100/H200-class GPU; writes benchmarks/results/pretrain_gpu.json. Goal: MFU >= 45%.

    python benchmarks/bench_pretrain_gpu.py [--steps 30] [--seq-len 4096] [--batch-tokens 512K]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import REPO, WORK, save  # noqa: E402

VOCAB = 100352


def synthetic_run_dir(seq_len: int, tokens: int) -> Path:
    """A run directory with a 100352-entry tokenizer and random-token shards (throughput does not depend on text)."""
    from granite_cli.data.shards import ShardWriter, build_manifest, token_dtype
    from granite_cli.data.tokenizer_io import load_tokenizer, tokenizer_identity
    from granite_cli.data.tokenizer_train import train_bpe

    run = WORK / "gpu-run"
    if (run / "shards" / "phase-1" / "manifest.json").exists():
        return run
    texts = (line for path in sorted((REPO / "examples" / "data" / "pretrain").glob("*.zst"))
             for line in subprocess.run(["zstd", "-dc", str(path)], capture_output=True).stdout.decode().splitlines())
    tok = train_bpe(texts, VOCAB, 1, "granite-gpu-bench")  # the vocabulary size matters for FLOPs; the merges do not
    tok.save_pretrained(str(run / "tokenizer"))
    tok = load_tokenizer(str(run / "tokenizer"))
    identity = tokenizer_identity(tok, str(run / "tokenizer"))
    out = run / "shards" / "phase-1"
    out.mkdir(parents=True)
    dtype = token_dtype(len(tok))
    writer = ShardWriter(out, dtype, shard_tokens=tokens)
    flat = np.random.default_rng(0).integers(0, len(tok), size=tokens).astype(np.int64)
    ends = np.arange(seq_len, tokens + 1, seq_len, dtype=np.int64)
    flat[ends - 1] = identity["eos_id"]
    writer.add_batch(flat[:ends[-1]], ends, ["synthetic"] * len(ends))
    (out / "manifest.json").write_text(json.dumps(build_manifest([writer.close()], identity, dtype, {})))
    return run


def run(run_dir: Path, args, launcher: list[str], name: str, extra: tuple = ()) -> dict:
    out = run_dir / "checkpoints" / name
    command = [*launcher, "-m", "granite_cli", "pretrain", "--run-dir", str(run_dir), "-o", str(out), "--overwrite",
               "--preset", "granite-1b", "--seq-len", str(args.seq_len), "--batch-tokens", args.batch_tokens,
               "--micro-batch", str(args.micro_batch), "--steps", str(args.steps), "--precision", "bf16",
               "--compile", "--log-every", "5", "--val-tokens", str(args.seq_len), *extra]
    if args.peak_tflops:
        command += ["--peak-tflops", str(args.peak_tflops)]
    subprocess.run(command, check=True, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steady = [m for m in lines if "mfu" in m][2:]  # the first windows include compilation
    return {"tokens_per_second": float(np.median([m["tokens_per_second"] for m in steady])),
            "mfu": float(np.median([m["mfu"] for m in steady]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--batch-tokens", default="256K")
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--peak-tflops", type=float, default=None)
    args = parser.parse_args()
    run_dir = synthetic_run_dir(args.seq_len, args.seq_len * 4096)
    single = run(run_dir, args, [sys.executable], "single")
    # FSDP2 needs a process group: torchrun with one rank
    fsdp = run(run_dir, args, [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1"], "fsdp", ["--parallel", "fsdp"])
    save("pretrain_gpu", {"preset": "granite-1b", "seq_len": args.seq_len, "batch_tokens": args.batch_tokens,
                          "single_gpu": single, "fsdp2_one_rank": fsdp, "goal_mfu": 0.45})


if __name__ == "__main__":
    main()
