"""Filter throughput: rules + dedup samples/s, MinHash dedup against datasketch, judge requests at concurrency 1/8/32.

1. `granite filter --judge none` (the CLI, as users run it) over a generated set: the bundled SFT
   samples copied with seeded word substitutions, so copies range from near duplicates to distinct.
2. Near dedup alone on the same assistant texts: granite's MinHashIndex against datasketch's
   MinHashLSH with the same banding (14 bands x 8 rows, word 5-grams), both in the same streaming
   form (query, then insert if new); duplicates found by each and their overlap.
3. Dedup index memory per sample (tracemalloc), the number the dedup module documents, and the CLI's peak RSS
   on inputs 4x apart, with and without deduplication (without it, memory must stay flat).
4. The judge against a loopback OpenAI-compatible server that answers after a fixed delay (a stand-in
   for a model server: this measures the client's concurrency, not a model).

    python benchmarks/bench_filter.py [--copies 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import random
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import REPO, WORK, median_seconds, save  # noqa: E402
from granite_cli.data.records import read_records, record_writer, dumps  # noqa: E402
from stages.filter.curate import OPTIONAL_CHECKS  # noqa: E402

SFT = REPO / "examples" / "data" / "chat" / "sft.jsonl.zst"
SERVER_DELAY = 0.05


def generated_set(copies: int, seed: int = 0) -> Path:
    """The bundled samples, `copies` times; each copy replaces 0-40% of the assistant's words at random."""
    path = WORK / f"sft-x{copies}.jsonl.zst"
    if path.exists():
        return path
    WORK.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    samples = list(read_records([str(SFT)]))
    vocabulary = sorted({w for s in samples for m in s["messages"] for w in (m.get("content") or "").split()})
    with record_writer(str(path)) as sink:
        for copy in range(copies):
            rate = rng.choice([0.0, 0.02, 0.05, 0.2, 0.4])
            for sample in samples:
                sample = json.loads(json.dumps(sample))
                sample["id"] = f"{sample['id']}-{copy}"
                for message in sample["messages"]:
                    if message["role"] == "assistant" and message.get("content") and copy:
                        words = message["content"].split()
                        message["content"] = " ".join(rng.choice(vocabulary) if rng.random() < rate else w for w in words)
                sink.write(dumps(sample))
    return path


def bench_cli(data: Path, count: int, repeats: int) -> dict:
    def run():
        subprocess.run([sys.executable, "-m", "granite_cli", "filter", str(data), "-o", str(WORK / "filter-kept.jsonl"),
                        "--audit", str(WORK / "filter-audit.jsonl"), "--run-dir", str(WORK / "filter-run")],
                       check=True, cwd=REPO, stderr=subprocess.DEVNULL)
    seconds = median_seconds(run, repeats)
    return {"samples": count, "seconds": seconds, "samples_per_second": count / seconds}


def assistant_texts(data: Path) -> list[tuple[str, str]]:
    from stages.filter.rules import assistant_text

    return [(s["id"], assistant_text(s)) for s in read_records([str(data)])]


def granite_near(texts) -> set[str]:
    from stages.filter.dedup import MinHashIndex

    index = MinHashIndex()
    return {i for i, text in texts if index.first_copy(i, text) is not None}


def datasketch_near(texts) -> set[str]:
    import re

    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(num_perm=112, params=(14, 8))
    found = set()
    for sample_id, text in texts:
        words = re.findall(r"\w+", text.lower())
        if len(words) < 15:
            continue
        shingles = {" ".join(words[i:i + 5]).encode() for i in range(len(words) - 4)}
        minhash = MinHash(num_perm=112, seed=1)
        minhash.update_batch(list(shingles))
        if lsh.query(minhash):
            found.add(sample_id)
        else:
            lsh.insert(sample_id, minhash)
    return found


def bench_near(data: Path, repeats: int) -> dict:
    texts = assistant_texts(data)
    result = {}
    for name, fn in (("granite", granite_near), ("datasketch", datasketch_near)):
        found = fn(texts)
        seconds = median_seconds(lambda: fn(texts), repeats)
        result[name] = {"duplicates": len(found), "seconds": seconds, "samples_per_second": len(texts) / seconds, "ids": found}
    ours, theirs = result["granite"].pop("ids"), result["datasketch"].pop("ids")
    result["overlap_jaccard"] = len(ours & theirs) / max(1, len(ours | theirs))
    result["speed_ratio"] = result["granite"]["samples_per_second"] / result["datasketch"]["samples_per_second"]
    return result


def bench_index_memory(data: Path) -> dict:
    from stages.filter.dedup import ExactIndex, MinHashIndex

    samples = list(read_records([str(data)]))
    texts = assistant_texts(data)
    tracemalloc.start()
    exact, near = ExactIndex(), MinHashIndex(min_words=0)
    for sample, (sample_id, text) in zip(samples, texts):
        exact.first_copy(sample)
        near.first_copy(sample_id, text)
    size, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"samples_indexed": len(samples), "bytes_per_sample": size / len(samples)}


def bench_peak_rss(copies: int) -> list[dict]:
    from benchmarks.bench_memory import peak_rss_mb

    rows = []
    for n in (copies // 4, copies):
        data = generated_set(n)
        common = ["filter", str(data), "--audit", os.devnull, "--run-dir", str(WORK / "filter-run")]
        no_dedup = peak_rss_mb(common + ["--checks", ",".join(c for c in OPTIONAL_CHECKS if "dedup" not in c)])
        dedup = peak_rss_mb(common)
        rows.append({"samples": sum(1 for _ in read_records([str(data)])), "peak_rss_mb_without_dedup": round(no_dedup, 1),
                     "peak_rss_mb_with_dedup": round(dedup, 1)})
    return rows


def slow_judge_server():
    answer = json.dumps({"choices": [{"message": {"role": "assistant", "content": json.dumps({
        "instruction_following": 5, "correctness": 5, "completeness": 5, "conciseness": 5, "naturalness": 5,
        "calibration": 5, "hallucination": False, "false_premise_accepted": False, "incorrect_computation": False,
        "rationale": "fine"})}}]}).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            time.sleep(SERVER_DELAY)
            self.send_response(200)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def bench_judge(repeats: int) -> dict:
    from model.endpoint import EndpointEngine
    from stages.filter.judge import Judge, JudgeCache

    samples = [s for s in read_records([str(SFT)]) if sum(m["role"] == "assistant" for m in s["messages"]) == 1][:256]
    server = slow_judge_server()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    result = {"server_delay_seconds": SERVER_DELAY, "samples": len(samples)}
    try:
        for concurrency in (1, 8, 32):
            chosen = samples[:64] if concurrency == 1 else samples
            judge = Judge(EndpointEngine(url, "bench", concurrency=concurrency), JudgeCache(None), logprobs=False)
            seconds = median_seconds(lambda: judge.judge(chosen), repeats)
            result[f"concurrency_{concurrency}"] = {"samples_per_second": len(chosen) / seconds,
                                                    "ideal": concurrency / SERVER_DELAY}
    finally:
        server.shutdown()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--copies", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data = generated_set(args.copies)
    count = sum(1 for _ in read_records([str(data)]))
    save("filter", {"cli_rules_and_dedup": bench_cli(data, count, args.repeats), "near_dedup": bench_near(data, args.repeats),
                    "dedup_index_memory": bench_index_memory(data), "peak_rss": bench_peak_rss(args.copies * 4),
                    "judge_endpoint": bench_judge(args.repeats),
                    "goal": "near dedup >= 1x datasketch's speed, the same duplicates"})


if __name__ == "__main__":
    main()
