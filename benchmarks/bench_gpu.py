"""GPU throughput and correctness in one run: the loss head, pre-training MFU, FSDP2, packed SFT, bf16 against fp32.

On one NVIDIA GPU (H100/H200 class; about 8 minutes on an H200), with a 100,352-entry vocabulary (Granite's), most wanted first:
0. the loss head alone: one row of 4K, 16K and 32K tokens through the output projection and cross-entropy, forward and
   backward in bf16 autocast: the whole logits (transformers' own loss), granite's chunked projection, and Liger's
   fused linear + cross-entropy where `liger-kernel` is installed (summed, and per token as the trainer calls it);
   peak memory, time, and each one's loss and gradients against an fp32 reference.
1. pretrain: `granite pretrain` of the `granite-1b` preset in bf16 with torch.compile (SDPA attention) on
   shards of the bundled sample text (tokenized with a tokenizer of that vocabulary trained on it): median
   tokens/s and MFU against the GPU's measured bf16 matmul peak (goal: >= 45%), and against the datasheet's
   where the GPU's is known; then two more steps under `granite pretrain --profile`: the share of each part of a
   step (forward, backward, optimizer) and of each family of kernels (matmul, attention, loss head, ...).
2. packed SFT: rows of several conversations each, position ids restarting per conversation (what `granite
   sft` trains on), forward and backward through the trainer's scorer in bf16: trained tokens/s, and the
   largest gap between a packed row's per-token log-probabilities and each conversation's alone.
3. bf16 against fp32: the first steps' training loss of the same model on the same batches in both; the
   largest relative gap (goal: within 2%).
4. the pre-training run of 1 under FSDP2 on one rank (torchrun), which a multi-node run uses.
5. the pre-training run of 1 with `--loss-kernel liger` (Liger's fused linear + cross-entropy, where liger-kernel
   is installed) instead of the default chunked head: what the kernel is worth in tokens/s. After the others it is
   usually past the budget: `--parts pretrain,pretrain_liger` runs the pair (about 4 minutes on an H200).
A part that fails is recorded and the others still run; no part starts past `--budget-seconds`. It prints one table
and writes benchmarks/results/gpu.json. `--smoke` runs every part small on the CPU (tiny preset, no compile) so the
script itself is tested where there is no GPU.

    python benchmarks/bench_gpu.py [--steps 12] [--seq-len 4096] [--smoke]
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import itertools
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import REPO, WORK, save  # noqa: E402

VOCAB = 100352


def sample_texts():
    """The bundled pre-training sample's documents (about 20 MB of text), in file order."""
    from granite_cli.data.records import read_records

    paths = sorted(str(p) for p in (REPO / "examples" / "data" / "pretrain").glob("*.zst"))
    return (record["text"] for record in read_records(paths, require_text=True))


def synthetic_run_dir(name: str, vocab: int, seq_len: int, tokens: int) -> Path:
    """A run directory with a `vocab`-entry tokenizer trained on the bundled sample and `tokens` tokens of that sample
    in shards (cycled if it is shorter): the throughput does not depend on the text, but a loss that falls on real text
    makes the bf16 against fp32 comparison mean something."""
    from granite_cli.data.shards import ShardWriter, build_manifest, token_dtype
    from granite_cli.data.tokenizer_io import load_tokenizer, tokenizer_identity
    from granite_cli.data.tokenizer_train import train_bpe

    run = WORK / f"{name}-{seq_len}x{tokens // seq_len}"
    if (run / "shards" / "phase-1" / "manifest.json").exists():
        return run
    texts = list(sample_texts())  # read once: the tokenizer is trained on them, then they are tokenized
    tok = train_bpe(iter(texts), vocab, 1, f"granite-{name}")
    tok.save_pretrained(str(run / "tokenizer"))
    tok = load_tokenizer(str(run / "tokenizer"))
    identity = tokenizer_identity(tok, str(run / "tokenizer"))
    documents = [ids + [identity["eos_id"]] for ids in tok(texts, add_special_tokens=False)["input_ids"]]
    one_pass = np.fromiter(itertools.chain.from_iterable(documents), dtype=np.int64)
    passes = tokens // len(one_pass) + 1
    flat = np.tile(one_pass, passes)[:tokens]
    ends = np.cumsum(np.tile([len(d) for d in documents], passes))
    ends = np.append(ends[ends < tokens], tokens)  # the last document is cut where the tokens end
    out = run / "shards" / "phase-1"
    out.mkdir(parents=True)
    dtype = token_dtype(len(tok))
    writer = ShardWriter(out, dtype, shard_tokens=tokens)
    shards = [entry for _, entry in writer.add_batch(flat, ends, ["sample"] * len(ends))]
    shards += [entry for entry in [writer.close()] if entry]
    (out / "manifest.json").write_text(json.dumps(build_manifest(shards, identity, dtype, {})))
    return run


