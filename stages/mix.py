"""granite mix: stream one pre-training phase's data mixture as JSONL documents.

The recipe declares the mixture (source -> share of tokens, OLMo-core style); this stage meets it:

1. plan: each source's target tokens = phase budget x share; count what each source holds
   (streamed once, cached); a source smaller than its target repeats, up to its max_repetition,
   and a source short even then is an error that says by how much.
2. interleave: always draw from the source furthest behind its target, so the stream is mixed
   throughout and every prefix is close to the mixture. Within a source, files are visited in a
   seeded order each epoch and documents pass through a seeded shuffle buffer: memory stays bounded.
3. write: stdout or zstd files. With --num-shards N each job-array worker reads only its part of each
   source (granite_cli/data/parts.py: byte ranges of plain JSONL, compressed files dealt out whole) and
   mixes 1/N of every source's target from it, so N workers read the data once between them, each
   worker's output meets the shares, and so does their union; no document reaches two workers.
4. report: a table of target vs achieved shares on stderr.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import math
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import orjson
import typer
from rich.table import Table

from granite_cli import options
from granite_cli.console import console, progress
from granite_cli.errors import BadInput, GraniteError
from granite_cli.recipe import Recipe, Source, format_count, load_recipe
from granite_cli.data.atomic import atomic_path
from granite_cli.data.records import ErrorPolicy, dumps, record_writer
from granite_cli.data.parts import Part, worker_parts
from granite_cli.data.sources import read_split, source_units

SHUFFLE_BUFFER = 1024
PROGRESS_EVERY = 1024  # documents between progress-bar updates (a per-document update costs ~10% of the run)
MAX_PASSES = 32  # documents a source may pass over, near its target, looking for one that fits
RECORD_SUFFIXES = (".jsonl", ".jsonl.zst", ".jsonl.gz")
COUNTS_FORMAT = 2  # in the token-count cache's keys; 2: a strided part keeps every N-th line (1: every N-th document)


def mix_command(
    phase: Optional[int] = typer.Option(None, "--phase", "-p", help="Recipe phase to mix (1-5). With --heldout and no "
                                                                     "--phase: the sources of every phase."),
    stage: Optional[str] = typer.Option(None, "--stage", help="A long-context stage of the phase ([[phases.stages]], phase 5): "
                                                             "its own mixture and token budget. Required for a phase with stages."),
    recipe: Optional[str] = options.RecipeOption,
    run_dir: Optional[str] = options.RunDirOption,
    seed: int = options.SeedOption,
    output: Optional[str] = typer.Option(
        None, "--output", "-o",
        help="A .jsonl[.zst|.gz] file, or a directory (one mix-IIIII-of-NNNNN.jsonl.zst per worker plus its report). "
             "Default: stdout."),
    tokenizer: Optional[str] = typer.Option(
        None, "--tokenizer", help="Count tokens with this tokenizer directory (exact, slower). "
                                  "Default: estimate from UTF-8 bytes / the recipe's bytes_per_token."),
    tokens: Optional[str] = typer.Option(None, "--tokens", help="Override the phase's token budget (e.g. 500K, 2T)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (targets, files) without reading any data."),
    heldout: bool = typer.Option(
        False, "--heldout", help="Emit the held-out split instead: every document of the phase's sources that the "
                                 "recipe's heldout_fraction sets aside (never part of any training mix), once each."),
    shard_index: Optional[int] = options.ShardIndexOption,
    num_shards: Optional[int] = options.NumShardsOption,
    on_error: str = options.OnErrorOption,
    on_miss: str = typer.Option("fail", "--on-miss", help="A source that ends outside the recipe's mix_tolerance of its "
                                                          "share (its documents larger than what is left of it, say): "
                                                          "'fail' (exit 1, a file output is not written) or 'warn'."),
) -> None:
    """Stream a phase's data mixture as JSONL documents ({"id", "text", "source", ...}).

    Shares are met by tokens over the phase's budget; small sources repeat up to their max_repetition.
    Example: granite mix --phase 2 | granite tokenize
    """
    loaded = load_recipe(recipe, run_dir)
    if on_miss not in ("fail", "warn"):
        raise BadInput("--on-miss must be fail or warn")
    if phase is None and not heldout:
        raise BadInput("--phase is required (which recipe phase to mix)")
    if heldout:
        return write_heldout(loaded, phase, seed, output, on_error)
    stage = _stage(loaded, phase, stage)
    budget = _budget(loaded, phase, tokens, stage)
    targets = {name: budget * share / 100 for name, share in loaded.mixture(phase, stage).items()}
    sources = {name: _declared(loaded, name) for name in targets}
    if dry_run:
        console.print(dry_run_table(loaded, f"{phase}" + (f" stage {stage}" if stage else ""), budget, sources, targets))
        return
    index, count = options.array_position(shard_index, num_shards)
    policy = ErrorPolicy(on_error)
    counter = token_counter(loaded, tokenizer)
    fraction = loaded.heldout_fraction
    parts = {name: worker_parts(source_units(sources[name]), index, count) for name in targets}
    available = available_tokens(sources, parts, counter, policy, loaded.paths.cache, fraction)
    mine = {name: target / count for name, target in targets.items()}  # this worker's 1/N of every source
    check_supply(sources, mine, available, index, count)
    slack = budget / count * loaded.mix_tolerance / 100 / 2
    cursors = [SourceCursor(sources[name], mine[name], seed, policy, counter, slack, fraction=fraction, parts=parts[name],
                            worker=(index, count), phase=phase, stage=stage) for name in targets]
    stream = itertools.chain(interleave(cursors), top_up(cursors, loaded.mix_tolerance))
    target_path = _output_path(output, index, count)
    with record_writer(target_path) as sink, progress() as bar:
        task = bar.add_task(f"mix phase {phase}" + (f" stage {stage}" if stage else ""), total=int(sum(mine.values())), rate="")
        pending = 0
        for position, (cursor, doc, line, n_tokens) in enumerate(stream):
            sink.write(cursor.output(doc, line))
            pending += n_tokens
            if position % PROGRESS_EVERY == 0:
                bar.advance(task, pending)
                pending = 0
        report = mix_report(loaded, phase, stage, budget, cursors, available, seed, index, count)
        misses = tolerance_misses(report, loaded.mix_tolerance)
        if misses and on_miss == "fail":  # raised inside: a file output is not published
            console.print(report_table(report, loaded.mix_tolerance))
            raise GraniteError(f"the mix misses its tolerance (±{loaded.mix_tolerance:g} pp): {'; '.join(misses)}. A "
                               f"source's documents may be larger than what was left of its share: raise the budget "
                               f"(--tokens), split long documents, or pass --on-miss warn")
    policy.report()
    console.print(report_table(report, loaded.mix_tolerance))
    for miss in misses:
        console.print(f"[yellow]warning:[/] {miss}")
    if target_path not in (None, "-") and Path(output).suffix not in (".jsonl", ".zst", ".gz"):
        with atomic_path(Path(output) / f"mix-{index:05d}-of-{count:05d}.json") as tmp:
            tmp.write_text(json.dumps(report, indent=2))


def write_heldout(recipe: Recipe, phase: Optional[int], seed: int, output: Optional[str], on_error: str) -> None:
    """Write the held-out split: every set-aside document of the phase's (or every phase's) sources, once."""
    if recipe.heldout_fraction <= 0:
        raise BadInput(f"recipe {recipe.name!r} sets no heldout_fraction, so it has no held-out split", str(recipe.path))
    phases = [phase] if phase is not None else sorted(recipe.phases)
    names = sorted({name for number in phases for stage in [None, *(s.name for s in recipe.phase(number).stages)]
                    for name in recipe.mixture(number, stage)})
    policy = ErrorPolicy(on_error)
    counter = token_counter(recipe, None)
    cursors = [SourceCursor(_declared(recipe, name), 0.0, seed, policy, counter, heldout=True, fraction=recipe.heldout_fraction,
                            parts=worker_parts(source_units(_declared(recipe, name)), 0, 1), phase="heldout")
               for name in names]
    with record_writer(_output_path(output, 0, 1)) as sink:
        for cursor in cursors:
            for doc, line in cursor.documents:
                cursor.emitted_tokens += counter.count(doc["text"])
                cursor.emitted_docs += 1
                sink.write(cursor.output(doc, line))
    policy.report()
    table = Table(title=f"held-out split: {recipe.name} ({100 * recipe.heldout_fraction:g}% of documents)", title_justify="left")
    for column in ("source", "tokens", "documents"):
        table.add_column(column, justify="left" if column == "source" else "right")
    for cursor in cursors:
        table.add_row(cursor.source.name, format_count(cursor.emitted_tokens), str(cursor.emitted_docs))
    console.print(table)


# ------------------------------------------------------------------ planning
def _stage(recipe: Recipe, phase: int, stage: Optional[str]) -> Optional[str]:
    """The long-context stage to mix: a phase with stages is mixed one stage at a time."""
    stages = recipe.phase(phase).stages
    if stage is None and stages:
        raise BadInput(f"phase {phase} is mixed one stage at a time: pass --stage with one of "
                       f"{', '.join(s.name for s in stages)}")
    if stage is not None:
        recipe.phase(phase).stage(stage)  # names the known stages when there is no such one
    return stage


def _budget(recipe: Recipe, phase: int, override: Optional[str], stage: Optional[str] = None) -> int:
    from granite_cli.recipe import parse_count

    declared = recipe.phase(phase).stage(stage).tokens if stage else recipe.phase(phase).tokens
    budget = parse_count(override, "--tokens") if override else declared
    if budget <= 0:
        raise BadInput(f"phase {phase} has no token budget: set `tokens` in the recipe or pass --tokens")
    return budget


def _declared(recipe: Recipe, name: str) -> Source:
    if name not in recipe.sources:
        raise BadInput(f"the mixture names source {name!r}, which the recipe does not declare under [sources]", str(recipe.path))
    return recipe.sources[name]


def token_counter(recipe: Recipe, tokenizer: Optional[str]) -> "TokenCounter":
    if tokenizer:
        from granite_cli.data.tokenizer_io import load_tokenizer

        backend = load_tokenizer(tokenizer).backend_tokenizer
        return TokenCounter(f"tokenizer:{tokenizer}", lambda text: len(backend.encode(text, add_special_tokens=False).ids))
    bytes_per_token = recipe.bytes_per_token

    def estimate(text: str) -> int:  # an ASCII text's length is its UTF-8 length: no copy to count it
        return max(1, round((len(text) if text.isascii() else len(text.encode())) / bytes_per_token))

    return TokenCounter(f"estimate:{bytes_per_token}", estimate)


@dataclass
class TokenCounter:
    """How tokens are counted: `identity` names the method so cached counts are never mixed up."""

    identity: str
    count: Callable[[str], int]


def available_tokens(sources: dict[str, Source], parts: dict[str, list[Part]], counter: TokenCounter, policy: ErrorPolicy,
                     cache_dir: Path, fraction: float) -> dict[str, int]:
    """Tokens one pass over this worker's parts of each source's training split holds.

    Counted per part and cached in the run directory's cache by (part, size, mtime, counting method, split),
    so a rerun reads the cache instead of the data.
    """
    cache_path = cache_dir / "source-tokens.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    changed = False
    available = {}
    for name, source in sources.items():
        available[name] = 0
        for part in parts[name]:
            stat = os.stat(part.unit) if os.path.exists(part.unit) else None
            key = hashlib.sha256(f"{COUNTS_FORMAT}|{part.key()}|{stat and stat.st_size}|{stat and stat.st_mtime_ns}|"
                                 f"{counter.identity}|{source.text_field}|{fraction}".encode()).hexdigest()
            if key not in cache or stat is None:
                cache[key] = sum(counter.count(doc["text"]) for doc, _ in read_split(part, source, policy, fraction, False))
                changed = True
            available[name] += cache[key]
    if changed:
        with atomic_path(cache_path) as tmp:
            tmp.write_text(json.dumps(cache))
    return available


def check_supply(sources: dict[str, Source], targets: dict[str, float], available: dict[str, int], index: int = 0,
                 count: int = 1) -> None:
    """Every source must cover its target within max_repetition passes; report all short ones at once."""
    short = []
    whose = f"worker {index} of {count}'s part of " if count > 1 else ""
    for name, target in targets.items():
        cap = available[name] * sources[name].max_repetition
        if cap < target:
            short.append(f"{whose}source {name!r} is short by {format_count(int(target - cap))} tokens: needs "
                         f"{format_count(int(target))}, holds {format_count(available[name])} x max_repetition "
                         f"{sources[name].max_repetition:g}")
    if short:
        advice = " (a worker's part is 1/N of each plain file, or whole compressed files dealt by size: split the source "\
                 "into more files of similar size)" if count > 1 else ""
        raise BadInput("; ".join(short) + ". Add data, raise the source's max_repetition, or lower the phase's tokens"
                       + advice + ".")


# ------------------------------------------------------------------ streaming
@dataclass
class SourceCursor:
    """One source's position in the mixed stream: what it must emit and what it has emitted."""

    source: Source
    target: float
    seed: int
    policy: ErrorPolicy
    counter: TokenCounter
    slack: float = 0.0
    heldout: bool = False
    fraction: float = 0.0
    parts: list = field(default_factory=list)  # what this worker reads of the source (granite_cli/data/parts.py)
    worker: tuple = (0, 1)  # (index, count) in the job array
    phase: object = None  # what the written documents' `phase` says: the phase number, or "heldout"
    stage: Optional[str] = None
    emitted_tokens: int = 0
    emitted_docs: int = 0
    epoch: int = 0  # the pass over the source that the last document drawn came from
    passed: int = 0
    documents: Iterator[tuple[dict, Optional[bytes]]] = field(init=False)
    tags: dict = field(default_factory=dict)  # epoch -> (the keys `output` sets, the same as JSON to append)

    def __post_init__(self):
        self.documents = self._epochs()

    def _epochs(self) -> Iterator[tuple[dict, Optional[bytes]]]:
        epochs = 1 if self.heldout else math.ceil(self.source.max_repetition)
        for epoch in range(epochs):
            self.epoch = epoch
            index, count = self.worker
            rng = random.Random(f"{self.seed}/{self.source.name}/{epoch}" + (f"/{index}-of-{count}" if count > 1 else ""))
            parts = list(self.parts)
            rng.shuffle(parts)
            docs = itertools.chain.from_iterable(read_split(p, self.source, self.policy, self.fraction, self.heldout)
                                                 for p in parts)
            yield from shuffle_buffer(docs, rng, SHUFFLE_BUFFER)

    def behind(self) -> float:
        return self.emitted_tokens / self.target

    def output(self, doc: dict, line: Optional[bytes]) -> bytes:
        """The document as written: `source` is the recipe's source name, `phase` (and `stage`) where it goes, and a
        repeated pass is marked (`repeat`). Where the record has none of these keys and its text under `text`, they are
        appended to the line read, which keeps its own spacing and escapes: serialising a long document again costs
        more. Either way the written line parses to the same record."""
        if self.epoch not in self.tags:
            tags = {"source": self.source.name, "phase": self.phase, **({"stage": self.stage} if self.stage else {}),
                    **({"repeat": self.epoch} if self.epoch else {})}
            self.tags[self.epoch] = tags, b"," + orjson.dumps(tags)[1:] + b"\n"  # the keys, and the JSON to append
        tags, tail = self.tags[self.epoch]
        if line is not None and self.source.text_field == "text" and tags.keys().isdisjoint(doc):
            body = line[:-2] if line.endswith(b"}\n") else line.rstrip()[:-1]  # the object without its closing brace
            return body + tail
        doc.update(tags)  # (a key the record has is replaced in place: the bytes alone cannot do that safely)
        return dumps(doc)


