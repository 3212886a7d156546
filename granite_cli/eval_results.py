"""The eval results document (docs/design.md, contract 6): `RESULTS/results.json` and `samples.jsonl`.

`granite eval` writes one per evaluation; `granite rl` writes its per-domain held-out rewards as one too, so that
`granite eval table` shows them beside the benchmarks in the row of the same stage.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from granite_cli.data.atomic import atomic_path
from granite_cli.errors import BadInput

NOT_PERCENT = {"bits_per_byte", "rating"}  # shown as is; every other metric is a rate shown in percent
RL_REWARD = "rl_reward:"  # the prefix of the per-domain rewards `granite rl` writes as tasks


def write_results(out: Path, model: str, stage: str, results: dict, samples: list[dict]) -> None:
    """results.json ({model, stage, created, command, tasks}) and samples.jsonl (one row per item), each atomically."""
    out.mkdir(parents=True, exist_ok=True)
    document = {"model": model, "stage": stage, "created": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                "command": sys.argv, "tasks": results}
    with atomic_path(out / "samples.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(s) + "\n" for s in samples))
    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps(document, indent=2))


def read_results(paths: list[Path]) -> list[dict]:
    """The results.json documents under these directories, oldest first (the order the stages ran)."""
    documents = [json.loads((p / "results.json").read_text()) for p in paths if (p / "results.json").exists()]
    if not documents:
        raise BadInput("no results.json found: run `granite eval` first")
    return sorted(documents, key=lambda d: d["created"])


def by_stage(documents: list[dict]) -> tuple[dict[str, dict], dict[str, dict]]:
    """({stage: {task: result}} of the benchmarks, {stage: {domain: result}} of rl's held-out rewards), stages in the
    order they ran. Documents of one stage share its entry; where two give the same task, the later one counts."""
    grouped: dict[str, dict] = {}
    for document in documents:
        grouped.setdefault(document["stage"], {}).update(document["tasks"])
    benchmarks = {stage: {n: t for n, t in tasks.items() if not n.startswith(RL_REWARD)} for stage, tasks in grouped.items()}
    rewards = {stage: {n[len(RL_REWARD):]: t for n, t in tasks.items() if n.startswith(RL_REWARD)}
               for stage, tasks in grouped.items()}
    return benchmarks, {stage: domains for stage, domains in rewards.items() if domains}


def shown(metric: str, value) -> str:
    """A metric as tables show it: percent for rates, as is for bits per byte and ratings."""
    if value is None:
        return "n/a"
    return f"{value:.3f}" if metric in NOT_PERCENT else f"{100 * value:.2f}"


def reward_cell(result: dict, stacked: bool = False) -> str:
    """An RL domain's mean held-out reward, and after an RL stage its change from the column before with its 95%
    paired interval (a tiny model's rewards move by chance; the interval says how much). `stacked` puts the change
    on a line of its own, for terminal tables."""
    cell = result.get("metrics", {})
    if "change" not in cell or cell["ci_low"] == cell["ci_high"] == 0:  # no change, or no prompt's reward moved
        return f"{result['value']:.3f}"
    change = f"{cell['change']:+.3f} [{cell['ci_low']:+.3f}, {cell['ci_high']:+.3f}]"
    return f"{result['value']:.3f}\n{change}" if stacked else f"{result['value']:.3f} ({change})"
