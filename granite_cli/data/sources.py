"""Reading a recipe source's documents: local JSONL/.zst/.gz/Parquet globs or a cached HF dataset.

Every reader streams: Parquet and datasets by Arrow batch, JSONL by line, so memory stays bounded whatever the size
of a source.

A job-array worker reads only its part of each source (granite_cli/data/parts.py): 1/N of every plain JSONL file as
a byte range aligned to line starts, and whole compressed (or Parquet) files dealt out by size. A source with fewer
unsplittable files than workers is the exception: a Parquet file with at least N row groups is dealt out by row
group, and otherwise each worker decompresses those files whole and keeps every N-th line (or row), so they are read
N times though each document is parsed once (split such a source into at least N files, or leave it uncompressed).
A cached HF dataset is one unit: each worker converts every N-th row of it.
"""

from __future__ import annotations

import hashlib
from typing import Iterator, Optional

from granite_cli.errors import BadInput
from granite_cli.recipe import Source
from granite_cli.data.parts import Part, open_parquet, part_lines
from granite_cli.data.records import ErrorPolicy, parse_line

ROW_BATCH = 1024  # Parquet and dataset rows converted to Python at a time


def source_units(source: Source) -> list[str]:
    """The units a source is read in, in a fixed order: its files, or its HF dataset."""
    if source.hf:
        return [f"hf:{source.hf}"]
    files = source.files()
    if not files:
        raise BadInput(f"source {source.name!r}: no file matches {', '.join(source.paths)}")
    return files


def read_part(part: Part, source: Source, policy: ErrorPolicy) -> Iterator[tuple[dict, Optional[bytes]]]:
    """(document, the JSONL line it was parsed from) for each document of one worker's part of a unit. The line
    lets mix write a document out without serialising it again; Parquet and datasets rows have none (None)."""
    if part.unit.startswith("hf:"):
        batches = _hf_batches(part.unit[3:], source)
    elif part.unit.endswith(".parquet"):
        batches = _parquet_batches(part, source)
    else:
        return _jsonl_documents(*part_lines(part), source, policy)
    stride, offset = (1, 0) if part.row_groups else (part.stride, part.offset)  # a worker's row groups are all its own
    return ((row, None) for row in _strided_rows(batches, source, stride, offset))


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


def _parquet_batches(part: Part, source: Source) -> Iterator:
    """A Parquet file's rows as Arrow batches: only the part's row groups where it is dealt out by row group."""
    parquet = open_parquet(part.unit)
    if source.text_field not in parquet.schema_arrow.names:
        names = ", ".join(parquet.schema_arrow.names)
        raise BadInput(f"no column {source.text_field!r} (columns: {names})", part.unit)
    groups = list(range(part.offset, parquet.metadata.num_row_groups, part.stride)) if part.row_groups else None
    return parquet.iter_batches(batch_size=ROW_BATCH, row_groups=groups)


def _hf_batches(name: str, source: Source) -> Iterator:
    """A dataset from the local Hugging Face cache (nothing is downloaded: HF_DATASETS_OFFLINE applies), as Arrow
    tables of rows."""
    import datasets

    try:
        dataset = datasets.load_dataset(name, split=source.split)
    except Exception as err:  # datasets raises many types for "not cached"
        raise BadInput(f"source {source.name!r}: cannot load hf:{name} from the local cache ({err})") from err
    if source.text_field not in dataset.column_names:
        raise BadInput(f"source {source.name!r}: hf:{name} has no column {source.text_field!r} (columns: "
                       f"{', '.join(dataset.column_names)})")
    return dataset.with_format("arrow").iter(batch_size=ROW_BATCH)


def _strided_rows(batches: Iterator, source: Source, stride: int, offset: int) -> Iterator[dict]:
    """Rows offset, offset + stride, ... of a stream of Arrow batches, each with its text under `text`. Only those
    rows become Python objects, so a job-array worker given a file or dataset it cannot split converts its own."""
    start = 0
    for batch in batches:
        mine = batch if stride == 1 else batch.take(list(range((offset - start) % stride, len(batch), stride)))
        start += len(batch)
        for row in mine.to_pylist():
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
