"""The LLM judge of the filter stage: each assistant turn scored on six dimensions, plus hard-reject flags.

The judge sees the whole context of a turn (system prompt, tool list, documents, history) and answers
one JSON object. The answer is validated; a malformed one is sent back with what is wrong, and after
the retries it is recorded as malformed, never read as a pass or a fail. Where the backend gives
token log-probabilities, each score is the probability-weighted mean over the digits 1-5 at the
score's position (G-Eval's trick), steadier than the one sampled digit.

Answers are cached in SQLite by (judge identity, rubric version, the exact judge prompt): an
interrupted run resumes without paying twice, and a rerun with new thresholds or weights asks nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from granite_cli.errors import BadInput
from model.generation import Completion, Request, Sampling

RUBRIC_VERSION = "1"
DIMENSIONS = {
    "instruction_following": "does what the user (and the system prompt) asked, in the form asked",
    "correctness": "every statement, step and result is true; code and tool calls would work",
    "completeness": "answers every part of the request",
    "conciseness": "no padding, repetition or needless hedging",
    "naturalness": "reads like a fluent, helpful person wrote it",
    "calibration": "states uncertainty where it exists; declines what it cannot know; no overconfidence",
}
HARD_FLAGS = {
    "hallucination": "a claim not supported by the given documents or tool results (in RAG: anything not grounded in the documents)",
    "false_premise_accepted": "the user's question rests on a false premise and the answer goes along with it",
    "incorrect_computation": "a calculation in the answer is wrong",
}
DEFAULT_WEIGHTS = {"correctness": 0.30, "instruction_following": 0.20, "completeness": 0.15, "calibration": 0.15,
                   "conciseness": 0.10, "naturalness": 0.10}
TOP_LOGPROBS = 5  # alternatives per answer token: enough to weigh the digits 1-5
MAX_ANSWER_TOKENS = 300

SYSTEM = ("You grade training data for a chat assistant. You are strict and consistent, and you answer with one "
          "JSON object only.")


# ------------------------------------------------------------------ the prompt
def render_context(sample: dict, turn: int) -> str:
    """The conversation up to the graded turn as plain text: tools and documents first, then the turns."""
    parts = []
    if sample.get("tools"):
        parts.append("[available tools]\n" + "\n".join(json.dumps(t, ensure_ascii=False) for t in sample["tools"]))
    if sample.get("documents"):
        parts.append("[documents]\n" + "\n".join(f"{d.get('id', i)}: {d.get('text', '')}" for i, d in enumerate(sample["documents"])))
    for message in sample["messages"][:turn]:
        parts.append(f"[{message['role']}]\n{render_turn(message)}")
    return "\n\n".join(parts)


def render_turn(message: dict) -> str:
    calls = [f"<tool_call>{json.dumps({'name': c.get('name'), 'arguments': c.get('arguments')}, ensure_ascii=False)}</tool_call>"
             for c in message.get("tool_calls") or []]
    return "\n".join(p for p in [message.get("content") or ""] + calls if p)


def judge_prompt(sample: dict, turn: int) -> list[dict]:
    dimensions = "\n".join(f"- {name}: {what}" for name, what in DIMENSIONS.items())
    flags = "\n".join(f"- {name}: {what}" for name, what in HARD_FLAGS.items())
    template = ", ".join([f'"{name}": <1-5>' for name in DIMENSIONS] + [f'"{name}": <true|false>' for name in HARD_FLAGS])
    user = (f"## Conversation so far\n{render_context(sample, turn)}\n\n"
            f"## Assistant turn to grade\n{render_turn(sample['messages'][turn])}\n\n"
            f"## Score the graded turn from 1 (very poor) to 5 (excellent) on\n{dimensions}\n\n"
            f"## Flag (true or false)\n{flags}\n\n"
            f"Answer with this JSON object and nothing else:\n{{{template}, \"rationale\": \"<one sentence>\"}}")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


# ------------------------------------------------------------------ reading the answer
@dataclass
class TurnJudgement:
    turn: int
    scores: dict[str, float]
    flags: dict[str, bool]
    rationale: str
    raw: str
    weighted_by_logprobs: bool = False


def parse_answer(text: str) -> tuple[dict | None, str]:
    """The judge's JSON object if it is valid, else None and what is wrong with it."""
    start = text.find("{")
    if start < 0:
        return None, "the answer holds no JSON object"
    try:
        answer, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError as err:
        return None, f"the JSON does not parse ({err.msg})"
    if not isinstance(answer, dict):
        return None, "the answer is not a JSON object"
    for name in DIMENSIONS:
        value = answer.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or not 1 <= value <= 5:
            return None, f"{name!r} must be an integer from 1 to 5 (got {value!r})"
    for name in HARD_FLAGS:
        if not isinstance(answer.get(name), bool):
            return None, f"{name!r} must be true or false (got {answer.get(name)!r})"
    return answer, ""


