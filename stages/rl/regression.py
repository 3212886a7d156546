"""The regression table: every domain's held-out reward after each RL stage, so that a trade is seen.

IBM's RLHF stage raised AlpacaEval and cost GSM8K; its last stage won the math back. Each stage is evaluated on
one suite, the held-out prompts of every stage's data (deduplicated by prompt, at most `per_domain` a domain,
picked by a fixed hash so every stage draws the same ones). Rows are domains; columns are the model the first
stage started from and each stage after it, each cell the mean reward and its change from the column before
with a paired bootstrap interval. A stage carries its parent's columns forward (from the parent's lineage) when
the parent was evaluated on the same suite, and reuses the parent's answers as its own "before" when they were
sampled the same way, since regenerating them would give the same answers; answered again (another seed), the
parent gets a second column, the one this stage's change is from.

A domain regresses when its mean falls more than `tolerance` below its best earlier column and the fall is beyond
noise: the 95% paired bootstrap interval of the change from that column (prompt by prompt: each column keeps its
per-prompt rewards) lies below zero. With 8-32 prompts a domain, a fall of 0.05 in the mean is often chance; a gate
that stopped pipelines on chance would be turned off. A column carried from a lineage written before per-prompt
rewards were kept has no interval, and there the mean alone decides.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

from granite_cli.stats import paired_bootstrap
from stages.rl import heldout
from stages.rl.prompts import Prompt, content_key


def suite(prompts: list[Prompt], per_domain: int) -> list[Prompt]:
    """The evaluation suite: one prompt per distinct question, at most `per_domain` a domain, in a fixed order."""
    unique: dict[str, Prompt] = {}
    for prompt in prompts:  # a question in several files counts once, under its smallest id whichever stage reads it
        key = content_key(prompt.messages)
        if key not in unique or prompt.id < unique[key].id:
            unique[key] = prompt
    ranked = sorted(unique.items(), key=lambda item: (item[1].domain, hashlib.blake2b(item[0].encode(), digest_size=8).digest()))
    kept, taken = [], {}
    for _, prompt in ranked:
        if per_domain and taken.get(prompt.domain, 0) >= per_domain:
            continue
        taken[prompt.domain] = taken.get(prompt.domain, 0) + 1
        kept.append(prompt)
    return kept


def suite_key(prompts: list[Prompt]) -> str:
    """Names the suite: the same prompts give the same key in every stage."""
    return hashlib.blake2b("\x1e".join(content_key(p.messages) for p in prompts).encode(), digest_size=8).hexdigest()


def parent_answers(parent: Path, prompts: list[Prompt], sampling: dict) -> Optional[list[dict]]:
    """The parent stage's own held-out answers when it answered these prompts with these settings, else None."""
    from model.checkpoint import read_lineage

    lineage = read_lineage(parent)
    if not lineage or lineage[-1].get("stage") != "rl" or not (parent / "heldout.jsonl").exists():
        return None
    metrics = lineage[-1].get("metrics", {})
    if metrics.get("heldout_suite") != suite_key(prompts) or metrics.get("heldout_sampling") != sampling:
        return None
    rows = [json.loads(line) for line in (parent / "heldout.jsonl").read_text().splitlines()]
    if [r["id"] for r in rows] != [p.id for p in prompts]:
        return None
    return [{"id": r["id"], "domain": r["domain"], "reward": r["reward_after"], "responses": r["responses_after"]} for r in rows]


def rewards_by_domain(answers: list[dict]) -> dict[str, list[float]]:
    """Each domain's per-prompt rewards in suite order, rounded to keep the lineage small: what a later column is
    paired against."""
    return {domain: [round(r, 4) for r in rewards] for domain, rewards in heldout.by_domain(answers).items()}


