"""One sample's way through the filter: normalize, rules, judge, verdict, deduplication, audit record.

The judge is asked only about samples the rules let through (a rule reject is final, and judge calls
cost money). Deduplication comes last and indexes only samples that are kept, so the first *good*
copy of a sample survives, never a copy of a rejected one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from stages.filter.dedup import ExactIndex, MinHashIndex
from stages.filter.judge import Judge, JudgePolicy, SampleJudgement
from stages.filter.rules import RULES, assistant_text, check_schema, normalize

DEDUP_RULES = ("exact_dedup", "near_dedup")
# schema always runs first: every other check reads the structure it guarantees
OPTIONAL_CHECKS = tuple(name for name in RULES if name != "schema") + DEDUP_RULES


@dataclass
class Check:
    name: str
    run: Callable[[dict, dict], list[str]]
    settings: dict


class Curator:
    def __init__(self, checks: list[Check], judge: Judge | None, policy: JudgePolicy, exact: ExactIndex | None,
                 near: MinHashIndex | None, keep_borderline: bool):
        self.checks, self.judge, self.policy = checks, judge, policy
        self.exact, self.near, self.keep_borderline = exact, near, keep_borderline

    def curate(self, samples: list[dict]) -> list[tuple[dict, dict]]:
        """(normalized sample, audit record) for each sample, in order; `audit["kept"]` says which to write."""
        normalized = [normalize(s) for s in samples]
        findings = [self.rule_findings(sample) for sample, _ in normalized]
        to_judge = [i for i, found in enumerate(findings) if not found] if self.judge else []
        judged = dict(zip(to_judge, self.judge.judge([normalized[i][0] for i in to_judge]))) if to_judge else {}
        out = []
        for i, (sample, changes) in enumerate(normalized):
            audit = {"id": sample.get("id"), "source": sample.get("source"), "changes": changes}
            if findings[i]:
                verdict, reasons = "reject", findings[i]
                audit["judge"] = {"status": "skipped" if self.judge else "none"}
            elif i in judged:
                verdict, judge_reasons, score = self.policy.verdict(judged[i])
                reasons = [("judge", r) for r in judge_reasons]
                audit["judge"] = self.judge_record(judged[i], score)
            else:
                verdict, reasons = "accept", []
                audit["judge"] = {"status": "none"}
            kept = verdict == "accept" or (verdict == "borderline" and self.keep_borderline)
            if kept:
                duplicate = self.duplicate(sample)
                if duplicate:
                    verdict, kept = "reject", False
                    reasons = reasons + [duplicate]
            audit.update(verdict=verdict, kept=kept, reasons=[{"rule": r, "reason": why} for r, why in reasons])
            out.append((sample, audit))
        return out

    def rule_findings(self, sample: dict) -> list[tuple[str, str]]:
        """(rule, reason) for every rule that rejects the sample; a sample with a broken schema gets no other rule."""
        broken = check_schema(sample, {})
        if broken:
            return [("schema", reason) for reason in broken]
        return [(check.name, reason) for check in self.checks for reason in check.run(sample, check.settings)]

    def duplicate(self, sample: dict) -> tuple[str, str] | None:
        if self.exact is not None:
            first = self.exact.first_copy(sample)
            if first is not None:
                return "exact_dedup", f"identical to {first}"
        if self.near is not None:
            first = self.near.first_copy(str(sample.get("id")), assistant_text(sample))
            if first is not None:
                return "near_dedup", f"near duplicate of {first}"
        return None

    def judge_record(self, judgement: SampleJudgement, score: float | None) -> dict:
        record = {"status": judgement.status, "identity": self.judge.identity, "score": score,
                  "turns": [{"turn": t.turn, "scores": t.scores, "weighted": self.policy.turn_score(t), "flags": t.flags,
                             "rationale": t.rationale, "logprob_weighted": t.weighted_by_logprobs, "raw": t.raw}
                            for t in judgement.turns]}
        if judgement.error:
            record["error"] = judgement.error
        return record