def expected_scores(reply: Completion, answer: dict) -> dict[str, float] | None:
    """Each score as the expectation over the digits 1-5 the judge weighed at that position, when log-probabilities exist."""
    if not reply.top_logprobs or "".join(reply.tokens) != reply.text:
        return None
    starts, offset = [], 0
    for token in reply.tokens:
        starts.append(offset)
        offset += len(token)
    scores = {}
    for name in DIMENSIONS:
        found = re.search(rf'"{name}"\s*:\s*([1-5])', reply.text)
        if not found:
            return None
        position = max(i for i, s in enumerate(starts) if s <= found.start(1))
        weights = {int(tok.strip()): math.exp(lp) for tok, lp in reply.top_logprobs[position].items()
                   if tok.strip() in ("1", "2", "3", "4", "5")}
        total = sum(weights.values())
        scores[name] = sum(d * w for d, w in weights.items()) / total if total > 0 else float(answer[name])
    return scores


def read_reply(reply: Completion, turn: int) -> tuple[TurnJudgement | None, str]:
    answer, problem = parse_answer(reply.text)
    if answer is None:
        return None, problem
    expected = expected_scores(reply, answer)
    scores = expected or {name: float(answer[name]) for name in DIMENSIONS}
    return TurnJudgement(turn, scores, {name: answer[name] for name in HARD_FLAGS}, str(answer.get("rationale", "")),
                         reply.text, expected is not None), ""


# ------------------------------------------------------------------ cache
class JudgeCache:
    """Judge answers on disk, keyed by judge identity + rubric version + prompt; only valid answers are stored."""

    def __init__(self, path: Path | None):
        self.db = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path)
            self.db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, judgement TEXT NOT NULL)")
        self.hits = self.misses = 0

    @staticmethod
    def key(identity: str, prompt: list[dict]) -> str:
        return hashlib.sha256(json.dumps([identity, RUBRIC_VERSION, prompt], sort_keys=True).encode()).hexdigest()

    def get(self, key: str) -> TurnJudgement | None:
        row = self.db.execute("SELECT judgement FROM answers WHERE key = ?", (key,)).fetchone() if self.db else None
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return TurnJudgement(**json.loads(row[0]))

    def put_many(self, items: list[tuple[str, TurnJudgement]]) -> None:
        if self.db and items:
            self.db.executemany("INSERT OR REPLACE INTO answers VALUES (?, ?)",
                                [(key, json.dumps(j.__dict__)) for key, j in items])
            self.db.commit()


# ------------------------------------------------------------------ the judge
@dataclass
class SampleJudgement:
    status: str  # ok, malformed (the judge never gave a valid answer) or failed (the backend did not answer)
    turns: list[TurnJudgement] = field(default_factory=list)
    error: str = ""


