"""`make all` is a chain of real file targets: `make -n all` shows the whole plan on a fresh clone, nothing once
every stage's output is there, and only a stage and what depends on it once that stage is newer."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

from conftest import REPO

# every stage's last-written file, in the order `make all` makes them
OUTPUTS = ["tokenizer/tokenizer.json", "shards/heldout/manifest.json",
           *[f"shards/phase-{p}/manifest.json" for p in (1, 2, 3, 4)],
           *[f"shards/phase-5-{s}/manifest.json" for s in ("1K", "2K", "4K")],
           *[f"checkpoints/pretrain-phase-{p}/lineage.json" for p in (1, 2, 3, 4)],
           "checkpoints/extend-context/lineage.json", "filter/kept.jsonl.zst", "checkpoints/sft/lineage.json",
           "checkpoints/reward-model/lineage.json", *[f"checkpoints/rl-stage-{s}/lineage.json" for s in (1, 2, 3, 4)],
           *[f"eval/{c}/results.json" for c in ("pretrain-phase-1", "pretrain-phase-2", "pretrain-phase-3",
                                               "pretrain-phase-4", "extend-context", "sft", "rl-stage-1", "rl-stage-2",
                                               "rl-stage-3", "rl-stage-4")],
           "report/report.html"]


def plan(checkout, target: str = "all") -> list[str]:
    # run as a top-level make even under `make test` (a sub-make would print its directory and level)
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    result = subprocess.run(["make", "-n", "--no-print-directory", target], cwd=checkout, capture_output=True, text=True,
                            check=True, env=env)
    return [line for line in result.stdout.splitlines() if line.strip()]


def recipe_checkout(tmp_path, installed: bool = True):
    """What the Makefile reads of a clone; `installed`: the environment and the benchmark data there already."""
    checkout = tmp_path / "clone"
    checkout.mkdir()
    shutil.copy(REPO / "Makefile", checkout)
    shutil.copy(REPO / "pyproject.toml", checkout)
    (checkout / "examples/data/chat").mkdir(parents=True)
    shutil.copy(REPO / "examples/data/chat/sft.jsonl.zst", checkout / "examples/data/chat")
    (checkout / "examples/fetch_eval_data.py").touch()
    if installed:
        time.sleep(0.01)
        (checkout / ".venv").mkdir()
        (checkout / ".venv/.installed").touch()
        (checkout / "runs/eval-data").mkdir(parents=True)
        (checkout / "runs/eval-data/SOURCES.json").touch()
    return checkout


def test_make_all_plans_every_stage_then_nothing_then_what_a_rerun_touches(tmp_path):
    checkout = recipe_checkout(tmp_path)  # installed and the benchmark data there: the plan is the recipe's
    fresh = plan(checkout)
    trained = [line for line in fresh if " pretrain " in line or " sft " in line or " rl " in line
               or " extend-context " in line]
    assert len(trained) == 4 + 1 + 1 + 5  # phases 1-4, phase 5, sft, the reward model and rl stages 1-4
    assert fresh.index(next(l for l in fresh if "rl --stage 4" in l)) < fresh.index(next(l for l in fresh if " report " in l))
    run = checkout / "runs/tiny"
    for output in OUTPUTS:  # as if `make all` had finished: each output newer than what it was made from
        (run / output).parent.mkdir(parents=True, exist_ok=True)
        (run / output).touch()
        time.sleep(0.01)
    assert plan(checkout) == ["make: Nothing to be done for 'all'."]
    time.sleep(0.01)
    (run / "checkpoints/sft/lineage.json").touch()
    again = plan(checkout)
    assert not any(" pretrain " in line or "extend-context" in line or " filter " in line for line in again)
    assert sum("rl --stage" in line for line in again) == 4 and any("rl reward-model" in line for line in again)
    assert any("eval runs/tiny/checkpoints/sft " in line for line in again)


def test_the_recipe_installs_without_the_test_packages_and_the_tests_add_them(tmp_path):
    checkout = recipe_checkout(tmp_path, installed=False)
    recipe = plan(checkout)
    assert any(line.endswith("pip install -q -e .") for line in recipe)
    assert not any("[test]" in line for line in recipe)  # no pytest, no mergekit (and its scipy)
    assert any('pip install -q -e ".[test]"' in line for line in plan(checkout, "test"))
