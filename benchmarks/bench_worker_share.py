"""A job-array worker's read of its share of the data, against one whole pass (what every worker used to do).

mix, tokenize and filter workers read only their part of their input (granite_cli/data/parts.py). For each layout of
the same corpus, every one of --workers workers iterates its records (parsing them, nothing else) and is timed; the
array takes as long as its slowest worker, so the ratio is one whole pass over the slowest worker's time: close to
--workers where the layout can be split (plain JSONL, several compressed files, a Parquet file with a row group for
every worker), lower where every worker must decompress or scan the whole input to find its rows (one .jsonl.zst, a
Parquet file with fewer row groups than workers, a cached dataset).

    python benchmarks/bench_worker_share.py [--megabytes 200] [--workers 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import corpus, median_seconds, plain_copy, save, split_corpus  # noqa: E402
from granite_cli.data.parts import worker_parts, worker_records  # noqa: E402
from granite_cli.data.records import ErrorPolicy, read_records  # noqa: E402
from granite_cli.data.sources import read_part  # noqa: E402
from granite_cli.recipe import Source  # noqa: E402


def parquet_copy(data: Path, group_rows: int) -> Path:
    """The corpus's id and text columns as one Parquet file, in row groups of `group_rows` rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = data.parent / f"{data.name.split('.')[0]}-parquet-{group_rows}" / "corpus.parquet"
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        rows = [{"id": r.get("id"), "text": r["text"]} for r in read_records([str(data)])]
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=group_rows)
    return path


def layouts(data: Path, workers: int) -> dict:
    """Each layout's reader: index -> the number of records worker `index` of `workers` reads (index None: all)."""
    parquet = parquet_copy(data, 65536)  # 2 row groups here: fewer than the workers, so each keeps every N-th row
    grouped = parquet_copy(data, 4096)  # a row group for every worker: dealt out by row group

    def files(paths: list[Path]):
        def read(index):
            units = [str(p) for p in paths]
            return sum(1 for _ in worker_records(units, ErrorPolicy(), 0 if index is None else index,
                                                 1 if index is None else workers))
        return read

    def source(unit: str, **fields):
        def read(index):
            parts = worker_parts([unit], 0 if index is None else index, 1 if index is None else workers)
            return sum(1 for p in parts for _ in read_part(p, Source(name="corpus", **fields), ErrorPolicy()))
        return read

    return {
        "one_plain_jsonl": files([plain_copy(data)]),
        "one_jsonl_zst": files([data]),
        "many_jsonl_zst": files(split_corpus(data, 2 * workers)),
        "one_parquet": source(str(parquet), paths=[str(parquet)]),
        "one_parquet_small_row_groups": source(str(grouped), paths=[str(grouped)]),
        "cached_dataset": source(f"hf:{parquet.parent}", hf=str(parquet.parent)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--megabytes", type=int, default=200, help="size of the corpus built from the bundled data")
    parser.add_argument("--workers", type=int, default=8, help="job-array workers (each layout's .zst files: twice that)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each read; the median is reported")
    args = parser.parse_args()
    data = corpus(args.megabytes)
    results = {}
    for name, read in layouts(data, args.workers).items():
        counts = [read(index) for index in range(args.workers)]
        whole = read(None)
        assert sum(counts) == whole, (name, counts, whole)  # every record read by exactly one worker
        seconds = [median_seconds(lambda: read(index), args.repeats) for index in range(args.workers)]
        whole_seconds = median_seconds(lambda: read(None), args.repeats)
        results[name] = {"records": whole, "worker_records": counts, "worker_seconds": seconds,
                         "whole_pass_seconds": whole_seconds,
                         "ratio_whole_pass_vs_slowest_worker": whole_seconds / max(seconds)}
        print(f"{name}: whole pass {whole_seconds:.3f} s, slowest of {args.workers} workers {max(seconds):.3f} s",
              file=sys.stderr)
    save("worker_share", {"corpus_mb": args.megabytes, "workers": args.workers, "layouts": results,
                          "goal": f"close to {args.workers} (the worker count) where the layout can be split"})


if __name__ == "__main__":
    main()