class Judge:
    def __init__(self, backend, cache: JudgeCache, retries: int = 2, logprobs: bool = True):
        self.backend, self.cache, self.retries, self.logprobs = backend, cache, retries, logprobs
        self.identity = backend.identity

    def judge(self, samples: list[dict]) -> list[SampleJudgement]:
        """Judge every assistant turn of every sample; the backend is asked only for turns not in the cache."""
        jobs = [(s, i, turn, judge_prompt(sample, turn)) for s, sample in enumerate(samples)
                for i, turn in enumerate(t for t, m in enumerate(sample["messages"]) if m["role"] == "assistant")]
        keys = [JudgeCache.key(self.identity, prompt) for *_, prompt in jobs]
        results: list[TurnJudgement | None] = [self.cache.get(key) for key in keys]
        pending = [j for j, result in enumerate(results) if result is None]
        conversations = {j: list(jobs[j][3]) for j in pending}
        failures: dict[int, tuple[str, str]] = {}  # job -> (status, why)
        for attempt in range(self.retries + 1):
            if not pending:
                break
            sampling = Sampling(max_new_tokens=MAX_ANSWER_TOKENS, top_logprobs=TOP_LOGPROBS if self.logprobs else 0)
            replies = [c[0] for c in self.backend.generate([Request(messages=conversations[j], sampling=sampling) for j in pending])]
            still = []
            for j, reply in zip(pending, replies):
                if reply.error is not None:
                    failures[j] = ("failed", f"judge backend failed: {reply.error}")
                    continue
                judgement, problem = read_reply(reply, jobs[j][2])
                if judgement is not None:
                    results[j] = judgement
                    continue
                failures[j] = ("malformed", f"malformed judge answer after {attempt + 1} tries: {problem}; "
                                            f"last answer {reply.text[:200]!r}")
                conversations[j] += [{"role": "assistant", "content": reply.text},
                                     {"role": "user", "content": f"That answer is not valid: {problem}. Answer with the JSON object only."}]
                still.append(j)
            pending = still
        self.cache.put_many([(keys[j], r) for j, r in enumerate(results) if isinstance(r, TurnJudgement) and j in conversations])
        out = [SampleJudgement("ok") for _ in samples]
        for j, (s, _, _, _) in enumerate(jobs):
            if isinstance(results[j], TurnJudgement):
                out[s].turns.append(results[j])
            elif out[s].status == "ok":
                out[s].status, out[s].error = failures[j]
        return out


# ------------------------------------------------------------------ from scores to a verdict
@dataclass
class JudgePolicy:
    """Weighted score per turn, the sample's score is its weakest turn; hard flags reject whatever the score."""

    accept_at: float = 4.0
    reject_below: float = 3.0
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))

    def __post_init__(self):
        unknown = set(self.weights) - set(DIMENSIONS)
        if unknown:
            raise BadInput(f"unknown judge dimension(s) {', '.join(sorted(unknown))} (known: {', '.join(DIMENSIONS)})")
        if not 1 <= self.reject_below <= self.accept_at <= 5:
            raise BadInput(f"thresholds must satisfy 1 <= reject-below ({self.reject_below}) <= accept-at ({self.accept_at}) <= 5")
        if sum(self.weights.values()) <= 0:
            raise BadInput("judge weights must sum to more than 0")

    def turn_score(self, judgement: TurnJudgement) -> float:
        total = sum(self.weights.values())
        return sum(judgement.scores[name] * w for name, w in self.weights.items()) / total

    def verdict(self, judgement: SampleJudgement) -> tuple[str, list[str], float | None]:
        """(accept | borderline | reject | unjudged, reasons, the sample's score)."""
        if judgement.status != "ok":
            return "unjudged", [judgement.error], None
        reasons = [f"messages[{t.turn}]: judge flags {name.replace('_', ' ')} ({t.rationale})"
                   for t in judgement.turns for name, flagged in t.flags.items() if flagged]
        score = min(self.turn_score(t) for t in judgement.turns)
        if reasons:
            return "reject", reasons, score
        if score >= self.accept_at:
            return "accept", [], score
        if score >= self.reject_below:
            return "borderline", [f"judge score {score:.2f} is under the accept threshold {self.accept_at}"], score
        return "reject", [f"judge score {score:.2f} is under the reject threshold {self.reject_below}"], score
