"""Token shard directories (docs/design.md, contract 4): what tokenize writes and the trainers read.

A directory holds `manifest.json` and numbered pairs of files:
- `shard-NNNNN.tokens`: flat token ids, uint16 when the vocabulary fits, else uint32;
- `shard-NNNNN.index`: uint64 end offset of each document inside the shard (its EOS included).
Documents never span shards. The manifest records the format version, the tokenizer's identity
and hash, dtype, EOS id, per-shard and per-source token and document counts, sha256 checksums
and the command that made it, so `granite tokenize inspect` can verify a directory on its own.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from granite_cli.errors import BadInput

FORMAT = "granite-token-shards"
VERSION = 1
MANIFEST = "manifest.json"
INDEX_DTYPE = np.uint64


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def shard_names(number: int) -> tuple[str, str]:
    return f"shard-{number:05d}.tokens", f"shard-{number:05d}.index"


@dataclass
class OpenShard:
    number: int
    tokens_file: object
    index_file: object
    tokens_hash: object = field(default_factory=hashlib.sha256)
    index_hash: object = field(default_factory=hashlib.sha256)
    tokens: int = 0
    documents: int = 0
    sources: Counter = field(default_factory=Counter)
    source_docs: Counter = field(default_factory=Counter)


class ShardWriter:
    """Appends documents (token arrays, EOS included) to shards of about `shard_tokens` tokens each."""

    def __init__(self, directory: Path, dtype: np.dtype, shard_tokens: int, first_shard: int = 0):
        self.directory = directory
        self.dtype = dtype
        self.shard_tokens = shard_tokens
        self.next_number = first_shard
        self.current: OpenShard | None = None

    def add_batch(self, flat: np.ndarray, ends: np.ndarray, sources: list[str]) -> list[tuple[int, dict]]:
        """Write a batch given as one flat array and each document's end offset in it.

        Returns (documents of the batch consumed so far, shard entry) for each shard closed, so
        the caller can checkpoint resume state exactly at shard boundaries.
        """
        closed = []
        start_doc, start_tok = 0, 0
        while start_doc < len(ends):
            shard = self.current or self._open()
            room = self.shard_tokens - shard.tokens
            # every document that starts while the shard has room goes in (at least one per shard)
            starts = np.concatenate(([start_tok], ends[start_doc:-1])) - start_tok
            fits = int(np.searchsorted(starts, room, side="left"))
            stop_doc = start_doc + max(fits, 1)
            stop_tok = int(ends[stop_doc - 1])
            self._write(shard, flat[start_tok:stop_tok], ends[start_doc:stop_doc] - start_tok, sources[start_doc:stop_doc])
            start_doc, start_tok = stop_doc, stop_tok
            if shard.tokens >= self.shard_tokens:
                closed.append((start_doc, self.close()))
        return closed

    def _open(self) -> OpenShard:
        tokens_name, index_name = shard_names(self.next_number)
        self.current = OpenShard(self.next_number, open(self.directory / tokens_name, "wb"),
                                 open(self.directory / index_name, "wb"))
        self.next_number += 1
        return self.current

    def _write(self, shard: OpenShard, tokens: np.ndarray, local_ends: np.ndarray, sources: list[str]) -> None:
        token_bytes = tokens.astype(self.dtype, copy=False).tobytes()
        index_bytes = (local_ends + shard.tokens).astype(INDEX_DTYPE).tobytes()
        shard.tokens_file.write(token_bytes)
        shard.index_file.write(index_bytes)
        shard.tokens_hash.update(token_bytes)
        shard.index_hash.update(index_bytes)
        lengths = np.diff(np.concatenate(([0], local_ends)))
        for source, length in zip(sources, lengths.tolist()):
            shard.sources[source] += length
            shard.source_docs[source] += 1
        shard.tokens += len(tokens)
        shard.documents += len(local_ends)

    def close(self) -> dict | None:
        """Close the open shard and return its manifest entry (None when no shard is open)."""
        shard, self.current = self.current, None
        if shard is None:
            return None
        shard.tokens_file.close()
        shard.index_file.close()
        tokens_name, index_name = shard_names(shard.number)
        return {"tokens_file": tokens_name, "index_file": index_name, "tokens": shard.tokens,
                "documents": shard.documents, "sha256_tokens": shard.tokens_hash.hexdigest(),
                "sha256_index": shard.index_hash.hexdigest(),
                "sources": {s: {"tokens": shard.sources[s], "documents": shard.source_docs[s]} for s in sorted(shard.sources)}}


def build_manifest(shards: list[dict], tokenizer: dict, dtype: np.dtype, extra: dict) -> dict:
    sources: dict[str, dict] = {}
    for shard in shards:
        for name, counts in shard["sources"].items():
            total = sources.setdefault(name, {"tokens": 0, "documents": 0})
            total["tokens"] += counts["tokens"]
            total["documents"] += counts["documents"]
    return {"format": FORMAT, "version": VERSION, "tokenizer": tokenizer, "dtype": dtype.name,
            "eos_id": tokenizer["eos_id"], "tokens": sum(s["tokens"] for s in shards),
            "documents": sum(s["documents"] for s in shards), "sources": sources, "shards": shards, **extra}


class ShardSet:
    """Read access to a finished shard directory (memory-mapped; nothing is loaded whole)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        manifest_path = self.directory / MANIFEST
        if not manifest_path.exists():
            raise BadInput("not a token shard directory (no manifest.json); make one with `granite tokenize`", str(directory))
        try:
            self.manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as err:
            raise BadInput(f"manifest.json is not valid JSON: {err}", str(manifest_path)) from err
        if self.manifest.get("format") != FORMAT or self.manifest.get("version") != VERSION:
            raise BadInput(f"unsupported shard format {self.manifest.get('format')} v{self.manifest.get('version')}", str(directory))
        self.dtype = np.dtype(self.manifest["dtype"])

    @property
    def shards(self) -> list[dict]:
        return self.manifest["shards"]

    def tokens(self, shard: int) -> np.ndarray:
        return np.memmap(self.directory / self.shards[shard]["tokens_file"], dtype=self.dtype, mode="r")

    def ends(self, shard: int) -> np.ndarray:
        return np.fromfile(self.directory / self.shards[shard]["index_file"], dtype=INDEX_DTYPE)

    def document(self, shard: int, number: int) -> np.ndarray:
        ends = self.ends(shard)
        start = int(ends[number - 1]) if number else 0
        return np.asarray(self.tokens(shard)[start:int(ends[number])])

    def check_sizes(self) -> None:
        """A cheap structural check before training: every file exists with the size the manifest implies."""
        for entry in self.shards:
            tokens, index = self.directory / entry["tokens_file"], self.directory / entry["index_file"]
            if not tokens.exists() or not index.exists():
                raise BadInput(f"{entry['tokens_file']} or {entry['index_file']} is missing", str(self.directory))
            if tokens.stat().st_size != entry["tokens"] * self.dtype.itemsize or \
                    index.stat().st_size != entry["documents"] * np.dtype(INDEX_DTYPE).itemsize:
                raise BadInput(f"{entry['tokens_file']}: size does not match the manifest (truncated or corrupt?); "
                               f"`granite tokenize inspect` checks it in full", str(self.directory))

    def verify(self) -> list[str]:
        """Every mismatch between the files and the manifest (checksums, counts, index bounds)."""
        problems = []
        for number, entry in enumerate(self.shards):
            for key, name in (("sha256_tokens", entry["tokens_file"]), ("sha256_index", entry["index_file"])):
                path = self.directory / name
                if not path.exists():
                    problems.append(f"{name}: missing")
                    continue
                if _sha256(path) != entry[key]:
                    problems.append(f"{name}: checksum does not match the manifest")
            if problems:
                continue
            tokens, ends = self.tokens(number), self.ends(number)
            if len(tokens) != entry["tokens"]:
                problems.append(f"{entry['tokens_file']}: {len(tokens)} tokens, manifest says {entry['tokens']}")
            if len(ends) != entry["documents"]:
                problems.append(f"{entry['index_file']}: {len(ends)} documents, manifest says {entry['documents']}")
            if len(ends) and (int(ends[-1]) != len(tokens) or np.any(np.diff(ends.astype(np.int64)) <= 0)):
                problems.append(f"{entry['index_file']}: document offsets are not increasing up to the token count")
            eos_positions = ends.astype(np.int64) - 1
            if len(ends) and np.any(np.asarray(tokens[eos_positions]) != self.manifest["eos_id"]):
                problems.append(f"{entry['tokens_file']}: a document does not end with EOS")
        if sum(s["tokens"] for s in self.shards) != self.manifest["tokens"]:
            problems.append("manifest: total tokens differ from the sum over shards")
        return problems


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
