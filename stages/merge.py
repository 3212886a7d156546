"""granite merge: one checkpoint from several of one architecture and tokenizer (phase 5 merges each context stage
with its parent; any checkpoints can be merged the same way).

    granite merge A B [C ...] --method linear --weight 0.15 -o OUT

The first checkpoint's config, tokenizer and chat template are the merged model's. Mismatched tensor names or
shapes, or another tokenizer, are refused with exit 2 before anything is written. The merged checkpoint's lineage
is the first model's, plus a `merge` entry naming every parent (path, weights digest, weight).
"""

from __future__ import annotations

from pathlib import Path

import typer

from granite_cli.console import console
from granite_cli.errors import BadInput


def merge_command(
    checkpoints: list[str] = typer.Argument(..., help="Two or more checkpoint directories; the first gives the config."),
    output: str = typer.Option(..., "--output", "-o", help="The merged checkpoint's directory."),
    method: str = typer.Option("linear", "--method", help="linear (weighted average), slerp (two models), or ties, "
                                                          "dare_ties, dare_linear (mergekit: the first model is the base)."),
    density: float = typer.Option(1.0, "--density", help="ties/dare: the share of each task vector kept."),
    weight: str = typer.Option(None, "--weight", help="The first model's weight (the rest share what is left equally), "
                                                      "or one weight per model separated by commas. Default: equal."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output directory."),
) -> None:
    """Merge checkpoints of one architecture (linear, SLERP, or TIES / DARE through mergekit), with lineage naming every parent."""
    import torch

    from model.checkpoint import load_model, read_lineage, save_checkpoint
    from model.merging import MERGEKIT_METHODS, METHODS, compatible, merged_state, parents_entry

    directories = [Path(c) for c in checkpoints]
    if len(directories) < 2:
        raise BadInput("merge takes two or more checkpoints")
    if method not in METHODS + MERGEKIT_METHODS:
        raise BadInput(f"--method must be one of {', '.join(METHODS + MERGEKIT_METHODS)}")
    if not 0 < density <= 1:
        raise BadInput("--density must be in (0, 1]")
    weights = parse_weights(weight, len(directories))
    out = Path(output)
    if out.exists() and not overwrite:
        raise BadInput("the output already exists; pass --overwrite to replace it", str(out))
    states = compatible(directories)
    merged = merged_state(directories, states, method, weights, density)
    config = load_model(directories[0], dtype=torch.float32).config
    save_checkpoint(out, merged, config, directories[0],
                    read_lineage(directories[0]) + [parents_entry(directories, method, weights, {"density": density})])
    console.print(f"wrote [bold]{out}[/]: {method} merge of {len(directories)} checkpoints, weights "
                  f"{', '.join(f'{w:g}' for w in weights)}")


def parse_weights(text, count: int) -> list[float]:
    if text is None:
        return [1 / count] * count
    try:
        given = [float(w) for w in text.split(",")]
    except ValueError:
        raise BadInput(f"--weight takes numbers separated by commas, not {text!r}") from None
    if len(given) == 1 and 0 <= given[0] <= 1:
        return [given[0]] + [(1 - given[0]) / (count - 1)] * (count - 1)
    if len(given) != count or any(w < 0 for w in given) or abs(sum(given) - 1) > 1e-6:
        raise BadInput(f"--weight: one weight, or {count} non-negative weights summing to 1 (got {text!r})")
    return given