def shuffle_buffer(items: Iterator, rng: random.Random, size: int) -> Iterator:
    """Shuffle a stream with a bounded buffer: each new item swaps out a random buffered one.

    The slot is drawn exactly as `rng.randrange(size)` draws it (getrandbits of size's bit length until one falls
    below size; tests/test_mix.py holds the two to each other), written out here: randrange's two Python calls a
    document took three times as long (0.09 against 0.03 s for 113K documents)."""
    items = iter(items)
    buffer = list(itertools.islice(items, size))
    bits, getrandbits = size.bit_length(), rng.getrandbits
    for item in items:
        slot = getrandbits(bits)
        while slot >= size:
            slot = getrandbits(bits)
        yield buffer[slot]
        buffer[slot] = item
    rng.shuffle(buffer)
    yield from buffer


def interleave(cursors: list[SourceCursor]) -> Iterator[tuple[SourceCursor, dict, Optional[bytes], int]]:
    """Yield (cursor, document, its line, tokens), always from the source furthest behind its target.

    A document that would overshoot its source's target by more than the source's slack (half the
    recipe's tolerance) is passed over; a source is done once it is within its slack of the target,
    or after MAX_PASSES documents in a row did not fit. Smaller documents thus fill the last gap.
    """
    heap = [(0.0, order, cursor) for order, cursor in enumerate(cursors) if cursor.target > 0]
    heapq.heapify(heap)
    while heap:
        _, order, cursor = heapq.heappop(heap)
        count, documents = cursor.counter.count, cursor.documents
        for doc, line in documents:  # this source's documents, while it stays the one furthest behind
            n_tokens = count(doc["text"])
            if cursor.emitted_tokens + n_tokens > cursor.target + cursor.slack:
                cursor.passed += 1
                if cursor.passed < MAX_PASSES:
                    heapq.heappush(heap, (cursor.behind(), order, cursor))
                break
            cursor.passed = 0
            cursor.emitted_tokens += n_tokens
            cursor.emitted_docs += 1
            yield cursor, doc, line, n_tokens
            if cursor.emitted_tokens >= cursor.target - cursor.slack:
                break
            behind = cursor.behind()
            if heap and (heap[0][0], heap[0][1]) < (behind, order):  # another source is further behind now
                heapq.heappush(heap, (behind, order, cursor))
                break


