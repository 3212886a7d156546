"""Every command's --help explains every flag: no option without a help text, and the text reads as written
(rich help does no %-formatting, so a '%%' would show doubled)."""

import click
import typer
from typer.testing import CliRunner

from granite_cli.app import app


def commands(command, path=()):
    yield path, command
    if isinstance(command, click.Group):  # asked as click asks: the app builds a stage's command when it is needed
        ctx = click.Context(command)
        for name in command.list_commands(ctx):
            yield from commands(command.get_command(ctx, name), (*path, name))


def test_every_option_of_every_command_has_help():
    missing, doubled = [], []
    for path, command in commands(typer.main.get_command(app)):
        for param in command.params:
            text = getattr(param, "help", None)
            if param.param_type_name == "option" and not text:
                missing.append(f"granite {' '.join(path)} {param.opts[0]}")
            if text and "%%" in text:
                doubled.append(f"granite {' '.join(path)} {param.opts[0]}")
    assert not missing, missing
    assert not doubled, doubled


def test_help_renders_for_every_command():
    runner = CliRunner()
    for path, _ in commands(typer.main.get_command(app)):
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage" in result.output


def test_the_cli_starts_without_torch():
    """Data stages run in shell pipes and job arrays, many times over: loading the app must not import torch (0.8 s)."""
    import subprocess
    import sys

    code = "import sys, granite_cli.app; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    every_stage = "import sys, click, typer, granite_cli.app as a; g = typer.main.get_command(a.app); " \
                  "[g.get_command(click.Context(g), n) for n in a.STAGES]; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", every_stage]).returncode == 0


def test_a_command_imports_only_its_own_stage():
    """`granite mix` in a pipe or a job array pays for the mix stage's imports, not for every stage's."""
    import subprocess
    import sys

    code = "import sys, click, typer, granite_cli.app as a; g = typer.main.get_command(a.app); " \
           "g.get_command(click.Context(g), 'mix'); sys.exit(any(m.startswith(('stages.rl', 'stages.eval')) for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
