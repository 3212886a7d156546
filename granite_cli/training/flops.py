"""Model FLOPs per token and the device's measured peak, for MFU.

MFU = achieved model FLOP/s ÷ peak FLOP/s. Model FLOPs per token follow the PaLM appendix:
6·N for the weights a token passes through (the tied output projection included) plus 12·L·h·T for
attention over a T-token context. The peak is measured on the device at start (a large matmul in
the training precision) unless given with --peak-tflops; no GPU figure is hard-coded.
"""

from __future__ import annotations

import time


def flops_per_token(config, seq_len: int) -> float:
    h, layers = config.hidden_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q = config.num_attention_heads * head_dim
    kv = config.num_key_value_heads * head_dim
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * config.intermediate_size
    weights = layers * per_layer + config.vocab_size * h  # output projection (tied or not) is a matmul per token
    attention = 12 * layers * q * seq_len  # QK^T and AV, forward and backward (PaLM counts the full T)
    return 6 * weights + attention


def measure_peak_flops(device, dtype, seconds: float = 0.5) -> float:
    """Sustained matmul FLOP/s on this device and dtype (the best of a few timed rounds)."""
    import torch

    size = 4096 if device.type == "cuda" else 1024
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == 0.0:
        _sync(device)
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        _sync(device)
        best = max(best, 4 * 2 * size**3 / (time.perf_counter() - start))
    return best


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