def top_up(cursors: list[SourceCursor], tolerance: float) -> Iterator[tuple[SourceCursor, dict, Optional[bytes], int]]:
    """Bring every source's share of the emitted total within the tolerance, once each met its target in tokens.

    Meeting each target within its slack still leaves the shares of what was emitted off when the
    sources that stopped short add up (a source at +slack holds more than its share of a smaller
    total). Documents are added, each from the source furthest below its share that has one that
    keeps it under its own share, until every share is within 90% of the tolerance; a source that
    cannot be brought in (its documents are all too large) is left as it is, and the report says so.
    """
    budget = sum(c.target for c in cursors)
    if budget <= 0:
        return
    share = {id(c): c.target / budget for c in cursors}
    margin = 0.009 * tolerance  # a fraction: 90% of the tolerance in percentage points
    exhausted: set[int] = set()
    while True:
        total = sum(c.emitted_tokens for c in cursors) or 1
        if max(c.emitted_tokens / total - share[id(c)] for c in cursors) <= margin:
            return
        candidates = sorted((c for c in cursors if id(c) not in exhausted),
                            key=lambda c: c.emitted_tokens / total - share[id(c)])
        if not candidates:
            return
        cursor = candidates[0]
        for _ in range(MAX_PASSES):
            item = next(cursor.documents, None)
            if item is None:
                break
            doc, line = item
            n_tokens = cursor.counter.count(doc["text"])
            if (cursor.emitted_tokens + n_tokens) / (total + n_tokens) - share[id(cursor)] <= margin:
                cursor.emitted_tokens += n_tokens
                cursor.emitted_docs += 1
                yield cursor, doc, line, n_tokens
                break
        else:
            exhausted.add(id(cursor))
            continue
        if item is None:
            exhausted.add(id(cursor))


