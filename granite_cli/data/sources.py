"""Reading a recipe source's documents: local JSONL/.zst/.gz/Parquet globs or a cached HF dataset.

Every reader streams: Parquet by record batch, datasets by iteration, JSONL by line, so memory stays
bounded whatever the size of a source.

A job-array worker reads only its part of each source (`worker_parts`): 1/N of every plain JSONL file as a byte
range aligned to line starts, and whole compressed (or Parquet) files dealt out by size. A source with fewer
unsplittable files than workers is the exception: each worker reads those files whole and keeps every N-th
document, so they are read N times (split such a source into at least N files, or leave it uncompressed).
"""

from __future__ import annotations

import hashlib
import itertools
import os
from dataclasses import dataclass
from typing import Iterator, Optional

from granite_cli.errors import BadInput
from granite_cli.recipe import Source
from granite_cli.data.records import ErrorPolicy, iter_lines, iter_range_lines, parse_line

PARQUET_BATCH = 1024


def source_units(source: Source) -> list[str]:
    """The units a source is read in, in a fixed order: its files, or its HF dataset."""
    if source.hf:
        return [f"hf:{source.hf}"]
    files = source.files()
    if not files:
        raise BadInput(f"source {source.name!r}: no file matches {', '.join(source.paths)}")
    return files


@dataclass(frozen=True)
class Part:
    """What one worker reads of one unit: all of it, bytes [start, end) of a plain JSONL file, or every `stride`-th
    document starting at the `offset`-th (a file it cannot split)."""

    unit: str
    start: int = 0
    end: Optional[int] = None
    stride: int = 1
    offset: int = 0

    def key(self) -> str:
        """Names the part (token-count cache keys, reports)."""
        if self.end is not None:
            return f"{self.unit}[{self.start}:{self.end}]"
        return f"{self.unit}[{self.offset}::{self.stride}]" if self.stride > 1 else self.unit


def worker_parts(source: Source, index: int, count: int) -> list[Part]:
    """Worker `index` of `count`'s parts of a source; the parts of all workers together hold each document once."""
    units = source_units(source)
    if count == 1:
        return [Part(u) for u in units]
    parts, whole = [], []
    for unit in units:
        if unit.endswith(".jsonl"):
            size = os.path.getsize(unit)
            parts.append(Part(unit, size * index // count, size * (index + 1) // count))
        else:
            whole.append(unit)
    if len(whole) >= count:  # largest first, each to the worker holding the fewest bytes so far
        loads, mine = [0] * count, []
        for unit in sorted(whole, key=lambda u: (-_size(u), u)):
            worker = loads.index(min(loads))
            loads[worker] += _size(unit)
            if worker == index:
                mine.append(unit)
        parts += [Part(u) for u in sorted(mine)]
    else:
        parts += [Part(u, stride=count, offset=index) for u in whole]
    return parts


def _size(unit: str) -> int:
    return os.path.getsize(unit) if os.path.exists(unit) else 0


def read_part(part: Part, source: Source, policy: ErrorPolicy) -> Iterator[tuple[dict, Optional[bytes]]]:
    """(document, the JSONL line it was parsed from) for each document of one worker's part of a unit. The line
    lets mix write a document out without serialising it again; Parquet and datasets rows have none (None)."""
    if part.end is not None:
        lines = iter_range_lines(part.unit, part.start, part.end)
        return _jsonl_documents(f"{part.unit}[bytes {part.start}:{part.end}]", lines, source, policy)
    if part.unit.startswith("hf:"):
        documents = ((row, None) for row in _read_hf(part.unit[3:], source))
    elif part.unit.endswith(".parquet"):
        documents = ((row, None) for row in _read_parquet(part.unit, source))
    else:
        documents = _jsonl_documents(part.unit, iter_lines(part.unit), source, policy)
    return documents if part.stride == 1 else itertools.islice(documents, part.offset, None, part.stride)


def read_unit(unit: str, source: Source, policy: ErrorPolicy) -> Iterator[dict]:
    """The documents of one file (or dataset) with a string `text` field."""
    return (document for document, _ in read_part(Part(unit), source, policy))


def _jsonl_documents(label: str, lines: Iterator[tuple[int, bytes]], source: Source,
                     policy: ErrorPolicy) -> Iterator[tuple[dict, bytes]]:
    """Parse JSONL lines into (document, line), each document with its text under `text`. One loop, no reader
    layered on another: mix spends a few microseconds of Python a document, and every generator a document passes
    through is a share of them."""
    for line_no, line in lines:
        record = parse_line(line, label, line_no, policy, require_text=False)
        if record is None:
            continue
        if source.text_field != "text":
            record["text"] = record.pop(source.text_field, None)
        if not isinstance(record.get("text"), str):
            policy.bad(BadInput(f"record has no string {source.text_field!r} field", label, line_no), "no text")
            continue
        yield record, line


def _read_parquet(path: str, source: Source) -> Iterator[dict]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    if source.text_field not in parquet.schema_arrow.names:
        raise BadInput(f"no column {source.text_field!r} (columns: {', '.join(parquet.schema_arrow.names)})", path)
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH):
        for row in batch.to_pylist():
            row["text"] = row.pop(source.text_field)
            yield row


def _read_hf(name: str, source: Source) -> Iterator[dict]:
    """A dataset from the local Hugging Face cache (nothing is downloaded: HF_DATASETS_OFFLINE applies)."""
    import datasets

    try:
        dataset = datasets.load_dataset(name, split=source.split)
    except Exception as err:  # datasets raises many types for "not cached"
        raise BadInput(f"source {source.name!r}: cannot load hf:{name} from the local cache ({err})") from err
    for row in dataset:
        row = dict(row)
        row["text"] = row.pop(source.text_field)
        yield row


def is_heldout(doc: dict, source: Source, fraction: float) -> bool:
    """Whether a document belongs to the held-out split: a stable hash of (source, id) under `fraction`.

    The split depends on nothing but the document, so it is the same in every phase and every run,
    and held-out documents never reach training.
    """
    if fraction <= 0:
        return False
    key = f"{source.name}\x00{doc.get('id') or doc['text']}".encode()
    bucket = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")
    return bucket < fraction * 2**64


def read_split(part: Part, source: Source, policy: ErrorPolicy, fraction: float,
               heldout: bool) -> Iterator[tuple[dict, Optional[bytes]]]:
    """read_part's (document, line) pairs of the training split (heldout=False) or of the held-out split."""
    if fraction <= 0:  # no held-out split: every document trains, and none needs hashing
        return iter(()) if heldout else read_part(part, source, policy)
    return ((doc, line) for doc, line in read_part(part, source, policy) if is_heldout(doc, source, fraction) == heldout)