# ------------------------------------------------------------------ 0: the loss head alone
def loss_head(args, device) -> dict:
    """The output projection + cross-entropy of one row of 4K, 16K and 32K tokens, as training runs it (bf16 autocast,
    fp32 weight): the whole logits (transformers' own loss), granite's chunked projection, and Liger's fused linear +
    cross-entropy where it is installed. Peak memory above the inputs, forward + backward time, and each one's
    loss, input gradient and weight gradient against an fp32 reference."""
    import torch
    import torch.nn.functional as F

    from granite_cli.training.logprobs import chunked_logprobs, default_chunk_tokens, fused_logprobs

    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        LigerFusedLinearCrossEntropyLoss = None
    scale = 1 / 8.0  # granite-1b's logits_scaling
    cuda = device.type == "cuda"
    autocast_dtype = torch.bfloat16 if cuda else torch.float32

    def whole(hidden, weight, labels):
        return F.cross_entropy(F.linear(hidden * scale, weight).float(), labels, reduction="sum")

    def granite(hidden, weight, labels):
        return -chunked_logprobs(hidden[None], weight, labels[None], scale, default_chunk_tokens(len(weight)))[0].sum()

    heads = {"whole logits": whole, "granite chunked": granite}
    if LigerFusedLinearCrossEntropyLoss is not None and cuda:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        liger = LigerFusedLinearCrossEntropyLoss(reduction="sum")
        # Liger's kernels take the weight in the activations' dtype (its gradient still reaches the fp32 weight)
        heads["liger fused"] = lambda hidden, weight, labels: liger(weight.to(hidden.dtype), hidden * scale, labels)
        heads["liger fused, per token (the trainer's)"] = lambda hidden, weight, labels: -fused_logprobs(
            liger_fused_linear_cross_entropy, hidden[None], weight, labels[None], scale).sum()

    def run(head, hidden, weight, labels, dtype):
        hidden = hidden.detach().requires_grad_()
        weight = weight.detach().requires_grad_()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = head(hidden, weight, labels)
        loss.backward()
        return loss.detach().float(), hidden.grad.float(), weight.grad.float()

    def gap(value, reference):
        return float((value - reference).norm() / reference.norm())

    def measure(head, hidden, weight, labels, reference) -> dict:
        times = []
        for _ in range(args.head_repeats):
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated() if cuda else 0
            started = time.perf_counter()
            loss, hidden_grad, weight_grad = run(head, hidden, weight, labels, autocast_dtype)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
            peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if cuda else None
            del hidden_grad, weight_grad
        loss, hidden_grad, weight_grad = run(head, hidden, weight, labels, autocast_dtype)
        return {"peak_gib": peak, "seconds": float(np.median(times[1:] or times)),
                "loss_gap": abs(float(loss - reference[0])) / abs(float(reference[0])),
                "hidden_grad_gap": gap(hidden_grad, reference[1]), "weight_grad_gap": gap(weight_grad, reference[2])}

    results = {}
    generator = torch.Generator(device="cpu").manual_seed(0)
    for tokens in args.head_tokens:
        weight = (torch.randn(args.vocab, args.hidden, generator=generator) * 0.02).to(device)
        hidden = torch.randn(tokens, args.hidden, generator=generator).to(device, autocast_dtype)
        labels = torch.randint(0, args.vocab, (tokens,), generator=generator).to(device)
        reference = run(whole, hidden.float(), weight, labels, torch.float32)
        row = {}
        for name, head in heads.items():
            try:
                row[name] = measure(head, hidden, weight, labels, reference)
            except Exception as error:  # a kernel that fails here is a finding, not the end of the check
                row[name] = {"error": f"{type(error).__name__}: {error}".splitlines()[0]}
        results[str(tokens)] = row
        del reference, weight, hidden
    return results


