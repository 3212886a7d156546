"""The `granite` command: one Typer app, one subcommand per stage.

Stage modules import only light packages at import time; torch, transformers and tokenizers are
imported inside the commands that need them, so `granite --help` answers at once.
"""

from __future__ import annotations

import os
import sys

import typer
import typer.core

from granite_cli.errors import GraniteError, ReaderGone
from stages import chat, extend_context, info, merge, mix, pretrain, recipe, report, rl, sft, tokenize
from stages import eval as eval_stage
from stages import filter as filter_stage

RECIPE_ORDER = ["recipe", "mix", "tokenize", "pretrain", "extend-context", "merge", "filter", "sft", "rl", "eval", "report",
                "chat", "info"]


class RecipeOrderGroup(typer.core.TyperGroup):
    """`granite --help` lists the stages in the order the recipe runs them."""

    def list_commands(self, ctx):
        return sorted(self.commands, key=lambda name: RECIPE_ORDER.index(name) if name in RECIPE_ORDER else len(RECIPE_ORDER))


app = typer.Typer(
    name="granite",
    cls=RecipeOrderGroup,
    help="IBM's Granite 4.1 training recipe as composable stages. Data goes to stdout, logs to stderr.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(recipe.app, name="recipe")
app.command("mix")(mix.mix_command)
app.add_typer(tokenize.app, name="tokenize")
app.command("pretrain")(pretrain.pretrain_command)
app.command("extend-context")(extend_context.extend_context_command)
app.command("merge")(merge.merge_command)
app.add_typer(filter_stage.app, name="filter")
app.command("sft")(sft.sft_command)
app.add_typer(rl.app, name="rl")
app.command("info")(info.info_command)
app.command("chat")(chat.chat_command)
app.add_typer(eval_stage.app, name="eval")
app.command("report")(report.report_command)


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
