"""Tokenize throughput: granite vs datatrove's DocumentTokenizer vs a bare `encode_batch` loop.

Same corpus (JSONL.zst built from the bundled data), same tokenizer, same machine, one run; each
figure is the median of --repeats runs. granite and datatrove go end to end (read .zst, write
shards); the bare loop encodes texts already in memory and writes nothing, so it is the ceiling.

A job array of --workers workers is timed too, each tool's workers one after another (on a cluster each
has a node of its own, so the array takes as long as its slowest worker): over the corpus as one plain
JSONL file, which granite splits into byte ranges and datatrove, sharding by file, gives whole to one
worker; and over the corpus as 2 x --workers .jsonl.zst files, which both tools deal out whole.

    python benchmarks/bench_tokenize.py [--megabytes 30] [--repeats 3] [--workers 4]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import WORK, corpus, median_seconds, plain_copy, save, split_corpus, tokenizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--megabytes", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=512, help="documents per encode batch, for all three")
    parser.add_argument("--workers", type=int, default=4, help="job-array workers for the array measurement")
    args = parser.parse_args()
    data, tok_dir = corpus(args.megabytes), tokenizer()

    from granite_cli.data.records import read_records
    from granite_cli.data.tokenizer_io import load_tokenizer, tokenizer_identity
    from stages.tokenize import write_shards

    tok = load_tokenizer(str(tok_dir))
    identity = tokenizer_identity(tok, str(tok_dir))
    texts = [r["text"] for r in read_records([str(data)])]
    backend = tok.backend_tokenizer
    total_tokens = sum(len(e.ids) + 1 for e in backend.encode_batch_fast(texts, add_special_tokens=False))

    def granite_run():
        out = WORK / "tok-granite"
        shutil.rmtree(out, ignore_errors=True)
        write_shards(read_records([str(data)], require_text=True), tok, identity, out, shard_tokens=64_000_000,
                     batch_docs=args.batch)

    def bare_loop():
        for start in range(0, len(texts), args.batch):
            backend.encode_batch_fast(texts[start:start + args.batch], add_special_tokens=False)

    def datatrove_run():
        from datatrove.executor import LocalPipelineExecutor
        from datatrove.pipeline.readers import JsonlReader
        from datatrove.pipeline.tokens import DocumentTokenizer

        out = WORK / "tok-datatrove"
        shutil.rmtree(out, ignore_errors=True)
        LocalPipelineExecutor(pipeline=[
            JsonlReader(str(data.parent), glob_pattern=data.name, compression="zstd", id_key="id", text_key="text"),
            DocumentTokenizer(str(out / "out"), tokenizer_name_or_path=str(tok_dir / "tokenizer.json"),
                              eos_token="<|end_of_text|>", batch_size=args.batch, shuffle_documents=False),
        ], tasks=1, workers=1, logging_dir=str(out / "logs"), skip_completed=False).run()

    array = {layout: array_seconds(files, tok, identity, tok_dir, args.workers, args.batch)
             for layout, files in (("one_plain_file", [plain_copy(data)]), ("many_zst_files", split_corpus(data, 2 * args.workers)))}
    seconds = {"granite": median_seconds(granite_run, args.repeats),
               "datatrove": median_seconds(datatrove_run, args.repeats),
               "bare_encode_batch": median_seconds(bare_loop, args.repeats)}
    rates = {name: total_tokens / s for name, s in seconds.items()}
    save("tokenize", {
        "corpus_mb": args.megabytes, "documents": len(texts), "tokens": total_tokens, "batch_docs": args.batch,
        "median_seconds": seconds, "tokens_per_second": rates,
        "ratio_granite_vs_datatrove": rates["granite"] / rates["datatrove"],
        "ratio_granite_vs_bare_encode": rates["granite"] / rates["bare_encode_batch"],
        "job_array": {"workers": args.workers, **{layout: {
            "worker_seconds": times, "slowest_worker_seconds": {tool: max(t) for tool, t in times.items()},
            "ratio_granite_vs_datatrove": max(times["datatrove"]) / max(times["granite"])} for layout, times in array.items()}},
        "goals": {"vs_datatrove": ">= 1.2", "vs_bare_encode": ">= 0.85"},
    })


def array_seconds(files: list[Path], tok, identity: dict, tok_dir: Path, workers: int, batch: int) -> dict:
    """Each tool's seconds per job-array worker over the files: granite's tokenize workers read their part
    (granite_cli/data/parts.py), datatrove's ranks the files its reader deals them."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.tokens import DocumentTokenizer

    from granite_cli.data.parts import worker_records
    from granite_cli.data.records import ErrorPolicy
    from stages.tokenize import write_shards

    compression, pattern = ("zstd", "*.jsonl.zst") if files[0].name.endswith(".zst") else (None, "*.jsonl")

    def granite_worker(index: int):
        out = WORK / "tok-array-granite"
        shutil.rmtree(out, ignore_errors=True)
        records = worker_records([str(f) for f in files], ErrorPolicy(), index, workers, require_text=True)
        write_shards(records, tok, identity, out, shard_tokens=64_000_000, batch_docs=batch)

    def datatrove_worker(index: int):
        out = WORK / "tok-array-datatrove"
        shutil.rmtree(out, ignore_errors=True)
        LocalPipelineExecutor(pipeline=[
            JsonlReader(str(files[0].parent), glob_pattern=pattern, compression=compression, id_key="id", text_key="text"),
            DocumentTokenizer(str(out / "out"), tokenizer_name_or_path=str(tok_dir / "tokenizer.json"),
                              eos_token="<|end_of_text|>", batch_size=batch, shuffle_documents=False),
        ], tasks=workers, workers=1, local_tasks=1, local_rank_offset=index, logging_dir=str(out / "logs"),
            skip_completed=False).run()

    times = {"granite": [], "datatrove": []}
    for index in range(workers):
        for tool, run in (("granite", granite_worker), ("datatrove", datatrove_worker)):
            start = time.perf_counter()
            run(index)
            times[tool].append(time.perf_counter() - start)
    return times


if __name__ == "__main__":
    main()
