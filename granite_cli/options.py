"""Typer plumbing shared by the stages: a group with a default subcommand, and common options."""

from __future__ import annotations

import os
from typing import Optional

import typer
from typer.core import TyperGroup


class DefaultCommandGroup(TyperGroup):
    """A command group that runs its `run` subcommand when the first word is not a subcommand.

    This gives `granite tokenize FILE ...` (the common path) next to `granite tokenize train ...`.
    """

    default_command = "run"

    def parse_args(self, ctx, args):
        first = args[0] if args else None
        if first not in self.commands and first not in ("--help", "-h"):
            args.insert(0, self.default_command)
        return super().parse_args(ctx, args)


def env_int(name: str) -> Optional[int]:
    value = os.environ.get(name)
    return int(value) if value and value.isdigit() else None


RecipeOption = typer.Option(None, "--recipe", "-r", help="Packaged recipe name (tiny, granite-4.1) or a TOML file. Default: tiny.")
RunDirOption = typer.Option(None, "--run-dir", help="Where default inputs and outputs live. Default: the recipe's run_dir (runs/<recipe>/).")
SeedOption = typer.Option(0, "--seed", help="Seed for every random choice: same inputs and seed give the same bytes out.")
OnErrorOption = typer.Option("fail", "--on-error", help="'fail': stop at the first bad record (exit 2). 'skip': count and log bad records, go on.")
ShardIndexOption = typer.Option(None, "--shard-index", help="This worker's index in a job array. Default: $SLURM_ARRAY_TASK_ID, else 0.")
DeviceOption = typer.Option("auto", "--device", help="cpu, cuda, or auto (a GPU when there is one).")
NumShardsOption = typer.Option(None, "--num-shards", help="Number of workers in the job array. Default: $SLURM_ARRAY_TASK_COUNT, else 1.")


def array_position(shard_index: Optional[int], num_shards: Optional[int]) -> tuple[int, int]:
    """Resolve --shard-index/--num-shards, defaulting from a Slurm job array."""
    from granite_cli.errors import BadInput

    index = shard_index if shard_index is not None else (env_int("SLURM_ARRAY_TASK_ID") or 0)
    count = num_shards if num_shards is not None else (env_int("SLURM_ARRAY_TASK_COUNT") or 1)
    if count < 1 or not 0 <= index < count:
        raise BadInput(f"--shard-index must be in [0, --num-shards) (got {index} of {count})")
    return index, count
