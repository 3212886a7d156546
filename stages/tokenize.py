"""granite tokenize: train a byte-level BPE tokenizer, and turn documents into token shards.

    granite tokenize train [INPUT ...] --vocab-size V -o TOKDIR
    granite tokenize [INPUT ...] --tokenizer TOKDIR -o SHARDDIR
    granite tokenize inspect SHARDDIR

Tokenizing reads records on a background thread while the Rust tokenizer encodes the previous batch
(it releases the GIL), so reading and decompression hide behind encoding. Output is built in
`.NAME.partial/`; every closed shard checkpoints how much input it consumed (with a digest of that
input), so an interrupted run resumes from its last shard, and the directory appears under its
final name only when complete.
"""

from __future__ import annotations

import hashlib
import json
import queue
import shutil
import sys
import threading
import time
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import Iterator, Optional

import typer

from granite_cli import options
from granite_cli.console import console, progress
from granite_cli.errors import BadInput, GraniteError
from granite_cli.recipe import format_count, load_recipe, parse_count
from granite_cli.data.atomic import OutputLock, atomic_directory, atomic_path, partial_directory, publish
from granite_cli.data.parts import worker_records
from granite_cli.data.records import STDIO, ErrorPolicy, input_paths, read_records
from granite_cli.data.sources import read_unit, source_units

app = typer.Typer(
    cls=options.DefaultCommandGroup,
    help="Train a tokenizer (`train`), tokenize documents into shards (default), verify shards (`inspect`).\n\n"
         "`granite tokenize [INPUT ...]` is `granite tokenize run [INPUT ...]`.",
    no_args_is_help=False,
)
BATCH_DOCS = 512
PIECE_CHARS = 1 << 18  # a text longer than this is encoded in pieces (see encode_texts)
PROGRESS_FILE = "progress.json"


