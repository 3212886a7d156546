"""A job-array worker's share of a set of record files: what it reads, so that N workers read the data once.

Plain JSONL files are split into N byte ranges aligned to line starts; compressed (and Parquet) files cannot be
entered in the middle, so they are dealt out whole by size. With fewer such files than workers, a Parquet file with at
least N row groups is dealt out by row group; otherwise every worker reads each file and keeps every N-th line (or
row): the file is decompressed N times, but each record is parsed by one worker only. mix reads its sources this way,
tokenize and filter their input files.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Iterator, Optional

from granite_cli.errors import BadInput
from granite_cli.data.records import ErrorPolicy, check_record_file, iter_lines, iter_range_lines, parse_line


@dataclass(frozen=True)
class Part:
    """What one worker reads of one unit (a file, or `hf:NAME`): all of it, bytes [start, end) of a plain JSONL file,
    every `stride`-th row group of a Parquet file starting at the `offset`-th (`row_groups`), or else every
    `stride`-th line (row) starting at the `offset`-th (a file it cannot split)."""

    unit: str
    start: int = 0
    end: Optional[int] = None
    stride: int = 1
    offset: int = 0
    row_groups: bool = False

    def key(self) -> str:
        """Names the part (token-count cache keys, reports)."""
        if self.end is not None:
            return f"{self.unit}[{self.start}:{self.end}]"
        if self.stride == 1:
            return self.unit
        what = "row groups " if self.row_groups else ""
        return f"{self.unit}[{what}{self.offset}::{self.stride}]"


def worker_parts(units: list[str], index: int, count: int) -> list[Part]:
    """Worker `index` of `count`'s parts of the units; the parts of all workers together hold each record once."""
    for unit in units:
        if not unit.startswith("hf:"):
            check_record_file(unit)
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
    else:  # a Parquet file with a row group for every worker is dealt out by row group; the rest by line or row
        parts += [Part(u, stride=count, offset=index, row_groups=_row_groups(u) >= count) for u in whole]
    return parts


def _row_groups(unit: str) -> int:
    """A Parquet file's row groups (read from its footer); 0 for anything else."""
    return open_parquet(unit).metadata.num_row_groups if unit.endswith(".parquet") else 0


def open_parquet(path: str):
    """A Parquet file's reader; a file that is not one is bad input, not a traceback."""
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise BadInput(f"cannot read it as Parquet ({err})", path) from err


def _size(unit: str) -> int:
    return os.path.getsize(unit) if os.path.exists(unit) else 0


def part_lines(part: Part) -> tuple[str, Iterator[tuple[int, bytes]]]:
    """The name errors give a JSONL part, and its (line number, line) pairs. A strided part skips the other workers'
    lines before anything parses them; its line numbers are the file's."""
    if part.end is not None:
        return f"{part.unit}[bytes {part.start}:{part.end}]", iter_range_lines(part.unit, part.start, part.end)
    lines = iter_lines(part.unit)
    return part.unit, lines if part.stride == 1 else itertools.islice(lines, part.offset, None, part.stride)


def part_records(part: Part, policy: ErrorPolicy, require_text: bool) -> Iterator[dict]:
    """The records of a JSONL part (blank lines skipped, bad ones to the error policy)."""
    label, lines = part_lines(part)
    for line_no, line in lines:
        record = parse_line(line, label, line_no, policy, require_text)
        if record is not None:
            yield record


def worker_records(paths: list[str], policy: ErrorPolicy, index: int, count: int,
                   require_text: bool = False) -> Iterator[dict]:
    """The records of worker `index` of `count`'s part of the record files (all of them when count is 1)."""
    parts = worker_parts(paths, index, count)
    return itertools.chain.from_iterable(part_records(part, policy, require_text) for part in parts)
