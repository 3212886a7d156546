"""The `granite` command: one Typer app, one subcommand per stage.

Stage modules import only light packages at import time; torch, transformers and tokenizers are
imported inside the commands that need them, so `granite --help` answers at once.
"""

from __future__ import annotations

import os
import sys

import click
import typer

from granite_cli import recipe_cmd
from granite_cli.errors import GraniteError
from granite_cli import info_cmd
from stages import mix, pretrain, tokenize

app = typer.Typer(
    name="granite",
    help="IBM's Granite 4.1 training recipe as composable stages. Data goes to stdout, logs to stderr.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(recipe_cmd.app, name="recipe")
app.command("mix")(mix.mix_command)
app.add_typer(tokenize.app, name="tokenize")
app.command("pretrain")(pretrain.pretrain_command)
app.command("info")(info_cmd.info_command)


def main() -> None:
    """Entry point: map errors to exit statuses (2 bad input, 1 failure) and end quietly on a closed pipe."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=sys.argv[1:], prog_name="granite", standalone_mode=False)
        sys.stdout.flush()
    except GraniteError as err:
        from granite_cli.console import console

        from rich.markup import escape

        console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        code = err.exit_code
    except click.exceptions.ClickException as err:
        err.show()
        code = 2
    except (click.exceptions.Abort, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        code = 130
    except BrokenPipeError:
        # `granite mix | head`: the reader left; stop quietly without a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code if isinstance(code, int) else 0)