# ------------------------------------------------------------------ granite tokenize [run]
@app.command("run")
def tokenize_command(
    inputs: Optional[list[str]] = typer.Argument(None, help="JSONL document files (.jsonl, .zst, .gz); '-' or none: stdin."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", "-t", help="Local HF tokenizer directory. Default: <run-dir>/tokenizer."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Shard directory to write. Default: <run-dir>/shards/phase-N (shards/heldout for the held-out split)."),
    phase: Optional[int] = typer.Option(None, "--phase", "-p", help="Phase N for the default output; else taken from the documents' `phase` (set by granite mix)."),
    recipe: Optional[str] = options.RecipeOption,
    run_dir: Optional[str] = options.RunDirOption,
    shard_tokens: str = typer.Option("64M", "--shard-tokens", help="Tokens per shard file (documents never span shards)."),
    batch_docs: int = typer.Option(BATCH_DOCS, "--batch-docs", help="Documents encoded per batch."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing complete output directory."),
    shard_index: Optional[int] = options.ShardIndexOption,
    num_shards: Optional[int] = options.NumShardsOption,
    on_error: str = options.OnErrorOption,
) -> None:
    """Tokenize documents into a token shard directory (EOS after each document). Resumes an interrupted run.

    In a job array (--num-shards N, or Slurm's array variables) worker I writes a part-I directory; training reads all.

    Given files, a worker reads its part: 1/N of each plain JSONL file, or its share of the compressed files.

    Given stdin, it takes the whole stream: `granite mix` in the same array has already split the documents.
    """
    paths = input_paths(inputs)
    index, count = options.array_position(shard_index, num_shards)
    policy = ErrorPolicy(on_error)
    loaded = load_recipe(recipe, run_dir)
    from granite_cli.data.tokenizer_io import load_tokenizer, tokenizer_identity

    tokenizer_path = tokenizer or str(loaded.paths.tokenizer)
    tok = load_tokenizer(tokenizer_path)
    identity = tokenizer_identity(tok, tokenizer_path)
    if identity["eos_id"] is None:
        raise BadInput("the tokenizer has no EOS token; documents need one between them", tokenizer_path)
    split = count > 1 and STDIO not in paths
    if split:  # this worker's part of the files (granite_cli/data/parts.py)
        records = worker_records(paths, policy, index, count, require_text=True)
    else:
        records = read_records(paths, policy, require_text=True)
    first = next(records, None)
    if first is None:
        whose = f"worker {index} of {count}'s part of " if split else ""
        advice = " (its byte range holds no line start, or it was dealt no file: use fewer workers)" if split else ""
        raise BadInput(f"no documents in {whose}the input{advice}", ", ".join(paths))
    out = Path(output) if output else loaded.paths.shards(_phase_dir(phase, first))
    if count > 1:
        out = out / f"part-{index:05d}"
    documents = _prepend(first, records)
    with OutputLock(out):  # a second run writing the same directory is refused, not left to collide
        result = write_shards(documents, tok, identity, out, parse_count(shard_tokens, "--shard-tokens"), batch_docs, overwrite)
    policy.report()
    if policy.skipped:
        result["skipped"] = dict(policy.skipped)
    console.print(f"wrote {format_count(result['tokens'])} tokens, {result['documents']} documents, "
                  f"{len(result['shards'])} shard(s) to [bold]{out}[/] ({result['tokens_per_second']:,.0f} tokens/s)")


def _phase_dir(phase: Optional[int], first: dict) -> str:
    phase = phase if phase is not None else first.get("phase")
    if phase == "heldout":
        return "heldout"
    if not isinstance(phase, int):
        raise BadInput("no output directory: give -o DIR, or --phase N to write <run-dir>/shards/phase-N")
    return f"phase-{phase}-{first['stage']}" if first.get("stage") else f"phase-{phase}"


def _prepend(first: dict, rest: Iterator[dict]) -> Iterator[dict]:
    yield first
    yield from rest


def write_shards(documents: Iterator[dict], tok, identity: dict, out: Path, shard_tokens: int,
                 batch_docs: int = BATCH_DOCS, overwrite: bool = False) -> dict:
    """Tokenize `documents` into `out`, resuming from `.out.partial/` when an earlier run stopped."""
    import numpy as np

    from granite_cli.data.shards import MANIFEST, ShardWriter, build_manifest, token_dtype

    if (out / MANIFEST).exists() and not overwrite:
        raise BadInput("output already exists and is complete; pass --overwrite to replace it", str(out))
    partial = partial_directory(out)
    state = _resume_state(partial, identity)
    dtype = token_dtype(identity["vocab_size"])
    writer = ShardWriter(partial, dtype, shard_tokens, first_shard=len(state["shards"]))
    digest = hashlib.blake2b(digest_size=16)
    documents = _skip_consumed(documents, state, digest)
    backend = tok.backend_tokenizer
    eos = identity["eos_id"]
    consumed = state["records_consumed"]
    started, tokens_done = time.perf_counter(), 0
    with progress() as bar:
        task = bar.add_task(f"tokenize → {out.name}", total=None, rate="")
        for batch in _prefetch(_batches(documents, batch_docs)):
            encoded = encode_texts(backend, [doc["text"] for doc in batch])
            lengths = np.fromiter((len(ids) + 1 for ids in encoded), dtype=np.int64, count=len(encoded))
            flat = np.empty(int(lengths.sum()), dtype=np.int64)
            ends = np.cumsum(lengths)
            for ids, end, length in zip(encoded, ends.tolist(), lengths.tolist()):
                flat[end - length:end - 1] = ids
                flat[end - 1] = eos
            sources = [str(doc.get("source", "unknown")) for doc in batch]
            done_in_batch = 0
            for docs_consumed, entry in writer.add_batch(flat, ends, sources):
                _hash_docs(digest, batch[done_in_batch:docs_consumed])
                done_in_batch = docs_consumed
                state["shards"].append(entry)
                state["records_consumed"] = consumed + docs_consumed
                state["input_digest"] = digest.hexdigest()
                _save_state(partial, state)
            _hash_docs(digest, batch[done_in_batch:])
            consumed += len(batch)
            tokens_done += len(flat)
            rate = tokens_done / max(time.perf_counter() - started, 1e-9)
            bar.update(task, advance=len(batch), rate=f"{rate:,.0f} tok/s")
    last = writer.close()
    if last:
        state["shards"].append(last)
    if not state["shards"]:
        raise BadInput("no documents to tokenize")
    elapsed = time.perf_counter() - started
    manifest = build_manifest(state["shards"], identity, dtype, {
        "command": sys.argv, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "shard_tokens": shard_tokens})
    (partial / "manifest.json").write_text(json.dumps(manifest, indent=2))
    (partial / PROGRESS_FILE).unlink(missing_ok=True)
    publish(partial, out)
    return dict(manifest, tokens_per_second=tokens_done / max(elapsed, 1e-9))


def encode_texts(backend, texts: list[str], piece_chars: int = PIECE_CHARS) -> list:
    """Token ids of each text. A long text is encoded a piece at a time, cut where the pre-tokenizer splits anyway
    (BPE merges never cross a pre-token), so the ids equal encoding it whole while memory holds one piece's
    encoding: a tokenizer's encoding costs about 140 bytes a character."""
    import numpy as np

    short = [i for i, text in enumerate(texts) if len(text) <= piece_chars]
    out: list = [None] * len(texts)
    for i, encoding in zip(short, backend.encode_batch_fast([texts[i] for i in short], add_special_tokens=False)):
        out[i] = encoding.ids
    for i in (i for i, text in enumerate(texts) if len(text) > piece_chars):
        pieces = pieces_for_encoding(backend, texts[i], piece_chars)
        out[i] = np.concatenate([np.asarray(encoding.ids, dtype=np.int64) for start in range(0, len(pieces), 8)
                                 for encoding in backend.encode_batch_fast(pieces[start:start + 8], add_special_tokens=False)])
    return out


def pieces_for_encoding(backend, text: str, piece_chars: int) -> list[str]:
    """`text` cut about every `piece_chars` characters at pre-token boundaries (the whole text where none is found)."""
    if backend.pre_tokenizer is None:
        return [text]
    pieces, start = [], 0
    while len(text) - start > piece_chars:
        cut = _pre_token_boundary(backend.pre_tokenizer, text, start + piece_chars)
        if cut is None:
            break
        pieces.append(text[start:cut])
        start = cut
    return pieces + [text[start:]]


def _pre_token_boundary(pre_tokenizer, text: str, near: int, ahead: int = 4096):
    """The first pre-token start at or after `near` on which two scans that begin 1 KB and 2 KB earlier agree:
    a regex pre-tokenizer that starts mid-token resynchronises within a few characters."""
    found = []
    for lead in (1024, 2048):
        begin = max(0, near - lead)
        starts = {begin + s for _, (s, _) in pre_tokenizer.pre_tokenize_str(text[begin:near + ahead])}
        found.append({p for p in starts if near <= p < near + ahead - 64})
    common = found[0] & found[1]
    return min(common) if common else None


def _batches(documents: Iterator[dict], size: int) -> Iterator[list[dict]]:
    while batch := list(islice(documents, size)):
        yield batch


def _prefetch(batches: Iterator[list[dict]], depth: int = 4) -> Iterator[list[dict]]:
    """Read the next batches on a thread while the caller encodes: I/O hides behind encoding."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def produce():
        try:
            for batch in batches:
                slots.put(batch)
            slots.put(done)
        except BaseException as err:  # hand every error (bad input included) to the consumer
            slots.put(err)

    threading.Thread(target=produce, daemon=True).start()
    while (item := slots.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


def _hash_docs(digest, docs: list[dict]) -> None:
    for doc in docs:
        digest.update(doc["text"].encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")


def _resume_state(partial: Path, identity: dict) -> dict:
    """The checkpoint of an interrupted run in `partial`, or a fresh state (clearing any leftovers)."""
    progress_path = partial / PROGRESS_FILE
    if progress_path.exists():
        state = json.loads(progress_path.read_text())
        if state["tokenizer_sha256"] != identity["sha256"]:
            raise BadInput(f"{partial} holds an interrupted run made with another tokenizer; delete it to start over")
        keep = {name for s in state["shards"] for name in (s["tokens_file"], s["index_file"])} | {PROGRESS_FILE}
        for leftover in partial.iterdir():
            if leftover.name not in keep:
                leftover.unlink()
        console.print(f"resuming: {len(state['shards'])} shard(s), {state['records_consumed']} documents already done")
        return state
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    return {"tokenizer_sha256": identity["sha256"], "records_consumed": 0, "input_digest": None, "shards": []}


def _save_state(partial: Path, state: dict) -> None:
    with atomic_path(partial / PROGRESS_FILE) as tmp:
        tmp.write_text(json.dumps(state))


def _skip_consumed(documents: Iterator[dict], state: dict, digest) -> Iterator[dict]:
    """Skip the documents an interrupted run already wrote, checking they are the same documents."""
    skip = state["records_consumed"]
    if skip:
        head = list(islice(documents, skip))
        _hash_docs(digest, head)
        if len(head) < skip or digest.hexdigest() != state["input_digest"]:
            raise BadInput("the input differs from the interrupted run's (its first documents do not match); "
                           "delete the .partial directory to start over")
    return documents


# ------------------------------------------------------------------ granite tokenize train
@app.command("train")
def train_command(
    inputs: Optional[list[str]] = typer.Argument(None, help="JSONL documents to train on ('-' for stdin). Default: the recipe's tokenizer.train_sources."),
    vocab_size: Optional[int] = typer.Option(None, "--vocab-size", help="Vocabulary size, special tokens included. Default: the recipe's."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Tokenizer directory. Default: <run-dir>/tokenizer."),
    max_bytes: Optional[str] = typer.Option(None, "--max-bytes", help="Bytes of text read from each input (or source). Default: recipe's train_bytes_per_source, else all."),
    min_frequency: int = typer.Option(2, "--min-frequency", help="Least count for a merge to be learned."),
    recipe: Optional[str] = options.RecipeOption,
    run_dir: Optional[str] = options.RunDirOption,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing tokenizer directory."),
    on_error: str = options.OnErrorOption,
) -> None:
    """Train a byte-level BPE tokenizer (cl100k-style pre-split) with the Granite special tokens and chat template.

    The result is a Hugging Face tokenizer directory that AutoTokenizer.from_pretrained loads offline.
    """
    loaded = load_recipe(recipe, run_dir)
    out = Path(output) if output else loaded.paths.tokenizer
    if (out / "tokenizer.json").exists() and not overwrite:
        console.print(f"tokenizer already at [bold]{out}[/] (pass --overwrite to retrain)")
        return
    size = vocab_size or loaded.tokenizer.vocab_size
    if not size or size < 300:
        raise BadInput("--vocab-size must be at least 300 (256 bytes + special tokens + merges)")
    budget = (parse_count(max_bytes, "--max-bytes") if max_bytes else loaded.tokenizer.train_bytes_per_source) or None
    policy = ErrorPolicy(on_error)
    texts = training_texts(inputs, loaded, budget, policy)
    from granite_cli.data.tokenizer_train import train_bpe

    started = time.perf_counter()
    tokenizer = train_bpe(texts, size, min_frequency, loaded.tokenizer.name)
    with atomic_directory(out) as staged:
        tokenizer.save_pretrained(str(staged))
    policy.report()
    console.print(f"trained a {len(tokenizer)}-token BPE tokenizer in {time.perf_counter() - started:.1f}s → [bold]{out}[/]")


def training_texts(inputs: Optional[list[str]], recipe, budget: Optional[int], policy: ErrorPolicy) -> Iterator[str]:
    """Texts to train on: the given files ('-' for stdin), else the recipe's train_sources; each up to `budget` bytes."""
    # one group open at a time: a group left at its budget is closed (its file, or its zstd process) before the next
    if inputs:
        groups = (read_records([p], policy, require_text=True) for p in inputs)
    else:
        names = recipe.tokenizer.train_sources or list(recipe.sources)
        groups = (_source_docs(recipe.sources[name], policy) for name in names)
    for docs in groups:
        used = 0
        for doc in docs:
            yield doc["text"]
            used += len(doc["text"])
            if budget and used >= budget:
                break


def _source_docs(source, policy: ErrorPolicy) -> Iterator[dict]:
    for unit in source_units(source):
        yield from read_unit(unit, source, policy)


# ------------------------------------------------------------------ granite tokenize inspect
@app.command("inspect")
def inspect_command(
    directory: str = typer.Argument(..., help="Token shard directory to verify."),
    show: int = typer.Option(3, "--show", help="Decode and print this many documents."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", "-t", help="Tokenizer for decoding. Default: the one the manifest names."),
) -> None:
    """Verify a shard directory's checksums and counts against its manifest, and decode a few documents."""
    from granite_cli.data.shards import ShardSet

    shards = ShardSet(directory)
    manifest = shards.manifest
    console.print(f"[bold]{directory}[/]: {format_count(manifest['tokens'])} tokens, {manifest['documents']} documents, "
                  f"{len(manifest['shards'])} shard(s), {manifest['dtype']}, tokenizer {manifest['tokenizer']['name']} "
                  f"(sha256 {manifest['tokenizer']['sha256'][:12]})")
    for name, counts in sorted(manifest["sources"].items(), key=lambda kv: -kv[1]["tokens"]):
        console.print(f"  {name:24s} {format_count(counts['tokens']):>8s} tokens  {counts['documents']:>8d} docs "
                      f"({100 * counts['tokens'] / max(manifest['tokens'], 1):.1f}%)")
    problems = shards.verify()
    if problems:
        for problem in problems:
            console.print(f"[red]✗[/] {problem}")
        raise GraniteError(f"{directory}: {len(problems)} problem(s) found")
    console.print("[green]✓[/] checksums, counts and document boundaries match the manifest")
    if show:
        from granite_cli.data.tokenizer_io import load_tokenizer

        tok = load_tokenizer(tokenizer or manifest["tokenizer"]["path"])
        for number in range(min(show, shards.shards[0]["documents"])):
            text = tok.decode(shards.document(0, number).tolist())
            console.print(f"[dim]--- document {number} ({len(text)} chars)[/]")
            console.print(text[:300] + ("…" if len(text) > 300 else ""), markup=False, highlight=False)
