"""One table of every ratio the benchmarks measured, beside its goal: what `make bench` prints last.

Each benchmark writes benchmarks/results/NAME.json; every number under a key with the word "ratio" in its name
(`time_ratio`, `ratio_same_setting`; not `generation_share` or `calibration`, which only spell it), at any
depth (pretrain's and sft's per-setting ratios, filter's near-dedup speed ratio), becomes a row, with the file's goal. A benchmark that
has not run is listed as missing, so the table never looks complete when it is not.

    python benchmarks/summary.py [--results benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import RESULTS  # noqa: E402

BENCHMARKS = ("tokenize", "mix", "worker_share", "memory", "pretrain", "eval_agreement", "eval_memory", "filter", "sft",
              "sandbox", "rl", "reward_model")
GPU = "gpu"  # bench_gpu.py: not part of `make bench` (it needs an NVIDIA GPU); listed when its results are there


def ratio_rows(name: str, result: dict) -> list[tuple[str, str, str, str]]:
    """(benchmark, measure, value, goal) for each ratio in one benchmark's result."""
    goal = result.get("goal") or result.get("goals") or ""
    goal = ", ".join(f"{k} {v}" for k, v in goal.items()) if isinstance(goal, dict) else str(goal)
    rows = [(name, measure, f"{value:.2f}x" if value >= 0.1 else f"{value:.2g}x", goal) for measure, value in ratios(result)]
    return rows or [(name, "(no ratio: see the JSON)", "", goal)]


def ratios(result: dict, prefix: str = "", inside_ratio: bool = False):
    """(dotted key, number) of every number under a key that names a ratio, at any depth."""
    for key, value in result.items():
        named = inside_ratio or "ratio" in key.split("_")
        if isinstance(value, dict):
            yield from ratios(value, f"{prefix}{key}.", named)
        elif named and isinstance(value, (int, float)) and not isinstance(value, bool):
            yield f"{prefix}{key}", value


def summary(results: Path) -> list[tuple[str, str, str, str]]:
    rows = []
    for name in BENCHMARKS:
        path = results / f"{name}.json"
        if path.exists():
            rows += ratio_rows(name, json.loads(path.read_text()))
        else:
            rows.append((name, "missing: the benchmark has not run", "", ""))
    gpu = results / f"{GPU}.json"
    if gpu.exists():
        result = json.loads(gpu.read_text())
        rows += [(f"{GPU} ({result.get('device', '?')})", *row[1:]) for row in ratio_rows(GPU, result)]
    else:
        rows.append((GPU, "not run here: needs an NVIDIA GPU (python benchmarks/bench_gpu.py)", "", ""))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = [("benchmark", "measure", "value", "goal"), *summary(args.results)]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3])


if __name__ == "__main__":
    main()
