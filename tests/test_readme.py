"""Every command the README shows parses against the CLI, and the ones that need no trained run (help, dry runs,
recipe tables) run and succeed."""

from __future__ import annotations

import os
import re
import shlex
import subprocess

from conftest import REPO, parse_cli

LOOP_VALUES = {"s": "1K", "stage": "1", "phase": "1"}  # the README's shell loops, one value each
SHORT = ("--help", "--dry-run", "recipe show", "recipe keys", "--structure-only")


def readme_commands() -> list[str]:
    """The granite command lines of the README's sh blocks: continuations joined, comments, pipes and loops split."""
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line)
            for part in re.split(r"\s*(?:\||;|&&)\s*", line):
                part = re.sub(r"^(do|then)\s+", "", part.strip())
                part = re.sub(r"^(\w+=\S+\s+)+", "", part)  # environment assignments
                part = re.sub(r"^torchrun .*? -m granite_cli ", "granite ", part)
                part = re.sub(r"\s*>\s*\S+$", "", part)  # a redirection
                if part.startswith("granite ") or part == "granite":
                    commands.append(re.sub(r"\$(\w+)", lambda m: LOOP_VALUES.get(m[1], m[0]), part))
    return commands


def test_every_readme_command_parses():
    commands = [c for c in readme_commands() if "--help" not in c]  # help prints and exits: the next test runs it
    assert len(commands) > 40
    failures = []
    for command in commands:
        try:
            parse_cli(shlex.split(command)[1:])
        except Exception as err:
            failures.append(f"{command!r}: {err}")
    assert not failures, "README commands that do not parse:\n" + "\n".join(failures)


def test_the_readme_commands_that_need_no_run_succeed():
    short = [c for c in readme_commands() if any(marker in c for marker in SHORT)]
    assert len(short) >= 5
    env = {**os.environ, "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}"}
    for command in short:
        result = subprocess.run(shlex.split(command), cwd=REPO, env=env, capture_output=True)
        assert result.returncode == 0, (command, result.stderr.decode()[-500:])
    plan = subprocess.run(["bash", "examples/slurm/submit.sh", "--dry-run"], cwd=REPO, env=env, capture_output=True)
    assert plan.returncode == 0 and b"rl-4: sbatch" in plan.stdout
