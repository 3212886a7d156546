"""Keep freed host memory for reuse: a step on the CPU frees and allocates the same large tensors every time.

glibc's malloc hands an allocation above its mmap threshold (128 KB at first, rising only to 32 MB) its own
mapping and gives it back to the kernel when it is freed, and it trims the top of its heap past 128 KB of free
space. Every step's activations, gradients and logits chunks (up to 256 MB) are then faulted in page by page, each
page zeroed by the kernel, step after step. `granite pretrain --profile` showed it: the output projection's
log-softmax took about four times as long inside a training step as on its own, and elementwise ops likewise.
Raising both thresholds to 1 GiB keeps that memory in the heap: the process holds on to what its largest step
used (which it needs again at the next step) instead of returning it.

On the 2-core development machine (2026-12-04), `granite pretrain` in fp32 ran at 1.32x the tokens/s of glibc's
defaults for tiny-2m (11.95K against 9.05K, three alternating runs each) and 1.12x for small-10m; bf16 with
torch.compile gained nothing beyond the noise of two runs. benchmarks/bench_pretrain.py measures it (README).

A process with MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_ in its environment keeps what it was given, and
GRANITE_KEEP_FREED_MEMORY=0 keeps glibc's defaults. Elsewhere than glibc (musl, macOS) nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
KEEP_BYTES = 1 << 30


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; True when they were set."""
    if os.environ.get("GRANITE_KEEP_FREED_MEMORY", "1") == "0":
        return False
    if any(name in os.environ for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_BYTES))