def _output_path(output: Optional[str], index: int, count: int) -> Optional[str]:
    if output is None or output == "-" or output.endswith(RECORD_SUFFIXES):
        if count > 1 and output not in (None, "-"):
            raise BadInput("with --num-shards > 1, give -o a directory (each worker writes its own file) or use stdout")
        return output
    return str(Path(output) / f"mix-{index:05d}-of-{count:05d}.jsonl.zst")


# ------------------------------------------------------------------ reporting
def mix_report(recipe, phase, stage, budget, cursors, available, seed, index, count) -> dict:
    """The worker's mix: every source's target and achieved share of what this worker wrote, and what its parts held."""
    total = sum(c.emitted_tokens for c in cursors) or 1
    return {
        "recipe": recipe.name, "phase": phase, **({"stage": stage} if stage else {}), "budget_tokens": budget,
        "worker_budget_tokens": budget / count, "seed": seed, "shard_index": index, "num_shards": count,
        "emitted_tokens": total, "command": sys.argv,
        "sources": {
            c.source.name: {"target_pct": 100 * c.target * count / budget, "achieved_pct": 100 * c.emitted_tokens / total,
                            "tokens": c.emitted_tokens, "documents": c.emitted_docs,
                            "parts": [p.key() for p in c.parts], "available_tokens": available[c.source.name],
                            "repetitions": c.emitted_tokens / max(available[c.source.name], 1)}
            for c in cursors},
    }


