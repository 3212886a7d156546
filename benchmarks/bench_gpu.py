"""GPU throughput and correctness in one run: pre-training MFU, FSDP2, packed SFT, bf16 against fp32.

On one NVIDIA GPU (H100/H200 class; under 8 minutes), with a 100,352-entry vocabulary (Granite's):
1. pretrain: `granite pretrain` of the `granite-1b` preset in bf16 with torch.compile (SDPA attention) on
   random-token shards: median tokens/s and MFU against the GPU's measured bf16 peak (goal: >= 45%).
2. the same under FSDP2 on one rank (torchrun), which a multi-node run uses.
3. packed SFT: rows of several conversations each, position ids restarting per conversation (what `granite
   sft` trains on), forward and backward through the trainer's scorer in bf16: trained tokens/s, and the
   largest gap between a packed row's per-token log-probabilities and each conversation's alone.
4. bf16 against fp32: the first steps' training loss of the same model on the same batches in both; the
   largest relative gap (goal: within 2%).
It prints one table and writes benchmarks/results/gpu.json. `--smoke` runs every part small on the CPU (tiny
preset, no compile) so the script itself is tested where there is no GPU.

    python benchmarks/bench_gpu.py [--steps 30] [--seq-len 4096] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import REPO, WORK, save  # noqa: E402

VOCAB = 100352


def synthetic_run_dir(name: str, vocab: int, seq_len: int, tokens: int) -> Path:
    """A run directory with a `vocab`-entry tokenizer and random-token shards (throughput does not depend on text)."""
    from granite_cli.data.shards import ShardWriter, build_manifest, token_dtype
    from granite_cli.data.tokenizer_io import load_tokenizer, tokenizer_identity
    from granite_cli.data.tokenizer_train import train_bpe

    run = WORK / name
    if (run / "shards" / "phase-1" / "manifest.json").exists():
        return run
    texts = (line for path in sorted((REPO / "examples" / "data" / "pretrain").glob("*.zst"))
             for line in subprocess.run(["zstd", "-dc", str(path)], capture_output=True).stdout.decode().splitlines())
    tok = train_bpe(texts, vocab, 1, f"granite-{name}")  # the vocabulary size matters for FLOPs; the merges do not
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
    shards = [entry for _, entry in writer.add_batch(flat[:ends[-1]], ends, ["synthetic"] * len(ends))]
    shards += [entry for entry in [writer.close()] if entry]
    (out / "manifest.json").write_text(json.dumps(build_manifest(shards, identity, dtype, {})))
    return run


# ------------------------------------------------------------------ 1, 2, 4: granite pretrain runs
def pretrain(run_dir: Path, args, name: str, precision: str, launcher: tuple = (), extra: tuple = ()) -> list[dict]:
    """The metrics lines of one `granite pretrain` run."""
    out = run_dir / "checkpoints" / name
    command = [sys.executable, *launcher, "-m", "granite_cli", "pretrain", "--run-dir", str(run_dir), "-o", str(out),
               "--overwrite", "--preset", args.preset, "--seq-len", str(args.seq_len), "--batch-tokens", args.batch_tokens,
               "--micro-batch", str(args.micro_batch), "--steps", str(args.steps), "--precision", precision,
               "--log-every", "1", "--val-tokens", str(args.seq_len), "--seed", "0",
               *(("--compile",) if args.compile else ()), *extra]
    if args.peak_tflops:
        command += ["--peak-tflops", str(args.peak_tflops)]
    subprocess.run(command, check=True, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                   stderr=None if args.verbose else subprocess.DEVNULL)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def throughput(lines: list[dict]) -> dict:
    steady = [m for m in lines if m.get("mfu") is not None][3:]  # the first steps include compilation
    return {"tokens_per_second": float(np.median([m["tokens_per_second"] for m in steady])),
            "mfu": float(np.median([m["mfu"] for m in steady]))}


def loss_gap(bf16: list[dict], fp32: list[dict]) -> dict:
    pairs = [(a["loss"], b["loss"]) for a, b in zip(bf16, fp32) if "loss" in a and "loss" in b]
    gaps = [abs(a - b) / abs(b) for a, b in pairs]
    return {"steps": len(pairs), "max_relative_gap": max(gaps), "bf16_last": pairs[-1][0], "fp32_last": pairs[-1][1]}


# ------------------------------------------------------------------ 3: packed SFT
def packed_sft(args, device) -> dict:
    """Trained tokens/s of packed rows through the trainer's scorer, and packed-versus-alone log-probabilities."""
    import torch

    from granite_cli.training import IGNORE

    from granite_cli.training.logprobs import TokenLogprobs
    from model.presets import build_config
    from transformers import GraniteForCausalLM

    torch.manual_seed(0)
    config = build_config(args.preset, vocab_size=args.vocab, max_position_embeddings=args.seq_len)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    scorer = TokenLogprobs(GraniteForCausalLM(config).to(device))
    rng = np.random.default_rng(0)
    lengths = [int(n) for n in rng.integers(args.seq_len // 16, args.seq_len // 3, size=64)]
    rows, current = [], []
    for n in lengths:  # first fit into rows of seq_len
        if sum(current) + n > args.seq_len:
            rows.append(current)
            current = []
        current.append(n)
    rows.append(current)

    def batch(row_lengths: list[list[int]]) -> dict:
        ids = torch.full((len(row_lengths), args.seq_len), 0, dtype=torch.long)
        labels = torch.full_like(ids, IGNORE)
        positions = torch.zeros_like(ids)
        for r, row in enumerate(row_lengths):
            start = 0
            for n in row:
                ids[r, start:start + n] = torch.from_numpy(rng.integers(1, args.vocab, size=n))
                labels[r, start:start + n - 1] = ids[r, start + 1:start + n]  # every token trained (the answer's share
                positions[r, start:start + n] = torch.arange(n)                # does not change the cost per token)
                start += n
            positions[r, start:] = torch.arange(args.seq_len - start)
        return {k: v.to(device) for k, v in {"input_ids": ids, "labels": labels, "position_ids": positions}.items()}

    # equality: the first packed row against each of its conversations alone
    first = batch([rows[0]])
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        packed, _ = scorer(first["input_ids"], first["labels"], first["position_ids"])
        gap, start = 0.0, 0
        for n in rows[0]:
            alone, _ = scorer(first["input_ids"][:, start:start + n], first["labels"][:, start:start + n],
                              first["position_ids"][:, start:start + n])
            gap = max(gap, float((alone - packed[:, start:start + n]).abs().max()))
            start += n
    # throughput: forward and backward of micro-batches of packed rows
    step = torch.compile(scorer) if args.compile else scorer
    micro = batch(rows[:args.micro_batch] if len(rows) >= args.micro_batch else rows)
    trained = int((micro["labels"] != IGNORE).sum())
    times = []
    for _ in range(args.sft_steps):
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            logprobs, _ = step(micro["input_ids"], micro["labels"], micro["position_ids"])
            (-logprobs.sum() / trained).backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return {"trained_tokens_per_second": trained / float(np.median(times[2:] or times)), "rows": len(micro["input_ids"]),
            "conversations_in_first_row": len(rows[0]), "max_logprob_gap_packed_vs_alone": gap}


# ------------------------------------------------------------------ the run
def table(results: dict) -> str:
    rows = [("pretrain, bf16 + compile", f"{results['pretrain']['tokens_per_second']:,.0f} tok/s",
             f"MFU {results['pretrain']['mfu']:.1%}", "MFU >= 45%"),
            ("pretrain, FSDP2 on one rank", f"{results['pretrain_fsdp2']['tokens_per_second']:,.0f} tok/s",
             f"MFU {results['pretrain_fsdp2']['mfu']:.1%}", ""),
            ("packed SFT, forward + backward", f"{results['packed_sft']['trained_tokens_per_second']:,.0f} trained tok/s",
             f"packed vs alone: {results['packed_sft']['max_logprob_gap_packed_vs_alone']:.2e}", "gap <= 5e-2 in bf16"),
            ("bf16 vs fp32 loss, first steps", f"{results['bf16_vs_fp32']['steps']} steps",
             f"max gap {results['bf16_vs_fp32']['max_relative_gap']:.2%}", "<= 2%")]
    width = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, width)) for row in rows)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="pre-training steps per run")
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--batch-tokens", default="256K")
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--sft-steps", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, default=None, help="default: the GPU's bf16 peak, measured")
    parser.add_argument("--smoke", action="store_true", help="every part small on the CPU (tests the script, not the GPU)")
    parser.add_argument("--verbose", action="store_true", help="show granite's own output")
    args = parser.parse_args(argv)
    import torch

    if args.smoke:
        args.preset, args.vocab, args.compile, args.steps, args.seq_len = "tiny-2m", 2048, False, 6, 128
        args.batch_tokens, args.micro_batch, args.sft_steps, args.peak_tflops = "1024", 4, 3, args.peak_tflops or 1.0
        device, name = torch.device("cpu"), "gpu-smoke"
    else:
        if not torch.cuda.is_available():
            raise SystemExit("needs an NVIDIA GPU (or --smoke to test the script on the CPU)")
        args.preset, args.vocab, args.compile, device, name = "granite-1b", VOCAB, True, torch.device("cuda"), "gpu-run"
    started = time.perf_counter()
    run_dir = synthetic_run_dir(name, args.vocab, args.seq_len, args.seq_len * (64 if args.smoke else 4096))
    bf16 = pretrain(run_dir, args, "bf16", "bf16")
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (smoke)", "preset": args.preset,
               "seq_len": args.seq_len, "batch_tokens": args.batch_tokens, "pretrain": throughput(bf16)}
    results["pretrain_fsdp2"] = throughput(pretrain(run_dir, args, "fsdp2", "bf16", ("-m", "torch.distributed.run",
                                                                                    "--nproc-per-node", "1"),
                                                    ("--parallel", "fsdp")))
    results["packed_sft"] = packed_sft(args, device)
    eager = argparse.Namespace(**{**vars(args), "compile": False})  # the loss comparison, without compilation
    bf16_eager = bf16 if not args.compile else pretrain(run_dir, eager, "bf16-eager", "bf16")
    results["bf16_vs_fp32"] = loss_gap(bf16_eager, pretrain(run_dir, eager, "fp32", "fp32"))
    results["seconds"] = time.perf_counter() - started
    print(table(results))
    save("gpu-smoke" if args.smoke else "gpu", results)
    return results


if __name__ == "__main__":
    main()