# ------------------------------------------------------------------ 1, 2, 4: granite pretrain runs
def pretrain(run_dir: Path, args, name: str, precision: str, launcher: tuple = (), extra: tuple = (),
             steps: int | None = None, batch_tokens: str | None = None, micro_batch: int | None = None) -> list[dict]:
    """The metrics lines of one `granite pretrain` run; its checkpoint is deleted (granite-1b's weights and optimizer
    state are 14 GB a run)."""
    out = run_dir / "checkpoints" / name
    command = [sys.executable, *launcher, "-m", "granite_cli", "pretrain", "--run-dir", str(run_dir), "-o", str(out),
               "--overwrite", "--preset", args.preset, "--seq-len", str(args.seq_len),
               "--batch-tokens", batch_tokens or args.batch_tokens, "--micro-batch", str(micro_batch or args.micro_batch),
               "--steps", str(steps or args.steps), "--precision", precision, "--log-every", "1",
               "--val-tokens", str(args.seq_len), "--seed", "0", "--peak-tflops", str(args.peak_tflops),
               *(("--compile",) if args.compile else ()), *shlex.split(getattr(args, "granite_flags", "")), *extra]
    run = subprocess.run(command, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                         stderr=None if args.verbose else subprocess.PIPE, text=True)
    if run.returncode:  # the part's error keeps what granite said, not only that it failed
        said = " | ".join((run.stderr or "").strip().splitlines()[-3:])
        raise RuntimeError(f"granite pretrain exited with status {run.returncode}: {said}")
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for done in (out, out.with_name(f"{out.name}.steps")):
        shutil.rmtree(done, ignore_errors=True)
    return lines


def profiled_pretrain(run_dir: Path, args, name: str) -> dict:
    """The pre-training throughput run, then `--profile-steps` more steps under `granite pretrain --profile`: the
    throughput of the first `--steps`, and where the profiled steps' time went (the profiled steps synchronise the
    device between the parts of a step, so they are left out of the throughput)."""
    extra = args.profile_steps
    if not extra:
        return {**throughput(pretrain(run_dir, args, name, "bf16"), args), "loss_kernel": "chunked"}
    lines = pretrain(run_dir, args, name, "bf16", steps=args.steps + extra,
                     extra=("--profile", f"{args.steps + 1}:{args.steps + extra}"))
    written = run_dir / "checkpoints" / f"{name}.profile"
    summary = json.loads((written / "rank-0.summary.json").read_text())
    shutil.rmtree(written)  # the trace of a granite-1b step is large; the summary holds the figures
    step, operators = summary["step_seconds"], summary["operator_seconds"] or 1e-12
    return {**throughput([m for m in lines if m["step"] <= args.steps], args), "loss_kernel": "chunked",
            "profile": {"steps": summary["steps"], "step_seconds": step, "operator_time": summary["operator_time"],
                        "regions_share": {k: v / step for k, v in summary["regions_seconds"].items()},
                        "families_share": {k: v / operators for k, v in summary["families_seconds"].items()},
                        "top": [{k: row[k] for k in ("name", "family", "share")} for row in summary["top"][:8]]}}


def throughput(lines: list[dict], args) -> dict:
    """Median tokens/s and MFU of the steps after the first three (those include compilation); MFU against the
    measured peak, and against the datasheet's dense bf16 peak where the GPU is one whose figure is known."""
    steady = [m for m in lines if m.get("mfu") is not None][3:]
    mfu = float(np.median([m["mfu"] for m in steady]))
    return {"tokens_per_second": float(np.median([m["tokens_per_second"] for m in steady])), "steps_timed": len(steady),
            "mfu": mfu, "mfu_datasheet": mfu * args.peak_tflops / args.datasheet_tflops if args.datasheet_tflops else None}


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
DATASHEET_BF16_TFLOPS = {"H100 80GB HBM3": 989.4, "H200": 989.4}  # dense bf16, SXM parts (NVIDIA's datasheets)


