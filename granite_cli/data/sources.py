"""Reading a recipe source's documents: local JSONL/.zst/.gz/Parquet globs or a cached HF dataset.

Every reader streams: Parquet by record batch, datasets by iteration, JSONL by line, so memory stays
bounded whatever the size of a source.
"""

from __future__ import annotations

import hashlib
from typing import Iterator

from granite_cli.errors import BadInput
from granite_cli.recipe import Source
from granite_cli.data.records import ErrorPolicy, read_records

PARQUET_BATCH = 1024


def source_units(source: Source) -> list[str]:
    """The units a source is read in, in a fixed order: its files, or its HF dataset."""
    if source.hf:
        return [f"hf:{source.hf}"]
    files = source.files()
    if not files:
        raise BadInput(f"source {source.name!r}: no file matches {', '.join(source.paths)}")
    return files


def read_unit(unit: str, source: Source, policy: ErrorPolicy) -> Iterator[dict]:
    """Yield the documents of one file (or dataset) with a string `text` field."""
    if unit.startswith("hf:"):
        yield from _read_hf(unit[3:], source)
    elif unit.endswith(".parquet"):
        yield from _read_parquet(unit, source)
    else:
        for record in read_records([unit], policy, require_text=source.text_field == "text"):
            if source.text_field != "text":
                record["text"] = record.pop(source.text_field, None)
                if not isinstance(record["text"], str):
                    policy.bad(BadInput(f"record has no string {source.text_field!r} field", unit), "no text")
                    continue
            yield record


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


def read_split(unit: str, source: Source, policy: ErrorPolicy, fraction: float, heldout: bool) -> Iterator[dict]:
    """The documents of one unit in the training split (heldout=False) or the held-out split."""
    for doc in read_unit(unit, source, policy):
        if is_heldout(doc, source, fraction) == heldout:
            yield doc