def tolerance_misses(report: dict, tolerance: float) -> list[str]:
    """Each source whose achieved share is further than `tolerance` percentage points from its target."""
    return [f"{name} {row['achieved_pct']:.2f}% against {row['target_pct']:.2f}%" for name, row in report["sources"].items()
            if abs(row["achieved_pct"] - row["target_pct"]) > tolerance]


def report_table(report: dict, tolerance: float) -> Table:
    where = f"phase {report['phase']}" + (f" stage {report['stage']}" if "stage" in report else "")
    table = Table(title=f"mix: {report['recipe']} {where} — {format_count(report['emitted_tokens'])} tokens "
                        f"(target {format_count(report['budget_tokens'])}, tolerance ±{tolerance:g} pp)", title_justify="left")
    for column in ("source", "target %", "achieved %", "tokens", "documents", "repetitions"):
        table.add_column(column, justify="left" if column == "source" else "right")
    for name, row in sorted(report["sources"].items(), key=lambda kv: -kv[1]["target_pct"]):
        off = abs(row["achieved_pct"] - row["target_pct"]) > tolerance
        achieved = f"[red]{row['achieved_pct']:.2f}[/]" if off else f"{row['achieved_pct']:.2f}"
        table.add_row(name, f"{row['target_pct']:.2f}", achieved, format_count(row["tokens"]),
                      str(row["documents"]), f"{row['repetitions']:.2f}x")
    return table


def dry_run_table(recipe: Recipe, phase: str, budget: int, sources: dict[str, Source], targets: dict[str, float]) -> Table:
    table = Table(title=f"mix plan (dry run): {recipe.name} phase {phase} — {format_count(budget)} tokens", title_justify="left")
    for column in ("source", "share %", "target tokens", "max repetition", "files", "bytes on disk"):
        table.add_column(column, justify="left" if column == "source" else "right")
    for name, target in sorted(targets.items(), key=lambda kv: -kv[1]):
        source = sources[name]
        files = source.files() if not source.hf else []
        size = sum(os.path.getsize(f) for f in files)
        table.add_row(name, f"{100 * target / budget:.2f}", format_count(int(target)), f"{source.max_repetition:g}",
                      f"hf:{source.hf}" if source.hf else str(len(files)), format_count(size) if files else "-")
    return table
