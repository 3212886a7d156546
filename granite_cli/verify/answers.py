"""Answer checkers of text responses (the registry that picks them is granite_cli/verify/__init__.py).

Eval scores local tasks with them and the RL stage will reward with them, so one hand-checked
implementation serves both. Each checker takes the model's response text and the verifier record
and returns a Verdict: a score in [0, 1] and the reason.
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass
from typing import Callable


_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")
_ANSWER_IS = re.compile(r"answer is:?\s*(.+?)(?:\.\s|\.?$)", re.IGNORECASE | re.MULTILINE)


@dataclass
class Verdict:
    score: float
    reason: str
    extracted: str | None = None


def parse_number(text: str) -> float | None:
    """'$1,234.50.' -> 1234.5; None when `text` holds no number."""
    cleaned = text.replace("$", "").replace(",", "").rstrip(".")
    try:
        return float(cleaned)
    except ValueError:
        return None


def last_number(text: str) -> str | None:
    """The last number in the text, the way GSM8K's flexible extraction reads an answer."""
    found = _NUMBER.findall(text)
    return found[-1] if found else None


def stated_answer(text: str) -> str:
    """What follows the last 'the answer is', else the last non-empty line."""
    found = _ANSWER_IS.findall(text)
    if found:
        return found[-1].strip()
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def numeric(response: str, verifier: dict) -> Verdict:
    extracted = last_number(stated_answer(response)) or last_number(response)
    value = parse_number(extracted) if extracted else None
    if value is None:
        return Verdict(0.0, "no number in the response")
    expected = float(verifier["answer"])
    ok = abs(value - expected) <= 1e-6 * max(1.0, abs(expected))
    return Verdict(float(ok), "match" if ok else f"{value:g} != {expected:g}", extracted)


def _normalize(text: str) -> str:
    return re.sub(r"[\s.!\"'`*]+$", "", re.sub(r"^[\s\"'`*]+", "", text)).strip().lower()


def exact(response: str, verifier: dict) -> Verdict:
    extracted = stated_answer(response)
    ok = _normalize(extracted) == _normalize(str(verifier["answer"]))
    return Verdict(float(ok), "match" if ok else f"{extracted!r} != {verifier['answer']!r}", extracted)


def _sentences(text: str) -> int:
    return len([s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s])


CONSTRAINT_CHECKS: dict[str, Callable[[str, dict], bool]] = {
    "lowercase": lambda text, c: text == text.lower(),
    "keyword": lambda text, c: re.search(rf"\b{re.escape(c['keyword'])}\b", text, re.IGNORECASE) is not None,
    "sentences": lambda text, c: _sentences(text) == int(c["n"]),
    "no_commas": lambda text, c: "," not in text,
}


def constraints(response: str, verifier: dict) -> Verdict:
    """Instruction following: the share of constraints met (all met scores 1)."""
    results = {c["type"]: CONSTRAINT_CHECKS[c["type"]](response, c) for c in verifier["constraints"]}
    failed = [name for name, ok in results.items() if not ok]
    return Verdict(sum(results.values()) / len(results), "all constraints met" if not failed else f"failed: {', '.join(failed)}")


def _first_json_object(text: str):
    decoder = json.JSONDecoder()
    for start in [m.start() for m in re.finditer(r"\{", text)]:
        try:
            return decoder.raw_decode(text[start:])[0]
        except json.JSONDecodeError:
            continue
    return None


def json_schema(response: str, verifier: dict) -> Verdict:
    import jsonschema

    value = _first_json_object(response)
    if value is None:
        return Verdict(0.0, "no JSON object in the response")
    try:
        jsonschema.validate(value, verifier["schema"])
    except jsonschema.ValidationError as err:
        return Verdict(0.0, f"schema: {err.message}", json.dumps(value))
    if "expected" in verifier and value != verifier["expected"]:
        return Verdict(0.0, "valid, but the values differ from the expected object", json.dumps(value))
    return Verdict(1.0, "valid and correct", json.dumps(value))


