"""Shared benchmark setup: a corpus built from the bundled data, the tiny tokenizer, medians, results."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import zstandard

from granite_cli.allocator import keep_freed_memory

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "runs" / "bench"
RESULTS = REPO / "benchmarks" / "results"
PRETRAIN = REPO / "examples" / "data" / "pretrain"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# granite's trainer keeps freed host memory for reuse (granite_cli/allocator.py), process-wide: set it before any tool
# runs, so the other tools of a side-by-side benchmark have it too, whichever runs first
keep_freed_memory()


def corpus(megabytes: int) -> Path:
    """A JSONL.zst file of about `megabytes` MB (uncompressed) cycling through every bundled pretrain source."""
    path = WORK / f"corpus-{megabytes}MB.jsonl.zst"
    if path.exists():
        return path
    WORK.mkdir(parents=True, exist_ok=True)
    lines = []
    for source in sorted(PRETRAIN.glob("*.jsonl.zst")):
        lines.extend(zstandard.ZstdDecompressor().stream_reader(open(source, "rb")).read().splitlines(keepends=True))
    target, written, copy = megabytes * 1_000_000, 0, 0
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as raw, zstandard.ZstdCompressor(level=3).stream_writer(raw) as sink:
        while written < target:
            for line in lines:
                sink.write(line)
                written += len(line)
                if written >= target:
                    break
            copy += 1
    tmp.rename(path)
    return path


def plain_copy(data: Path) -> Path:
    """The corpus as one uncompressed JSONL file, alone in its directory (datatrove reads a directory)."""
    path = data.parent / f"{data.name.split('.')[0]}-plain" / "corpus.jsonl"
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        with open(path.with_suffix(".tmp"), "wb") as out:
            out.write(zstandard.ZstdDecompressor().stream_reader(open(data, "rb")).read())
        path.with_suffix(".tmp").rename(path)
    return path


def split_corpus(data: Path, count: int) -> list[Path]:
    """The corpus dealt line by line into `count` .jsonl.zst files of about the same size."""
    directory = data.parent / f"{data.name.split('.')[0]}-split{count}"
    paths = [directory / f"part-{i:03d}.jsonl.zst" for i in range(count)]
    if not all(p.exists() for p in paths):
        directory.mkdir(exist_ok=True)
        lines = zstandard.ZstdDecompressor().stream_reader(open(data, "rb")).read().splitlines(keepends=True)
        for i, path in enumerate(paths):
            path.write_bytes(zstandard.ZstdCompressor(level=3).compress(b"".join(lines[i::count])))
    return paths


def tokenizer() -> Path:
    """The tiny recipe's tokenizer (trained on the bundled data if it is not there yet)."""
    path = REPO / "runs" / "tiny" / "tokenizer"
    if not (path / "tokenizer.json").exists():
        subprocess.run([sys.executable, "-m", "granite_cli", "tokenize", "train", "--recipe", "tiny"], check=True, cwd=REPO)
    return path


def median_seconds(fn, repeats: int = 3) -> float:
    return alternating_medians({"run": fn}, repeats)["run"]


def alternating_medians(tools: dict, repeats: int = 3) -> dict[str, float]:
    """Median seconds of each tool's run, the tools taking turns in every round: a machine whose speed drifts
    (another tenant, frequency scaling) then slows every tool alike instead of whichever ran last."""
    times: dict[str, list[float]] = {name: [] for name in tools}
    for _ in range(repeats):
        for name, fn in tools.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def save(name: str, result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}, **result}
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def step_timer():
    """A transformers `TrainerCallback` that records the wall time of every optimizer step in its `times` list (how
    the benchmarks time HF's and TRL's trainers step by step)."""
    from transformers import TrainerCallback

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.times, self.start = [], 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.start)

    return StepTimes()