def measured_peak_tflops(device) -> float:
    """bf16 matmul TFLOP/s of an 8192-cube product (mean of ten after three warm-ups): the ceiling MFU is read
    against, measured rather than taken from a datasheet."""
    import torch

    a, b = (torch.randn(8192, 8192, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 10 * 2 * 8192**3 / (time.perf_counter() - started) / 1e12


PARTS = ("loss_head", "pretrain", "packed_sft", "bf16_vs_fp32", "pretrain_fsdp2", "pretrain_liger")  # the order they run in


def parts(args, device, run_dir: Path) -> dict:
    """Each part of the check, most wanted first: a part that fails is recorded and the rest still run."""
    fsdp = ("-m", "torch.distributed.run", "--nproc-per-node", "1")
    eager = argparse.Namespace(**{**vars(args), "compile": False})  # the loss comparison, without compilation

    def precision_gap():
        loss_run = {"steps": args.loss_steps, "batch_tokens": args.loss_batch_tokens, "micro_batch": args.loss_micro_batch}
        return loss_gap(pretrain(run_dir, eager, "bf16-eager", "bf16", **loss_run),
                        pretrain(run_dir, eager, "fp32", "fp32", **loss_run))

    def liger_pretrain():
        if device.type != "cuda" or not importlib.util.find_spec("liger_kernel"):
            return {"skipped": "needs liger-kernel on a CUDA device"}
        return {**throughput(pretrain(run_dir, args, "bf16-liger", "bf16", extra=("--loss-kernel", "liger")), args),
                "loss_kernel": "liger"}

    return {"loss_head": lambda: loss_head(args, device),
            "pretrain": lambda: profiled_pretrain(run_dir, args, "bf16"),
            "packed_sft": lambda: packed_sft(eager, device),
            "bf16_vs_fp32": precision_gap,
            "pretrain_fsdp2": lambda: throughput(pretrain(run_dir, args, "fsdp2", "bf16", fsdp, ("--parallel", "fsdp")), args),
            "pretrain_liger": liger_pretrain}


def table(results: dict) -> str:
    """One line a part: what ran, its figure, its check, the goal; a part that failed or was not reached says so."""
    def part(name, describe):
        value = results.get(name)
        if not isinstance(value, dict) or "error" in value or "skipped" in value:
            reason = (value or {}).get("error") or (value or {}).get("skipped") or "not run"
            return [(name.replace("_", " "), "-", str(reason)[:100], "")]
        return describe(value)

    def mfu(value):
        datasheet = f", {value['mfu_datasheet']:.1%} of the datasheet peak" if value.get("mfu_datasheet") else ""
        return f"MFU {value['mfu']:.1%} of the measured peak{datasheet}"

    def head(value):
        lines = []
        for tokens, row in value.items():
            for name, m in row.items():
                if "error" in m:
                    lines.append((f"loss head, {int(tokens):,} tokens, {name}", "-", m["error"][:100], ""))
                    continue
                memory = f"{m['peak_gib']:.2f} GiB, " if m["peak_gib"] is not None else ""
                lines.append((f"loss head, {int(tokens):,} tokens, {name}", f"{memory}{m['seconds'] * 1e3:.1f} ms",
                              f"vs fp32: loss {m['loss_gap']:.1e}, grads {m['hidden_grad_gap']:.1e} / "
                              f"{m['weight_grad_gap']:.1e}", ""))
        return lines

    def profile(value):
        if "profile" not in value:
            return []
        p = value["profile"]
        shares = lambda shares: ", ".join(f"{name} {share:.0%}" for name, share in shares.items() if share >= 0.005)
        return [(f"  where its steps {p['steps'][0]}-{p['steps'][1]} went ({p['step_seconds']:.2f} s a step)",
                 shares(p["regions_share"]), shares(p["families_share"]), "")]

    rows = [*part("loss_head", head),
            *part("pretrain", lambda v: [("pretrain, bf16 + compile" + (f", {v['loss_kernel']} loss" if "loss_kernel" in v else ""),
                                          f"{v['tokens_per_second']:,.0f} tok/s", mfu(v), "MFU >= 45%"), *profile(v)]),
            *part("pretrain_liger", lambda v: [("pretrain, the same with Liger's fused loss",
                                                  f"{v['tokens_per_second']:,.0f} tok/s", mfu(v), "")]),
            *part("pretrain_fsdp2", lambda v: [("pretrain, FSDP2 on one rank", f"{v['tokens_per_second']:,.0f} tok/s",
                                                mfu(v), "")]),
            *part("packed_sft", lambda v: [("packed SFT, forward + backward", f"{v['trained_tokens_per_second']:,.0f} trained tok/s",
                                            f"packed vs alone: {v['max_logprob_gap_packed_vs_alone']:.2e}",
                                            "gap <= 5e-2 in bf16")]),
            *part("bf16_vs_fp32", lambda v: [("bf16 vs fp32 loss, first steps", f"{v['steps']} steps",
                                              f"max gap {v['max_relative_gap']:.2%}", "<= 2%")])]
    width = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, width)).rstrip() for row in rows)


