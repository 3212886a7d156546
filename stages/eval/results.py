"""Eval results (docs/design.md, contract 6): per-item rows and per-task summaries, and the tables `granite eval` and
`granite eval table` print. Writing and reading results.json lives in granite_cli/eval_results.py (rl and the report
use it too)."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import TYPE_CHECKING, Optional

from rich.table import Table

from granite_cli.eval_results import by_stage, reward_cell, shown
from stages.eval.published import MODELS, PUBLISHED

if TYPE_CHECKING:  # tasks imports this module (through judged): only the annotation needs it
    from stages.eval.tasks import TaskSpec

MAIN_METRIC = {"generate": "score", "choice": "acc", "code": "pass@1", "likelihood": "bits_per_byte", "judged": "win_rate"}
TASK_MAIN_METRIC = {"mt_bench": "rating", "gsm8k": "exact_match_strict", "ruler": "accuracy", "bfcl": "accuracy", "mmlu_pro": "exact_match",
                    "ifeval": "average", "bbh": "exact_match", "deepmind_math": "exact_match"}


def sample_row(spec: TaskSpec, item: dict, index: int, prompt: str, output: str, scores: dict, reason) -> dict:
    reference = item.get("answer", item.get("canonical_solution"))
    return {"id": spec.item_id(item, index), "subtask": spec.subtask(item) if spec.subtask else None, "prompt": prompt,
            "output": output, "reference": reference if isinstance(reference, (str, int, float)) else json.dumps(reference),
            "scores": scores, "reason": reason}


def summarize(spec: TaskSpec, rows: list[dict]) -> dict:
    metrics = defaultdict(list)
    by_subtask = defaultdict(lambda: defaultdict(list))
    for row in rows:
        for name, value in row["scores"].items():
            metrics[name].append(value)
            if row["subtask"] is not None:
                by_subtask[row["subtask"]][name].append(value)
    main = TASK_MAIN_METRIC.get(spec.name, MAIN_METRIC[spec.kind])
    means = {name: sum(v) / len(v) for name, v in metrics.items()}
    # None when no item has the main metric (a judge that never gave a verdict): never shown as a zero
    return {"main_metric": main, "value": means.get(main), "metrics": means, "n": len(rows),
            "subtasks": {name: {m: sum(v) / len(v) for m, v in values.items()}
                         for name, values in sorted(by_subtask.items(), key=lambda kv: natural_key(kv[0]))}}


def natural_key(text: str) -> list:
    """'len 256' before 'len 1024': digits compare as numbers."""
    import re

    return [float(part) if part.replace(".", "", 1).isdigit() else part for part in re.split(r"(\d+(?:\.\d+)?)", text)]


# ------------------------------------------------------------------ output
def results_table(results: dict, compare: Optional[str]) -> Table:
    size = MODELS.get(compare) if compare else None
    table = Table(title="eval results" + (f" — IBM {compare} beside" if compare else ""), title_justify="left")
    for column in ("task", "metric", "ours", "n") + ((f"IBM {compare}",) if compare else ()):
        table.add_column(column, justify="left" if column in ("task", "metric") else "right")
    for name, result in results.items():
        row = [name, result["main_metric"], shown(result["main_metric"], result["value"]), str(result["n"])]
        if size:
            row.append(f"{PUBLISHED[name][1][size]:.2f}" if name in PUBLISHED else "-")
        table.add_row(*row)
        for subtask, values in result["subtasks"].items():
            if len(result["subtasks"]) > 1:
                table.add_row(f"  {subtask}", "", shown(result["main_metric"], values.get(result["main_metric"])), "",
                              *([""] if size else []))
    if size:
        for name, (label, numbers) in PUBLISHED.items():
            if name not in results:
                table.add_row(f"[dim]{name}[/]", f"[dim]{label}[/]", "[dim]not run[/]", "", f"{numbers[size]:.2f}")
    return table


def stages_tables(documents: list[dict]) -> list[Table]:
    """The benchmarks (rows: stages, columns: each task's main metric) and, when rl wrote any, the held-out RL reward
    (rows: domains, columns: stages)."""
    benchmarks, rewards = by_stage(documents)
    tables = [by_task(benchmarks)] if any(benchmarks.values()) else []
    if rewards:
        tables.append(by_domain(rewards))
    return tables


def by_task(rows: dict[str, dict]) -> Table:
    names = list(dict.fromkeys(name for tasks in rows.values() for name in tasks))
    table = Table(title="evaluation after each stage (percent; bits_per_byte: lower is better)", title_justify="left")
    table.add_column("stage")
    for name in names:
        metric = next(tasks[name]["main_metric"] for tasks in rows.values() if name in tasks)
        table.add_column(f"{name}\n{metric}", justify="right")
    for stage, tasks in rows.items():
        if tasks:
            table.add_row(stage, *[shown(tasks[n]["main_metric"], tasks[n]["value"]) if n in tasks else "-" for n in names])
    return table


def by_domain(columns: dict[str, dict]) -> Table:
    domains = list(dict.fromkeys(d for tasks in columns.values() for d in tasks))
    table = Table(title="held-out RL reward by domain after each stage (mean reward; after an RL stage, the change "
                        "from the column before and its 95% paired interval)", title_justify="left")
    table.add_column("domain")
    for stage in columns:
        table.add_column(stage, justify="right")
    for domain in domains:
        table.add_row(domain, *[reward_cell(columns[s][domain], stacked=True) if domain in columns[s] else "-" for s in columns])
    return table
