"""`granite filter report`: what an audit file says, as a table on stderr or as JSON.

Counts per verdict, per rule that fired, per source and verdict, judge status, and a histogram of
the judge's scores per dimension (bins of width 0.5 from 1 to 5).
"""

from __future__ import annotations

from collections import Counter, defaultdict

from rich.table import Table

from granite_cli.console import console
from granite_cli.data.records import read_records

VERDICTS = ("accept", "borderline", "reject", "unjudged")
BINS = [1 + 0.5 * i for i in range(9)]  # 1.0, 1.5, ..., 5.0


def summarize(audit_paths: list[str]) -> dict:
    verdicts, rules, judge_status = Counter(), Counter(), Counter()
    by_source: dict[str, Counter] = defaultdict(Counter)
    histograms: dict[str, list[int]] = defaultdict(lambda: [0] * (len(BINS) - 1))
    kept = total = 0
    for record in read_records(audit_paths):
        total += 1
        kept += bool(record.get("kept"))
        verdicts[record["verdict"]] += 1
        by_source[str(record.get("source"))][record["verdict"]] += 1
        for rule in {r["rule"] for r in record.get("reasons", [])}:
            rules[rule] += 1
        judge = record.get("judge") or {}
        judge_status[judge.get("status", "none")] += 1
        for turn in judge.get("turns", []):
            for name, score in turn["scores"].items():
                histograms[name][min(int((score - 1) / 0.5), len(BINS) - 2)] += 1
    return {"total": total, "kept": kept, "verdicts": dict(verdicts), "rules": dict(rules.most_common()),
            "by_source": {s: dict(c) for s, c in sorted(by_source.items())}, "judge_status": dict(judge_status),
            "score_bins": BINS, "score_histograms": dict(histograms)}


def print_summary(summary: dict) -> None:
    total = max(summary["total"], 1)
    console.print(f"[bold]filter: kept {summary['kept']} of {summary['total']} samples[/]")
    head = Table()
    head.add_column("verdict")
    head.add_column("samples", justify="right")
    head.add_column("share", justify="right")
    for verdict in VERDICTS:
        if verdict in summary["verdicts"]:
            n = summary["verdicts"][verdict]
            head.add_row(verdict, str(n), f"{100 * n / total:.1f}%")
    console.print(head)
    if summary["rules"]:
        console.print("[bold]why samples were rejected[/] (a sample can fail several checks)")
        reasons = Table()
        reasons.add_column("check")
        reasons.add_column("samples", justify="right")
        for rule, n in summary["rules"].items():
            reasons.add_row(rule, str(n))
        console.print(reasons)
    console.print("[bold]per source[/]")
    sources = Table()
    sources.add_column("source")
    for verdict in VERDICTS:
        sources.add_column(verdict, justify="right")
    for source, counts in summary["by_source"].items():
        sources.add_row(source, *(str(counts.get(v, 0)) for v in VERDICTS))
    console.print(sources)
    judge = summary["judge_status"]
    if set(judge) <= {"none"}:
        console.print("judge: none ran (deterministic checks only)")
        return
    console.print("judge: " + ", ".join(f"{n} {status}" for status, n in sorted(judge.items())))
    if not summary["score_histograms"]:
        return
    console.print("[bold]judge scores per dimension[/] (assistant turns per score bin)")
    histograms = Table()
    histograms.add_column("dimension")
    for low, high in zip(BINS, BINS[1:]):
        histograms.add_column(f"{low:g}-{high:g}", justify="right")
    for name, counts in summary["score_histograms"].items():
        histograms.add_row(name, *(str(c) for c in counts))
    console.print(histograms)