def headline_ratios(results: dict) -> dict:
    """The figures `make bench`'s summary shows (benchmarks/summary.py reads keys named "ratio"), of the parts that ran."""
    ratios = {}
    for run in ("pretrain", "pretrain_fsdp2", "pretrain_liger"):
        if "mfu" in results.get(run, {}):
            ratios[f"{run}_mfu_of_measured_peak"] = results[run]["mfu"]
            if results[run].get("mfu_datasheet"):
                ratios[f"{run}_mfu_of_datasheet_peak"] = results[run]["mfu_datasheet"]
    if "tokens_per_second" in results.get("pretrain_liger", {}) and "tokens_per_second" in results.get("pretrain", {}):
        ratios["pretrain_liger_vs_chunked_loss"] = (results["pretrain_liger"]["tokens_per_second"]
                                                    / results["pretrain"]["tokens_per_second"])
    if "max_relative_gap" in results.get("bf16_vs_fp32", {}):
        ratios["bf16_vs_fp32_loss_gap"] = results["bf16_vs_fp32"]["max_relative_gap"]
    for tokens, row in results.get("loss_head", {}).items():
        if not isinstance(row, dict):  # the part failed or was skipped
            continue
        granite, whole, liger = (row.get(name, {}) for name in ("granite chunked", "whole logits", "liger fused"))
        if granite.get("peak_gib") and whole.get("peak_gib"):
            ratios[f"head_memory_granite_vs_whole_logits_{tokens}"] = granite["peak_gib"] / whole["peak_gib"]
        if "seconds" in granite and "seconds" in liger:
            ratios[f"head_time_granite_vs_liger_{tokens}"] = granite["seconds"] / liger["seconds"]
    return ratios


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=12, help="pre-training steps of each throughput run (the first 3 untimed)")
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--batch-tokens", default="65536", help="tokens a throughput step (four micro-batches of 4 x 4,096)")
    parser.add_argument("--micro-batch", type=int, default=4, help="rows a forward")
    parser.add_argument("--profile-steps", type=int, default=2,
                        help="steps the pretrain part runs after the timed ones under `granite pretrain --profile` (0: none)")
    parser.add_argument("--granite-flags", default="",
                        help="more flags for every `granite pretrain` run (e.g. '--loss-chunk-tokens 4096')")
    parser.add_argument("--loss-steps", type=int, default=6, help="steps of the bf16 against fp32 loss comparison")
    parser.add_argument("--loss-batch-tokens", default="32768")
    parser.add_argument("--loss-micro-batch", type=int, default=2, help="fp32 activations take twice bf16's memory")
    parser.add_argument("--sft-steps", type=int, default=10)
    parser.add_argument("--head-tokens", default="4096,16384,32768", type=lambda text: [int(n) for n in text.split(",")],
                        help="row lengths of the loss-head comparison (16,384: a pretrain micro-batch of 4 x 4,096)")
    parser.add_argument("--head-repeats", type=int, default=5)
    parser.add_argument("--peak-tflops", type=float, default=None, help="default: the GPU's bf16 matmul peak, measured")
    parser.add_argument("--budget-seconds", type=float, default=330,
                        help="no part starts after this many seconds (the parts run most wanted first)")
    parser.add_argument("--parts", default=None, type=lambda text: text.split(","),
                        help=f"only these parts, comma-separated ({', '.join(PARTS)}); results go to "
                        "gpu-PART-PART.json. Default: all, to gpu.json")
    parser.add_argument("--smoke", action="store_true", help="every part small on the CPU (tests the script, not the GPU)")
    parser.add_argument("--verbose", action="store_true", help="show granite's own output")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.parts or ()) - set(PARTS))
    if unknown:
        parser.error(f"--parts: no part named {', '.join(unknown)} (the parts: {', '.join(PARTS)})")
    import torch

    if args.smoke:
        args.preset, args.vocab, args.hidden, args.compile, args.steps, args.seq_len = "tiny-2m", 2048, 64, False, 6, 128
        args.batch_tokens, args.micro_batch, args.sft_steps, args.loss_batch_tokens = "1024", 4, 3, "1024"
        args.head_tokens, args.head_repeats, args.peak_tflops = [256, 1024], 2, args.peak_tflops or 1.0
        device, name, args.datasheet_tflops = torch.device("cpu"), "gpu-smoke", None
    else:
        if not torch.cuda.is_available():
            raise SystemExit("needs an NVIDIA GPU (or --smoke to test the script on the CPU)")
        args.preset, args.vocab, args.hidden, args.compile, device = "granite-1b", VOCAB, 2048, True, torch.device("cuda")
        name = "gpu-run"
        args.peak_tflops = args.peak_tflops or measured_peak_tflops(device)
        args.datasheet_tflops = next((v for k, v in DATASHEET_BF16_TFLOPS.items()
                                      if torch.cuda.get_device_name().endswith(k)), None)
    started = time.perf_counter()
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (smoke)", "preset": args.preset,
               "seq_len": args.seq_len, "batch_tokens": args.batch_tokens, "peak_tflops": args.peak_tflops,
               "datasheet_tflops": args.datasheet_tflops, "torch": torch.__version__, "granite_flags": args.granite_flags,
               "part_seconds": {}}
    from granite_cli.recipe import parse_count

    needed = max((args.steps + args.profile_steps) * parse_count(args.batch_tokens), args.loss_steps * parse_count(args.loss_batch_tokens))
    run_dir = synthetic_run_dir(name, args.vocab, args.seq_len, needed + 4 * args.seq_len)
    for part, run in parts(args, device, run_dir).items():
        if args.parts and part not in args.parts:
            continue
        if time.perf_counter() - started > args.budget_seconds:
            results[part] = {"skipped": f"not started: past the {args.budget_seconds:.0f} s budget"}
            continue
        begun = time.perf_counter()
        try:
            results[part] = run()
        except Exception as error:  # one part's failure must not lose the others' figures
            traceback.print_exc()
            results[part] = {"error": f"{type(error).__name__}: {error}".splitlines()[0]}
        gc.collect()
        if device.type == "cuda":  # what an in-process part cached would otherwise be missing from the next run's GPU
            torch.cuda.empty_cache()
        results["part_seconds"][part] = time.perf_counter() - begun
        print(f"{part}: {results['part_seconds'][part]:.0f} s", file=sys.stderr, flush=True)
    results["seconds"] = time.perf_counter() - started
    results["ratio"], results["goal"] = headline_ratios(results), "MFU >= 0.45, bf16 loss gap <= 0.02"
    print(table(results))
    save("-".join(["gpu-smoke" if args.smoke else "gpu", *(args.parts or [])]), results)
    return results


if __name__ == "__main__":
    main()
