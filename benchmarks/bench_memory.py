"""Peak memory (max RSS) of `granite mix` and `granite tokenize` as the input grows: it should stay flat.

Each run is a separate CLI process; its peak RSS comes from the kernel (os.wait4), so nothing here
samples or estimates.

    python benchmarks/bench_memory.py [--sizes 100,300,900]     # MB of uncompressed JSONL
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.bench_mix import one_source_recipe  # noqa: E402
from benchmarks.common import REPO, WORK, corpus, save, tokenizer  # noqa: E402


def peak_rss_mb(args: list[str], stdout) -> float:
    proc = subprocess.Popen([sys.executable, "-m", "granite_cli", *args], stdout=stdout, stderr=subprocess.DEVNULL, cwd=REPO)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"granite {' '.join(args)} failed")
    return usage.ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100,300,900", help="comma-separated corpus sizes in MB")
    args = parser.parse_args()
    tok = tokenizer()
    rows = []
    for megabytes in [int(s) for s in args.sizes.split(",")]:
        data = corpus(megabytes)
        recipe = one_source_recipe(data, megabytes, f"mem-{megabytes}")
        with open(os.devnull, "wb") as sink:
            mix_mb = peak_rss_mb(["mix", "--phase", "1", "--recipe", str(recipe)], sink)
        out = WORK / f"mem-shards-{megabytes}"
        shutil.rmtree(out, ignore_errors=True)
        tok_mb = peak_rss_mb(["tokenize", str(data), "--tokenizer", str(tok), "-o", str(out)], subprocess.DEVNULL)
        shutil.rmtree(out, ignore_errors=True)
        rows.append({"input_mb": megabytes, "mix_peak_rss_mb": round(mix_mb, 1), "tokenize_peak_rss_mb": round(tok_mb, 1)})
        print(rows[-1], flush=True)
    save("memory", {"runs": rows, "goal": "peak RSS flat as the input grows"})


if __name__ == "__main__":
    main()
