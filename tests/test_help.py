"""Every command's --help explains every flag: no option without a help text, and the text reads as written
(rich help does no %-formatting, so a '%%' would show doubled)."""

import typer
from typer.testing import CliRunner

from granite_cli.app import app


def commands(command, path=()):
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from commands(sub, (*path, name))


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
