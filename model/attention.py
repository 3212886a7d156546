"""Attention that runs in fp32 inside a CPU bf16 autocast.

Under bf16 autocast the projections run in bf16, so the query, key and value reach attention in bf16. On CPU,
attention is faster in fp32 while the matmuls around it gain from bf16: on small-10m (benchmarks/bench_pretrain.py,
2-core machine) a bf16 + torch.compile step went from 7.3K to 8.5K tokens/s with this, eager bf16 unchanged.
`sdpa_fp32` is transformers' own SDPA attention with its inputs cast up and autocast off inside it, its output cast
back, so its numbers are at least as exact as bf16 SDPA's. It is registered under its own name in transformers'
attention and mask registries, so a model uses it by `set_attn_implementation`; the name is never written into a
checkpoint's config.json (transformers does not serialise the implementation): the saved model loads with SDPA.
"""

from __future__ import annotations

SDPA_FP32 = "sdpa_fp32"


def sdpa_fp32_forward(module, query, key, value, attention_mask, **kwargs):
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    with torch.autocast(query.device.type, enabled=False):
        out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask, **kwargs)
    return out.to(query.dtype), weights


def register() -> str:
    """Make `sdpa_fp32` known to transformers (idempotent) and return its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(SDPA_FP32, sdpa_fp32_forward)
    AttentionMaskInterface.register(SDPA_FP32, sdpa_mask)
    return SDPA_FP32


def use_fp32_attention(model, precision: str, device) -> bool:
    """Switch a model that trains under CPU bf16 autocast to fp32 attention; other settings keep their attention.
    Returns whether it switched."""
    if precision != "bf16" or device.type != "cpu" or model.config._attn_implementation != "sdpa":
        return False
    model.set_attn_implementation(register())
    return True
