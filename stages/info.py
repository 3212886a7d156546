"""`granite info CKPT`: a checkpoint's architecture, size, lineage and last metrics."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from granite_cli.console import console
from granite_cli.errors import BadInput


def info_command(checkpoint: str = typer.Argument(..., help="Checkpoint directory (ours or any local HF model).")) -> None:
    """Print a checkpoint's architecture, parameter count, tokenizer, lineage and last metrics."""
    from granite_cli.recipe import format_count

    directory = Path(checkpoint)
    config_path = directory / "config.json"
    if not config_path.exists():
        raise BadInput("not a checkpoint directory (no config.json)", checkpoint)
    config = json.loads(config_path.read_text())
    from model.checkpoint import check_weights, read_lineage

    check_weights(directory)
    params = parameter_count(config)
    console.print(f"[bold]{checkpoint}[/]: {config.get('model_type')} ({', '.join(config.get('architectures') or [])}), "
                  f"{format_count(params)} parameters")
    dims = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
            "intermediate_size", "vocab_size", "max_position_embeddings", "tie_word_embeddings", "embedding_multiplier",
            "attention_multiplier", "residual_multiplier", "logits_scaling")
    console.print("  " + ", ".join(f"{k}={config[k]}" for k in dims if k in config))
    console.print(f"  rope: {config.get('rope_parameters')}")
    lineage_path = directory / "lineage.json"
    if not lineage_path.exists():
        console.print("  no lineage.json: not made by granite")
        return
    lineage = read_lineage(directory)
    table = Table(title="lineage", title_justify="left")
    for column in ("#", "stage", "phase", "tokens", "steps", "loss", "val loss", "val bpb", "finished"):
        table.add_column(column)
    for number, entry in enumerate(lineage, start=1):
        m, a = entry.get("metrics", {}), entry.get("arguments", {})
        table.add_row(str(number), str(entry.get("stage", "")), str(a.get("phase", "")), format_count(m.get("tokens", 0)),
                      str(m.get("steps", "")), _num(m.get("loss")), _num(m.get("val_loss")), _num(m.get("val_bpb")),
                      entry.get("finished", ""))
    console.print(table)
    previous = None
    for number, entry in enumerate(lineage, start=1):
        machine = entry.get("machine")
        if isinstance(machine, dict) and machine != previous:  # where it changes: other last bits for the same inputs
            previous = machine
            console.print(f"  #{number} ran on {describe_machine(previous)}")


def describe_machine(info: dict) -> str:
    """One line: torch, the CPU, its kernels' instruction set and caches, threads, and the GPU."""
    caches = f", caches {info['cpu_caches']}" if info.get("cpu_caches") else ""
    line = f"torch {info.get('torch', '?')}, {info.get('cpu', '?')}, {info.get('cpu_capability', '?')} kernels{caches}, " \
           f"{info.get('threads', '?')} threads"
    return line + (f", {info['gpu']} (CUDA {info.get('cuda')})" if "gpu" in info else "")


def parameter_count(config: dict) -> int:
    """Parameters of a Granite/Llama-style config, computed from its dims (no weights loaded)."""
    h, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    head_dim = config.get("head_dim") or h // config["num_attention_heads"]
    q, kv = config["num_attention_heads"] * head_dim, config["num_key_value_heads"] * head_dim
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * config["intermediate_size"] + 2 * h
    embeddings = vocab * h * (1 if config.get("tie_word_embeddings", True) else 2)
    return layers * per_layer + embeddings + h


def _num(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else ""
