"""`granite recipe show|check`: read a recipe as tables, and validate one reporting every problem."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from granite_cli.console import console
from granite_cli.errors import BadInput
from granite_cli.recipe import Recipe, format_count, load_recipe

app = typer.Typer(help="Show and check recipe files (TOML).", no_args_is_help=True)


@app.command("show")
def show(
    recipe: Optional[str] = typer.Argument(None, help="Packaged recipe name (tiny, granite-4.1) or a TOML file. Default: tiny."),
    phase: Optional[int] = typer.Option(None, "--phase", "-p", help="Show only this phase."),
) -> None:
    """Print a recipe's phases, token budgets, mixtures and schedules as tables (on stderr)."""
    loaded = load_recipe(recipe)
    console.print(f"[bold]{loaded.name}[/]: {loaded.description}  [dim]({loaded.path})[/]")
    numbers = [phase] if phase is not None else sorted(loaded.phases)
    for number in numbers:
        console.print(phase_table(loaded, number))
    if phase is None and loaded.rl.stages:
        console.print(rl_table(loaded))
    console.print("[dim]* = default chosen by granite where IBM published no value[/]")


def phase_table(recipe: Recipe, number: int) -> Table:
    phase = recipe.phase(number)
    schedule = ", ".join(f"{k}={v}" for k, v in phase.schedule.items())
    marker = "*" if "schedule" in phase.unpublished else ""
    table = Table(title=f"phase {number}: {phase.name} — {format_count(phase.tokens)} tokens — schedule{marker}: {schedule}",
                  title_justify="left")
    table.add_column("source")
    table.add_column("share %", justify="right")
    table.add_column("tokens", justify="right")
    table.add_column("max repetition", justify="right")
    mixture = recipe.mixture(number)
    for source, share in sorted(mixture.items(), key=lambda kv: -kv[1]):
        declared = recipe.sources.get(source)
        table.add_row(source, f"{share:g}", format_count(int(phase.tokens * share / 100)),
                      f"{declared.max_repetition:g}" if declared else "[red]undeclared[/]")
    for stage in phase.stages:
        mix = stage.mixture if isinstance(stage.mixture, str) else ", ".join(f"{k} {v:g}%" for k, v in stage.mixture.items())
        theta = f"rope_theta {stage.rope_theta:g}" if stage.rope_theta is not None else "rope_theta by extend-context's rule"
        sizes = f", sizes {'/'.join(stage.sizes)}" if stage.sizes else ""
        table.add_row(f"[italic]stage {stage.name}[/]", "", format_count(stage.tokens),
                      f"length {stage.length:,}, {theta}{sizes} — {mix}")
    if phase.merge is not None:
        table.add_row("[italic]merge[/]", "", "", f"{phase.merge.method}, parent weight {phase.merge.base_weight:g}")
    return table


def rl_table(recipe: Recipe) -> Table:
    rl = recipe.rl
    table = Table(title=f"rl: G={rl.samples_per_prompt} x {rl.prompts_per_step} prompts a step, context {rl.max_context:,}, "
                        f"{rl.loss} loss, clip {rl.epsilon_low:g}/{rl.epsilon_high:g}, dynamic sampling "
                        f"{'on' if rl.dynamic_sampling else 'off'}", title_justify="left")
    for column in ("stage", "name", "reward", "LR", "KL beta", "steps", "data"):
        table.add_column(column, justify="right" if column in ("LR", "KL beta", "steps") else "left")
    for stage in rl.stages:
        table.add_row(str(stage.number), stage.name, stage.reward, f"{stage.lr:g}", f"{stage.beta:g}",
                      str(stage.steps or "one pass"), ", ".join(Path(p).name for p in stage.data))
    return table


@app.command("keys")
def keys() -> None:
    """Every table a recipe may hold, each key with its default and what it means (on stderr)."""
    import dataclasses

    from rich.markup import escape

    from granite_cli.recipe import TABLES

    for header, cls in TABLES.items():
        table = Table(title=escape(f"{header}: {cls.__doc__.split(': ', 1)[-1]}"), title_justify="left")
        for column in ("key", "default", "meaning"):
            table.add_column(column)
        for field in dataclasses.fields(cls):
            if "help" not in field.metadata:
                continue  # the source's name is its table's name
            if field.metadata.get("required"):
                default = "required"
            elif field.metadata["parse"] is None:
                default = "its own table"
            elif field.default_factory is not dataclasses.MISSING:
                default = repr(field.default_factory())
            else:
                default = repr(field.default)
            table.add_row(field.name, default, field.metadata["help"])
        console.print(table)


@app.command("check")
def check(
    recipe: str = typer.Argument(..., help="Recipe name or TOML file to validate."),
    structure_only: bool = typer.Option(False, "--structure-only", help="Skip checking that every source's files exist."),
) -> None:
    """Validate a recipe: mixtures sum to 100, every source is declared and resolves to files, units parse.

    Every problem is reported at once; exit status 2 when there is any.
    """
    loaded = load_recipe(recipe)
    problems = loaded.problems(check_data=not structure_only)
    if problems:
        for problem in problems:
            console.print(f"[red]✗[/] {problem}", highlight=False)
        raise BadInput(f"{len(problems)} problem(s) in recipe {loaded.name!r}", str(loaded.path))
    console.print(f"[green]✓[/] recipe {loaded.name!r} is valid: {len(loaded.phases)} phases, {len(loaded.sources)} sources")
