"""Sandbox throughput: programs/s through granite's sandbox against a bare rlimited subprocess.

The bare subprocess (`python -I -c PROGRAM` with rlimits and a process-group kill, what verl's
prime_code, open-instruct and nanochat's execution.py do) is what a user would otherwise pick; it
isolates nothing. Both run the same programs with a pool sized to the cores, in one run:
- trivial: `pass`, so the figure is the start-up cost of one sandbox;
- HumanEval-sized: each HumanEval problem's prompt, canonical solution and tests (from
  `make eval-data`; the two-problem test fixture where that is missing).
Reported: programs/s (median of 3 rounds) for each, and the sandbox's start-up cost per program.

    python benchmarks/bench_sandbox.py [--rounds 3] [--programs 64]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import REPO, save  # noqa: E402


def humaneval_programs(count: int) -> list[str]:
    path = REPO / "runs" / "eval-data" / "humaneval" / "HumanEval.jsonl.gz"
    if path.exists():
        problems = [json.loads(line) for line in gzip.open(path, "rt")]
    else:
        problems = [json.loads(line) for line in (REPO / "tests" / "fixtures" / "eval" / "humaneval_plus" / "HumanEvalPlus.jsonl").open()]
    programs = [f"{p['prompt']}{p['canonical_solution']}\n\n{p['test']}\n\ncheck({p['entry_point']})\n" for p in problems]
    return (programs * (count // len(programs) + 1))[:count]


def bare_subprocess(program: str) -> bool:
    """The usual unisolated runner: rlimits, a new session, killed at the deadline."""
    def limits():
        os.setsid()
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        resource.setrlimit(resource.RLIMIT_CPU, (11, 11))

    proc = subprocess.Popen([sys.executable, "-I", "-c", program], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, preexec_fn=limits)
    try:
        return proc.wait(timeout=10) == 0
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
        return False


def programs_per_second(runner, programs: list[str], rounds: int) -> tuple[float, int]:
    rates, passed = [], 0
    for _ in range(rounds):
        start = time.perf_counter()
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            results = list(pool.map(runner, programs))
        rates.append(len(programs) / (time.perf_counter() - start))
        passed = sum(results)
    return statistics.median(rates), passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--programs", type=int, default=64)
    args = parser.parse_args()
    from granite_cli.verify.sandbox import isolation, run_python

    if not isolation().available:
        raise SystemExit(f"no sandbox on this machine: {isolation().reason}")
    sandboxed = lambda program: run_python(program).passed  # noqa: E731
    report = {"workers": os.cpu_count(), "programs": args.programs, "goal": "the price of isolation, stated"}
    for name, programs in (("trivial", ["pass"] * args.programs), ("humaneval", humaneval_programs(args.programs))):
        ours, ours_passed = programs_per_second(sandboxed, programs, args.rounds)
        theirs, theirs_passed = programs_per_second(bare_subprocess, programs, args.rounds)
        report[name] = {"programs_per_second": {"granite_sandbox": ours, "bare_subprocess": theirs},
                        "ratio_granite_vs_bare": ours / theirs, "passed": {"granite_sandbox": ours_passed,
                                                                           "bare_subprocess": theirs_passed}}
    workers = report["workers"]
    report["startup_ms_per_program"] = {  # trivial programs: all the time is start-up, spread over the pool
        "granite_sandbox": 1000 * workers / report["trivial"]["programs_per_second"]["granite_sandbox"],
        "bare_subprocess": 1000 * workers / report["trivial"]["programs_per_second"]["bare_subprocess"]}
    save("sandbox", report)


if __name__ == "__main__":
    main()
