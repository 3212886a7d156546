"""RoPE for a longer context, written the way transformers reads it (`config.rope_parameters`), so an extended
checkpoint runs at its new length in plain transformers.

- theta (the recipe's way, and the default): raise `rope_theta` so the slowest rotation still turns less than once
  over the new length. The recipe gives theta per stage; without one, the NTK-aware rule
  theta' = theta * s ** (d / (d - 2)) with s = new length / old length and d the head dimension (what "NTK-aware
  scaled RoPE" and dynamic NTK use), which stretches the lowest frequency by exactly s.
- yarn: YaRN's interpolation by frequency band with attention temperature, factor s over the old length.
- linear: position interpolation (positions divided by s).
- dynamic: dynamic NTK, theta scaled at run time once a sequence passes the old length.

`max_position_embeddings` becomes the new length (for dynamic it stays the old one: the scaling starts past it).
"""

from __future__ import annotations

from typing import Optional

METHODS = ("theta", "yarn", "linear", "dynamic")


def ntk_theta(theta: float, old_length: int, new_length: int, head_dim: int) -> float:
    return theta * (new_length / old_length) ** (head_dim / (head_dim - 2))


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def extended_rope(config, old_length: int, new_length: int, method: str = "theta", theta: Optional[float] = None) -> dict:
    """The new `rope_parameters` (and sets them, with max_position_embeddings, on `config`)."""
    if method not in METHODS:
        raise ValueError(f"rope method must be one of {', '.join(METHODS)}")
    current = dict(config.rope_parameters or {})
    base = float(current.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
    factor = new_length / old_length
    if method == "theta":
        parameters = {"rope_type": "default", "rope_theta": theta or ntk_theta(base, old_length, new_length, head_dim(config))}
    elif method == "yarn":
        parameters = {"rope_type": "yarn", "rope_theta": base, "factor": factor, "original_max_position_embeddings": old_length}
    else:
        parameters = {"rope_type": method, "rope_theta": base, "factor": factor}
    config.rope_parameters = parameters
    config.max_position_embeddings = old_length if method == "dynamic" else new_length
    return parameters


def trained_length(lineage: list[dict]) -> Optional[int]:
    """The longest context a checkpoint was trained at: its stages' `length` (extend-context) or `seq_len`."""
    lengths = [entry.get("arguments", {}).get("length") or entry.get("arguments", {}).get("seq_len") for entry in lineage]
    return max((n for n in lengths if isinstance(n, int)), default=None)
