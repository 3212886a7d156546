"""Peak memory (max RSS) of `granite mix` and `granite tokenize` as the input grows: it should stay flat.

Each run is a separate CLI process; its peak RSS comes from the kernel (os.wait4 in a bare launcher),
so nothing here samples or estimates.

    python benchmarks/bench_memory.py [--sizes 100,300,900]     # MB of uncompressed JSONL
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.bench_mix import one_source_recipe  # noqa: E402
from benchmarks.common import WORK, corpus, save, tokenizer  # noqa: E402


# A bare interpreter forks the CLI and reports the child's peak RSS. A forked child starts with its parent's
# resident pages and the kernel's high-water mark keeps them, so the parent must be this small launcher, not the
# benchmark process (which grows as it works).
LAUNCHER = """import os, sys
pid = os.fork()
if pid == 0:
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)
    os.dup2(quiet, 2)
    os.execv(sys.executable, [sys.executable, "-m", "granite_cli", *sys.argv[1:]])
_, status, usage = os.wait4(pid, 0)
print(usage.ru_maxrss, os.waitstatus_to_exitcode(status))
"""


def peak_rss_mb(args: list[str]) -> float:
    """Peak RSS of `granite ARGS` (its output discarded), in MB, from the kernel."""
    report = subprocess.run([sys.executable, "-c", LAUNCHER, *map(str, args)], capture_output=True, text=True, check=True)
    kib, code = map(int, report.stdout.split())
    if code != 0:
        raise RuntimeError(f"granite {' '.join(map(str, args))} failed")
    return kib / 1024  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100,300,900", help="comma-separated corpus sizes in MB")
    args = parser.parse_args()
    tok = tokenizer()
    rows = []
    for megabytes in [int(s) for s in args.sizes.split(",")]:
        data = corpus(megabytes)
        recipe = one_source_recipe(data, megabytes, f"mem-{megabytes}")
        mix_mb = peak_rss_mb(["mix", "--phase", "1", "--recipe", str(recipe)])
        out = WORK / f"mem-shards-{megabytes}"
        shutil.rmtree(out, ignore_errors=True)
        tok_mb = peak_rss_mb(["tokenize", str(data), "--tokenizer", str(tok), "-o", str(out)])
        shutil.rmtree(out, ignore_errors=True)
        rows.append({"input_mb": megabytes, "mix_peak_rss_mb": round(mix_mb, 1), "tokenize_peak_rss_mb": round(tok_mb, 1)})
        print(rows[-1], flush=True)
    save("memory", {"runs": rows, "goal": "peak RSS flat as the input grows"})


if __name__ == "__main__":
    main()
