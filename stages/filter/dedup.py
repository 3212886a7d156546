"""Global deduplication of chat samples: exact (a hash of tools, documents and messages) and near (MinHash LSH).

Near duplicates are found over what the assistant says, as word 5-gram shingles, with 112 MinHash
multiply-shift hash functions split into 14 bands of 8 rows (datatrove's defaults): two samples whose shingle sets
have Jaccard similarity s share a band with probability 1 - (1 - s^8)^14, which is 0.5 at s ≈ 0.69,
0.92 at s = 0.8 and 0.05 at s = 0.5. Answers shorter than `min_words` words are only
exact-deduplicated: a handful of shingles makes MinHash noise, and short canned answers ("I am
Granite, ...") legitimately follow many different prompts.

Memory: the exact index holds a 16-byte digest per kept sample and the near index one 64-bit key per
band (14 per kept sample), in Python dicts: about 0.75 KB per kept sample all told (measured by
benchmarks/bench_filter.py), so a run over 4M samples needs about 3 GB.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
import orjson
import xxhash

_WORD = re.compile(r"\w+")


def exact_key(sample: dict) -> bytes:
    """The digest of the sample's tools, documents and messages (key order does not matter)."""
    content = {k: sample.get(k) for k in ("tools", "documents", "messages")}
    return hashlib.blake2b(orjson.dumps(content, option=orjson.OPT_SORT_KEYS), digest_size=16).digest()


class ExactIndex:
    def __init__(self):
        self.seen: dict[bytes, str] = {}

    def first_copy(self, sample: dict) -> str | None:
        """The id of an earlier identical sample, or None (and this one is remembered)."""
        key = exact_key(sample)
        earlier = self.seen.get(key)
        if earlier is None:
            self.seen[key] = str(sample.get("id"))
        return earlier


class MinHashIndex:
    def __init__(self, ngram: int = 5, bands: int = 14, rows: int = 8, min_words: int = 15, seed: int = 1):
        self.ngram, self.bands, self.rows, self.min_words = ngram, bands, rows, min_words
        rng = np.random.default_rng(seed)
        permutations = bands * rows
        self.a = rng.integers(0, 1 << 64, permutations, dtype=np.uint64, endpoint=False) | np.uint64(1)  # odd multipliers
        self.b = rng.integers(0, 1 << 64, permutations, dtype=np.uint64, endpoint=False)
        self.buckets: list[dict[int, str]] = [{} for _ in range(bands)]

    def signature(self, text: str) -> np.ndarray | None:
        """The MinHash signature of the text's word n-grams, or None when it is too short to judge."""
        words = _WORD.findall(text.lower())
        if len(words) < max(self.min_words, self.ngram):
            return None
        shingles = {" ".join(words[i:i + self.ngram]) for i in range(len(words) - self.ngram + 1)}
        hashes = np.fromiter((xxhash.xxh64_intdigest(s.encode()) for s in shingles), dtype=np.uint64, count=len(shingles))
        # multiply-shift hashing: (a*h + b) mod 2^64 (numpy's uint64 wraps), keep the high 32 bits
        with np.errstate(over="ignore"):
            return ((hashes[:, None] * self.a + self.b) >> np.uint64(32)).min(axis=0)

    def band_keys(self, signature: np.ndarray) -> list[int]:
        return [xxhash.xxh64_intdigest(band.tobytes()) for band in signature.reshape(self.bands, self.rows)]

    def first_copy(self, sample_id: str, text: str) -> str | None:
        """The id of an earlier near-duplicate, or None (and this one is remembered)."""
        signature = self.signature(text)
        if signature is None:
            return None
        keys = self.band_keys(signature)
        for bucket, key in zip(self.buckets, keys):
            if key in bucket:
                return bucket[key]
        for bucket, key in zip(self.buckets, keys):
            bucket[key] = sample_id
        return None
