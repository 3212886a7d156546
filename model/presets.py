"""Model presets: the three published Granite 4.1 sizes, and small ones of the same architecture.

Every preset is a transformers `GraniteConfig` (model_type "granite", GraniteForCausalLM): dense
decoder, GQA, RoPE, SwiGLU, RMSNorm, tied embeddings, no biases, with Granite's multipliers. The
published presets reproduce IBM's exact parameter counts (a test checks them on the meta device).

Small presets derive everything from one dial, `depth` (nanochat's idea): hidden = 32·depth,
layers = depth, head_dim = 32, KV heads = a quarter of the query heads, SwiGLU width ≈ 3.125·hidden
(Granite's ratio), and Granite's multiplier rules: attention 1/head_dim, logits scaling hidden/256.
"""

from __future__ import annotations

from granite_cli.errors import BadInput

GRANITE_VOCAB = 100352


def _granite(hidden, layers, head_dim, heads, kv_heads, mlp, rope_theta, residual, logits) -> dict:
    return dict(hidden_size=hidden, num_hidden_layers=layers, head_dim=head_dim, num_attention_heads=heads,
                num_key_value_heads=kv_heads, intermediate_size=mlp, rope_theta=rope_theta, embedding_multiplier=12.0,
                attention_multiplier=1.0 / head_dim, residual_multiplier=residual, logits_scaling=logits)


PUBLISHED = {
    "granite-4.1-3b": _granite(2560, 40, 64, 40, 8, 8192, 1e7, 0.22, 10.0),
    "granite-4.1-8b": _granite(4096, 40, 128, 32, 8, 12800, 1e7, 0.22, 16.0),
    "granite-4.1-30b": _granite(4096, 64, 128, 32, 8, 32768, 5e7, 0.175, 16.0),
}
PUBLISHED_PARAMETERS = {"granite-4.1-3b": 3_402_836_480, "granite-4.1-8b": 8_380_551_168,
                        "granite-4.1-30b": 28_865_728_512}
SMALL_DEPTHS = {"tiny-2m": 4, "small-10m": 8, "base-50m": 16}
# A ~1B preset for GPU throughput checks: Granite proportions at hidden 2048.
GPU_PRESETS = {"granite-1b": _granite(2048, 20, 128, 16, 4, 6400, 1e4, 0.22, 8.0)}


def from_depth(depth: int) -> dict:
    """A small Granite-architecture model from one dial."""
    if depth < 1:
        raise BadInput("depth must be at least 1")
    hidden = 32 * depth
    heads = depth
    return _granite(hidden, depth, 32, heads, max(1, heads // 4), _round_up(int(3.125 * hidden), 32),
                    1e4, 0.22, hidden / 256)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def preset_names() -> list[str]:
    return [*SMALL_DEPTHS, *GPU_PRESETS, *PUBLISHED]


def preset_dims(name: str) -> dict:
    """The dims of a named preset, or of `depth-N`."""
    if name in PUBLISHED:
        return dict(PUBLISHED[name])
    if name in GPU_PRESETS:
        return dict(GPU_PRESETS[name])
    if name in SMALL_DEPTHS:
        return from_depth(SMALL_DEPTHS[name])
    if name.startswith("depth-") and name[6:].isdigit():
        return from_depth(int(name[6:]))
    raise BadInput(f"unknown model preset {name!r}: choose one of {', '.join(preset_names())}, or depth-N")


def build_config(name: str, vocab_size: int = GRANITE_VOCAB, max_position_embeddings: int = 131072,
                 bos_id: int | None = None, eos_id: int | None = None, pad_id: int | None = None):
    """A GraniteConfig for the preset; the vocabulary comes from the tokenizer the model will use."""
    from transformers import GraniteConfig

    dims = preset_dims(name)
    rope_theta = dims.pop("rope_theta")
    return GraniteConfig(vocab_size=vocab_size, max_position_embeddings=max_position_embeddings,
                         rope_parameters={"rope_type": "default", "rope_theta": rope_theta}, rms_norm_eps=1e-5,
                         tie_word_embeddings=True, attention_bias=False, mlp_bias=False, hidden_act="silu",
                         initializer_range=0.02, bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id,
                         architectures=["GraniteForCausalLM"], **dims)


def count_parameters(model) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