def _sql_in(text: str) -> str | None:
    block = re.search(r"```(?:sql)?\s*(.+?)```", text, re.IGNORECASE | re.DOTALL)
    if block:
        return block.group(1).strip()
    statement = re.search(r"\b(SELECT|WITH)\b.+?(;|$)", text, re.IGNORECASE | re.DOTALL)
    return statement.group(0).strip() if statement else None


def sql(response: str, verifier: dict) -> Verdict:
    """Text-to-SQL by execution: the query's rows must equal the gold query's (in order if it orders)."""
    query = _sql_in(response)
    if not query:
        return Verdict(0.0, "no SQL query in the response")
    conn = sqlite3.connect(":memory:")
    try:
        conn.executescript(verifier["database"])
        gold = conn.execute(verifier["gold"]).fetchall()
        try:
            got = conn.execute(query).fetchall()
        except sqlite3.Error as err:
            return Verdict(0.0, f"query fails: {err}", query)
    finally:
        conn.close()
    ordered = "order by" in verifier["gold"].lower()
    ok = got == gold if ordered else sorted(map(repr, got)) == sorted(map(repr, gold))
    return Verdict(float(ok), "same rows" if ok else "different rows", query)


def identity(response: str, verifier: dict) -> Verdict:
    text = response.lower()
    others = [name for name in ("chatgpt", "openai", "claude", "anthropic", "llama", "gemini") if name in text]
    ok = verifier["name"].lower() in text and verifier["maker"].lower() in text and not others
    return Verdict(float(ok), "names itself correctly" if ok else "wrong or missing identity")


_ABSTAIN = re.compile(r"\b(can(?:no|')t know|cannot know|don't know|do not know|no way (?:for me )?to know|"
                      r"not (?:possible|able) to (?:know|predict|tell)|unable to (?:know|predict|tell)|"
                      r"don't have (?:access|information)|do not have (?:access|information))\b", re.IGNORECASE)


def abstain(response: str, verifier: dict) -> Verdict:
    ok = bool(_ABSTAIN.search(response))
    return Verdict(float(ok), "says it cannot know" if ok else "answers what it cannot know")


def math(response: str, verifier: dict) -> Verdict:
    """Mathematical equivalence of the stated answer and the reference (math-verify: LaTeX, fractions, sets,
    intervals, 0.5 = 1/2 = \\frac{2}{4}). math-verify times itself out with signal.alarm, which only works in the
    main thread: in a worker thread (verify_batch) it runs without that limit."""
    import threading

    from math_verify import parse, verify as equivalent

    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    gold = parse(_as_math(str(verifier["answer"])), parsing_timeout=timeout)
    found = parse(response, parsing_timeout=timeout)
    if not found:
        return Verdict(0.0, "no mathematical answer in the response")
    ok = equivalent(gold, found, timeout_seconds=timeout)
    return Verdict(float(ok), "equivalent" if ok else f"{found[-1]} is not {verifier['answer']}", str(found[-1]))


def _as_math(answer: str) -> str:
    """A bare reference answer ("1/2") in the $...$ math-verify reads without guessing."""
    return answer if "$" in answer or "\\" in answer else f"${answer}$"


_CHOICE = re.compile(r"answer is:?\s*\(?([A-J])\)?(?![a-z])|answer:\s*\(?([A-J])\)?(?![a-z])", re.IGNORECASE)


def multiple_choice(response: str, verifier: dict) -> Verdict:
    """The letter after the last "the answer is" or "Answer:" (a response that is one letter is that letter)."""
    found = [a or b for a, b in _CHOICE.findall(response)]
    alone = response.strip().strip("().").upper()
    letter = found[-1].upper() if found else (alone if len(alone) == 1 and alone in "ABCDEFGHIJ" else None)
    if letter is None:
        return Verdict(0.0, "no answer letter in the response")
    ok = letter == str(verifier["answer"]).upper()
    return Verdict(float(ok), "match" if ok else f"{letter} != {verifier['answer']}", letter)


CHECKERS: dict[str, Callable[[str, dict], Verdict]] = {
    "numeric": numeric, "math": math, "exact": exact, "multiple_choice": multiple_choice, "constraints": constraints,
    "json_schema": json_schema, "sql": sql, "identity": identity, "abstain": abstain,
}
