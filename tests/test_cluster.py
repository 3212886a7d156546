"""The cluster recipe: the size recipes check clean, the Slurm scripts parse, the driver's dependency chain is
right, and every granite command a script would run parses (its flags exist and take what they are given)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess

import pytest

from conftest import REPO, granite, parse_cli

SLURM = REPO / "examples" / "slurm"
SIZES = ("3b", "8b", "30b")


def run_bash(*args, env=None):
    environment = {**os.environ, "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}", **(env or {})}
    return subprocess.run(["bash", *map(str, args)], cwd=REPO, env=environment, capture_output=True, text=True, check=True)


def dry_run(recipe: str) -> dict[str, tuple[list[str], list[str]]]:
    """{job: (the jobs it waits for, its sbatch arguments)} from the driver's dry run."""
    jobs = {}
    for line in run_bash(SLURM / "submit.sh", "--dry-run", env={"RECIPE": recipe}).stdout.splitlines():
        name, command = line.split(": sbatch ", 1)
        words = shlex.split(command)
        after = [w for w in words if w.startswith("--dependency=")]
        waits = re.findall(r"<([^>]+)>", after[0]) if after else []
        jobs[name] = (waits, [w for w in words if not w.startswith("--dependency=")])
    return jobs


@pytest.mark.parametrize("size", SIZES)
def test_each_size_recipe_checks_clean(size, tmp_path):
    data = tmp_path / "data"
    for source in ("commoncrawl", "commoncrawl-hq", "code", "math", "technical", "multilingual", "domain", "synthetic",
                   "long-cot", "language-instructions", "code-instructions", "books", "code-repositories"):
        (data / source).mkdir(parents=True)
        (data / source / "part-0.jsonl.zst").write_bytes(b"")
    result = subprocess.run([str(REPO / ".venv/bin/granite"), "recipe", "check", f"examples/recipes/granite-4.1-{size}.toml"],
                            cwd=REPO, env={**os.environ, "GRANITE_DATA": str(data)}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    shown = granite("recipe", "show", REPO / f"examples/recipes/granite-4.1-{size}.toml", check=True).stderr.decode()
    assert f"granite-4.1-{size}" in shown
    assert ("512K" in shown) == (size != "3b")  # docs/recipe.md: 512K for 8B and 30B only


def test_every_slurm_script_parses():
    for script in sorted(SLURM.iterdir()):
        subprocess.run(["bash", "-n", str(script)], check=True)


def test_the_driver_chains_the_recipe_with_afterok():
    jobs = dry_run("examples/recipes/granite-4.1-8b.toml")
    assert set(jobs["pretrain-1"][0]) == {"mix-1", "heldout"}
    for phase in (2, 3, 4):
        assert set(jobs[f"pretrain-{phase}"][0]) == {f"mix-{phase}", "heldout", f"pretrain-{phase - 1}"}
    assert set(jobs["extend-32K"][0]) == {"mix-5-32K", "pretrain-4"}
    assert set(jobs["extend-128K"][0]) == {"mix-5-128K", "extend-32K"}
    assert set(jobs["extend-512K"][0]) == {"mix-5-512K", "extend-128K"}
    assert set(jobs["sft"][0]) == {"extend-512K", "filter-dedup"} and jobs["filter-dedup"][0] == ["filter"]
    assert set(jobs["rl-1"][0]) == {"sft", "reward-model"} and jobs["reward-model"][0] == ["sft"]
    for stage in (2, 3, 4):
        assert jobs[f"rl-{stage}"][0] == [f"rl-{stage - 1}"]
    trained = [j for j in jobs if j.startswith(("pretrain-", "sft", "rl-"))] + ["extend-512K"]
    evaluated = {waits[0] for name, (waits, _) in jobs.items() if name.startswith("eval-")}
    assert set(trained) - {"extend-512K"} <= evaluated and "extend-512K" in evaluated
    names = list(jobs)
    assert all(names.index(w) < names.index(name) for name, (waits, _) in jobs.items() for w in waits)  # ids exist first
    assert "extend-512K" not in dry_run("examples/recipes/granite-4.1-3b.toml")


def test_every_command_a_script_would_run_parses(tmp_path):
    with pytest.raises(Exception, match="No such option"):
        parse_cli(["rl", "--stage", "2", "--no-such-flag"])  # the check can fail
    commands = []
    for name, (_, words) in dry_run("examples/recipes/granite-4.1-30b.toml").items():
        script = next(w for w in words if w.endswith(".sbatch"))
        arguments = words[words.index(script) + 1:]
        env = {"GRANITE_PRINT_ONLY": "1", "SFT_DATA": str(tmp_path / "sft-*.jsonl.zst"), "SLURM_ARRAY_TASK_ID": "0",
               "RECIPE": "examples/recipes/granite-4.1-30b.toml"}
        printed = run_bash(REPO / script, *arguments, env=env).stderr.splitlines()
        commands += [shlex.split(line)[1:] for line in printed if line.startswith("granite ")]
    assert len(commands) >= 30
    for args in commands:
        parse_cli(args)
