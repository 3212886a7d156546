"""Loading a local Hugging Face tokenizer, with errors a user can act on."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from granite_cli.errors import BadInput


def load_tokenizer(path: str):
    """A fast tokenizer from a local directory (never the Hub: a missing path is bad input)."""
    directory = Path(path)
    if not directory.is_dir() or not any((directory / name).exists() for name in
                                         ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")):
        raise BadInput("not a tokenizer directory (expected tokenizer.json or tokenizer_config.json); "
                       "train one with `granite tokenize train`", path)
    try:
        tokenizer = _tokenizer_class(directory).from_pretrained(str(directory), local_files_only=True)
    except Exception as err:  # transformers raises OSError, ValueError, ... for unreadable tokenizers
        raise BadInput(f"cannot load tokenizer: {err}", path) from err
    if not getattr(tokenizer, "is_fast", False):
        raise BadInput("only fast (Rust) tokenizers are supported: the directory needs a tokenizer.json", path)
    return tokenizer


def _tokenizer_class(directory: Path):
    """The class AutoTokenizer would load the directory with. AutoTokenizer finds it by importing torch and every model
    family's code (5 s of `granite tokenize`'s 6 on the tiny recipe, and most of its memory); the plain Rust-backed class
    that `granite tokenize train` writes (and that checkpoints save it as) is imported directly (1.3 s, no torch). Any
    other class goes through AutoTokenizer."""
    try:
        named = json.loads((directory / "tokenizer_config.json").read_text()).get("tokenizer_class")
    except (OSError, ValueError, AttributeError):
        named = None
    if named == "TokenizersBackend":
        from transformers.tokenization_utils_tokenizers import TokenizersBackend

        return TokenizersBackend
    from transformers import AutoTokenizer

    return AutoTokenizer


def tokenizer_identity(tokenizer, path: str) -> dict:
    """What the shard manifest records to tie token ids to the exact tokenizer that made them."""
    serialized = tokenizer.backend_tokenizer.to_str()
    return {
        "path": str(Path(path).resolve()),
        "name": getattr(tokenizer, "name_or_path", path),
        "sha256": hashlib.sha256(serialized.encode()).hexdigest(),
        "vocab_size": len(tokenizer),
        "eos_token": tokenizer.eos_token,
        "eos_id": tokenizer.eos_token_id,
    }


def load_tokenizer_checked(directory: Path) -> dict:
    """The tokenizer's hash (to match against shards) and per-token byte lengths (for bits per byte)."""
    tok = load_tokenizer(str(directory))
    identity = tokenizer_identity(tok, str(directory))
    return {**identity, "byte_lengths": token_byte_lengths(tok), "eos_id": tok.eos_token_id,
            "pad_id": tok.pad_token_id, "size": len(tok)}


def token_byte_lengths(tok):
    """UTF-8 bytes each token id stands for (0 for special tokens): the denominator of bits per byte."""
    import numpy as np

    lengths = np.zeros(len(tok), dtype=np.int64)
    byte_level = json.loads(tok.backend_tokenizer.to_str()).get("decoder", {}) or {}
    special = set(tok.all_special_ids) | {i for i, t in tok.added_tokens_decoder.items() if t.special}
    for token_id, token in enumerate(tok.convert_ids_to_tokens(list(range(len(tok))))):
        if token_id in special or token is None:
            continue
        # byte-level BPE maps each byte to one printable character, so characters count bytes
        lengths[token_id] = len(token) if byte_level.get("type") == "ByteLevel" else len(tok.decode([token_id]).encode())
    return lengths
