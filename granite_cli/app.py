"""The `granite` command: one Typer app, one subcommand per stage.

A stage's module is imported only when its command runs (or when `granite --help` lists them all): `granite mix`
in a shell pipe or a job array pays for the mix stage's imports, not for every stage's (0.7 s to 0.3 s). Stage
modules import only light packages at import time besides; torch, transformers and tokenizers are imported
inside the commands that need them.
"""

from __future__ import annotations

import importlib
import os
import sys

import click
import typer
import typer.core

from granite_cli.errors import GraniteError, ReaderGone

# command -> (module, attribute): a Typer app (a command with subcommands) or a command function. In the order the
# recipe runs them, which is the order `granite --help` lists them in.
STAGES = {
    "recipe": ("stages.recipe", "app"),
    "mix": ("stages.mix", "mix_command"),
    "tokenize": ("stages.tokenize", "app"),
    "pretrain": ("stages.pretrain", "pretrain_command"),
    "extend-context": ("stages.extend_context", "extend_context_command"),
    "merge": ("stages.merge", "merge_command"),
    "filter": ("stages.filter", "app"),
    "sft": ("stages.sft", "sft_command"),
    "rl": ("stages.rl", "app"),
    "eval": ("stages.eval", "app"),
    "report": ("stages.report", "report_command"),
    "chat": ("stages.chat", "chat_command"),
    "info": ("stages.info", "info_command"),
}


class StageGroup(typer.core.TyperGroup):
    """The stages as subcommands, each built from its module the first time it is asked for."""

    def list_commands(self, ctx) -> list[str]:
        return list(STAGES)

    def get_command(self, ctx, name: str):
        if name not in self.commands and name in STAGES:
            self.commands[name] = stage_command(name)
        return self.commands.get(name)


def stage_command(name: str) -> click.Command:
    """The click command of one stage, as Typer would build it had the stage been registered on the app."""
    module, attribute = STAGES[name]
    target = getattr(importlib.import_module(module), attribute)
    holder = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    if isinstance(target, typer.Typer):
        holder.add_typer(target, name=name)
    else:
        holder.command(name)(target)
        holder.callback()(lambda: None)  # a group of one, so Typer keeps the command's name
    return typer.main.get_command(holder).commands[name]


app = typer.Typer(
    name="granite",
    cls=StageGroup,
    help="IBM's Granite 4.1 training recipe as composable stages. Data goes to stdout, logs to stderr.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.callback()(lambda: None)  # the stages come from StageGroup, not from registration: Typer wants a group's callback

def main() -> None:
    """Entry point: usage errors exit 2 (Typer prints them), GraniteError exits with its status, a closed pipe quietly."""
    # Nothing is downloaded at run time: the Hugging Face cache is read, the Hub is never asked.
    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(variable, "1")
    command = typer.main.get_command(app)
    try:
        command.main(args=sys.argv[1:], prog_name="granite")  # standalone: always ends in SystemExit
    except GraniteError as err:
        from rich.markup import escape

        from granite_cli.console import console

        console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        _flush_stdout()
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except (BrokenPipeError, ReaderGone):
        _quiet_stdout()
        sys.exit(0)
    finally:
        _flush_stdout()


def _flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_stdout()


def _quiet_stdout() -> None:
    """`granite mix | head`: the reader left; point stdout at /dev/null so exit does not complain."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