def columns(parent: Path, key: str, comparison: dict, before: list[dict], after: list[dict], start_name: str,
            name: str, resampled: bool) -> list[dict]:
    """The table's columns: the parent's (when made on this suite) or the starting model alone, then this stage's;
    each cell the domain's n, mean reward and per-prompt rewards, and from the second column on its change.

    `resampled`: `before` is not the parent's own answers (another seed or sampling) but the parent answering again.
    It then gets a column of its own, since this stage's change is measured from it; carried alone, the parent's
    column would sit beside a change that is not from it."""
    from model.checkpoint import read_lineage

    old = rewards_by_domain(before)

    def start(column_name: str) -> dict:
        return {"name": column_name, "domains": {d: {"n": row["n"], "mean": row["before"], "rewards": old[d]}
                                                 for d, row in comparison.items()}}

    lineage = read_lineage(parent)
    carried = lineage[-1].get("metrics", {}).get("regression") if lineage else None
    if carried and carried.get("suite") == key:
        earlier = carried["columns"] + ([start(f"{start_name} (sampled again)")] if resampled else [])
    else:
        earlier = [start(start_name)]
    new_rewards = rewards_by_domain(after)
    new = {"name": name, "domains": {d: {"n": row["n"], "mean": row["after"], "change": row["change"],
                                         "ci_low": row["ci_low"], "ci_high": row["ci_high"], "rewards": new_rewards[d]}
                                     for d, row in comparison.items()}}
    return earlier + [new]


def regressions(table: list[dict], tolerance: float, seed: int = 0) -> list[dict]:
    """Domains of the last column whose mean fell more than `tolerance` below their best earlier column, each with
    `beyond_noise` (the paired interval of the change lies below zero, or there is no interval) and the interval."""
    found = []
    last, earlier = table[-1], table[:-1]
    for domain, cell in last["domains"].items():
        before = [(c["domains"][domain]["mean"], c["name"], c["domains"][domain]) for c in earlier if domain in c["domains"]]
        if not before:
            continue
        best, where, best_cell = max(before, key=lambda b: b[0])
        if best - cell["mean"] <= tolerance:
            continue
        fall = {"domain": domain, "best": best, "best_at": where, "now": cell["mean"], "fall": best - cell["mean"],
                "beyond_noise": True}
        then, now = best_cell.get("rewards"), cell.get("rewards")
        if then is not None and now is not None and len(then) == len(now):
            _, low, high = paired_bootstrap(then, now, seed)
            fall.update(ci_low=low, ci_high=high, beyond_noise=high < 0)
        found.append(fall)
    return found


def describe(fall: dict, tolerance: float) -> str:
    """One fall for the stage's message: where the domain is, its best and where, and the interval when paired."""
    interval = f", change {-fall['fall']:+.3f} [{fall['ci_low']:+.3f}, {fall['ci_high']:+.3f}]" if "ci_low" in fall else ""
    return (f"{fall['domain']} fell to {fall['now']:.3f} from {fall['best']:.3f} ({fall['best_at']}), more than the "
            f"tolerance {tolerance:g}{interval}")


def show(table: list[dict], title: str):
    """Rows are domains, columns the stages: the mean reward, under it the change from the column before (and, in
    the last column, the one this stage measured, its 95% interval; earlier intervals are in earlier lineages)."""
    from rich.table import Table

    view = Table(title=title, title_justify="left")
    view.add_column("domain")
    view.add_column("n", justify="right")
    for column in table:
        view.add_column(column["name"], justify="right")
    domains = list(dict.fromkeys(d for column in table for d in column["domains"]))
    for domain in domains:
        cells = []
        for i, column in enumerate(table):
            cell = column["domains"].get(domain)
            if cell is None:
                cells.append("-")
            elif "change" not in cell:
                cells.append(f"{cell['mean']:.3f}")
            else:
                interval = f" [{cell['ci_low']:+.3f}, {cell['ci_high']:+.3f}]" if i == len(table) - 1 else ""
                cells.append(f"{cell['mean']:.3f}\n{cell['change']:+.3f}{interval}")
        n = next(c["domains"][domain]["n"] for c in table if domain in c["domains"])
        view.add_row(domain, str(n), *cells)
    return view


def eval_tasks(column: dict) -> dict:
    """A column as `granite eval`'s results (one task per domain, the mean reward), for `granite eval table`."""
    return {f"rl_reward:{domain}": {"main_metric": "reward", "value": cell["mean"],
                                    "metrics": {k: v for k, v in cell.items() if k != "rewards"},
                                    "n": cell["n"], "subtasks": {}}
            for domain, cell in column["domains"].items()}
