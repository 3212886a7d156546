"""Mix throughput: MB/s of `granite mix` against `zstd -dc` of the same input files.

A one-source recipe points at a corpus built from the bundled data, with a token budget of most of
one pass over it; throughput is MB of JSONL written per second by each tool. granite runs as users
run it (the CLI, output to a file) with its per-file token counts already cached (as on
any rerun or job-array worker after the first); the cold first run, which counts every source once
more, is reported too. The bundled records carry a "source" key of their own, which mix replaces, so each
is serialised again; a second corpus holds the same records without it (the layout of FineWeb and the
like), whose lines mix writes as read with its keys appended. Medians of --repeats rounds, the runs taking
turns in each. Start-up (interpreter, imports, recipe, plan: `granite mix --dry-run`) is timed in the same rounds, so the
rate of the streaming itself, output MB over the warm run's time less start-up, is reported beside the end-to-end one.

    python benchmarks/bench_mix.py [--megabytes 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import orjson
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import REPO, WORK, alternating_medians, corpus, median_seconds, save  # noqa: E402
from granite_cli.data.records import iter_lines  # noqa: E402


def one_source_recipe(data: Path, megabytes: int, name: str) -> Path:
    recipe = WORK / f"{name}.toml"
    tokens = int(megabytes * 1_000_000 / 4.0 * 0.9)  # most of one pass (JSON keys and escapes are not text)
    recipe.write_text(f'name = "{name}"\nrun_dir = "{WORK / name}"\nbytes_per_token = 4.0\n'
                      f'[sources.corpus]\npaths = ["{data}"]\n[[phases]]\nnumber = 1\ntokens = {tokens}\n'
                      f'[phases.mixture]\ncorpus = 100\n')
    return recipe


def without_source_keys(data: Path) -> Path:
    """The corpus's records without their own "source" key, compressed the same way."""
    path = data.with_name(data.name.replace(".jsonl.zst", "-untagged.jsonl.zst"))
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as out, zstandard.ZstdCompressor(level=3).stream_writer(out) as sink:
            for _, line in iter_lines(str(data)):
                record = orjson.loads(line)
                record.pop("source", None)
                sink.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
        tmp.rename(path)
    return path


def run_mix(recipe: Path, *flags: str) -> None:
    with open(WORK / "mix-output.jsonl", "wb") as sink:
        subprocess.run([sys.executable, "-m", "granite_cli", "mix", "--phase", "1", "--recipe", str(recipe), *flags],
                       stdout=sink, stderr=subprocess.DEVNULL, check=True, cwd=REPO)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data = corpus(args.megabytes)
    recipe = one_source_recipe(data, args.megabytes, "bench-mix")
    subprocess.run(["rm", "-rf", str(WORK / "bench-mix" / ".cache")], check=True)
    cold = median_seconds(lambda: run_mix(recipe), 1)

    def zstd():
        with open("/dev/null", "wb") as sink:
            subprocess.run(["zstd", "-dc", str(data)], stdout=sink, check=True)

    untagged = one_source_recipe(without_source_keys(data), args.megabytes, "bench-mix-untagged")
    run_mix(untagged)  # its token counts cached, as for the first corpus
    sizes = {}

    def timed_mix(name: str, path: Path):
        def run():
            run_mix(path)
            sizes[name] = (WORK / "mix-output.jsonl").stat().st_size / 1e6
        return run

    medians = alternating_medians({"granite": timed_mix("granite", recipe), "zstd": zstd,
                                   "granite_untagged": timed_mix("granite_untagged", untagged),
                                   "granite_startup": lambda: run_mix(recipe, "--dry-run")}, args.repeats)
    warm, baseline, startup = medians["granite"], medians["zstd"], medians["granite_startup"]
    rates = {"granite_mix": sizes["granite"] / warm, "granite_mix_cold": sizes["granite"] / cold,
             "granite_mix_untagged": sizes["granite_untagged"] / medians["granite_untagged"],
             "granite_mix_streaming": sizes["granite"] / (warm - startup),
             "granite_mix_untagged_streaming": sizes["granite_untagged"] / (medians["granite_untagged"] - startup),
             "zstd_dc": args.megabytes / baseline}
    save("mix", {
        "corpus_mb_uncompressed": args.megabytes, "granite_output_mb": sizes,
        "median_seconds": {"granite_mix": warm, "granite_mix_cold": cold,
                           "granite_mix_untagged": medians["granite_untagged"], "granite_startup": startup,
                           "zstd_dc": baseline},
        "mb_per_second": rates, "ratio_granite_vs_zstd": rates["granite_mix"] / rates["zstd_dc"],
        "ratio_cold_granite_vs_zstd": rates["granite_mix_cold"] / rates["zstd_dc"],
        "ratio_untagged_granite_vs_zstd": rates["granite_mix_untagged"] / rates["zstd_dc"],
        "ratio_streaming_granite_vs_zstd": rates["granite_mix_streaming"] / rates["zstd_dc"], "goal": ">= 0.5",
    })


if __name__ == "__main__":
    main()
