"""IFEval's verifiable instructions, implemented here (no nltk data: it cannot be fetched offline).

Each instruction id of the google/IFEval schema (`instruction_id_list` with one `kwargs` dict per
instruction) maps to a checker of (response, kwargs, prompt). Strict scoring checks the response as
it is; loose scoring passes an instruction when any of IFEval's relaxed variants passes (first line,
last line or both removed; asterisks removed). Reported: prompt-level (every instruction followed)
and instruction-level accuracy, strict and loose.
"""

from __future__ import annotations

import json
import re
from typing import Callable

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[A-Z0-9\"'(\[])")
_WORD = re.compile(r"\b\w+\b")


def sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def compare(count: int, relation: str, target: int) -> bool:
    return count < target if relation == "less than" else count >= target


def _letter_frequency(text, kw):
    return compare(text.lower().count(kw["letter"].lower()), kw["let_relation"], kw["let_frequency"])


def _language(text, kw):
    import langdetect

    try:
        return langdetect.detect(text) == kw["language"]
    except langdetect.LangDetectException:
        return True  # IFEval's own checker passes text whose language cannot be detected


def _paragraphs_stars(text, kw):
    parts = [p for p in re.split(r"\s?\*\*\*\s?", text)]
    if any(not p.strip() for p in parts[1:-1]):
        return False
    return len([p for p in parts if p.strip()]) == kw["num_paragraphs"]


def _nth_paragraph_first_word(text, kw):
    paragraphs = [p for p in re.split(r"\n\n", text) if p.strip()]
    if len(paragraphs) != kw["num_paragraphs"] or kw["nth_paragraph"] > len(paragraphs):
        return False
    first = paragraphs[kw["nth_paragraph"] - 1].strip().split()
    return bool(first) and re.sub(r"[^\w]", "", first[0]).lower() == kw["first_word"].lower()


def _sections(text, kw):
    return len(re.split(rf"\s?{re.escape(kw['section_spliter'])}\s?\d+\s?", text)) - 1 >= kw["num_sections"]


def _json(text, kw):
    body = text.strip().removeprefix("```json").removeprefix("```Json").removeprefix("```JSON").removeprefix("```")
    try:
        json.loads(body.removesuffix("```").strip())
        return True
    except json.JSONDecodeError:
        return False


def _two_responses(text, kw):
    parts = text.split("******")
    valid = [p.strip() for p in parts]
    return len(parts) == 2 and all(valid) and valid[0] != valid[1]


def _capital_words(text, kw):
    return compare(len([w for w in words(text) if w.isupper()]), kw["capital_relation"], kw["capital_frequency"])


CHECKERS: dict[str, Callable[[str, dict, str], bool]] = {
    "keywords:existence": lambda t, kw, p: all(re.search(re.escape(k), t, re.IGNORECASE) for k in kw["keywords"]),
    "keywords:frequency": lambda t, kw, p: compare(len(re.findall(re.escape(kw["keyword"]), t, re.IGNORECASE)),
                                                   kw["relation"], kw["frequency"]),
    "keywords:forbidden_words": lambda t, kw, p: not any(re.search(rf"\b{re.escape(w)}\b", t, re.IGNORECASE)
                                                         for w in kw["forbidden_words"]),
    "keywords:letter_frequency": lambda t, kw, p: _letter_frequency(t, kw),
    "language:response_language": lambda t, kw, p: _language(t, kw),
    "length_constraints:number_sentences": lambda t, kw, p: compare(len(sentences(t)), kw["relation"], kw["num_sentences"]),
    "length_constraints:number_paragraphs": lambda t, kw, p: _paragraphs_stars(t, kw),
    "length_constraints:number_words": lambda t, kw, p: compare(len(words(t)), kw["relation"], kw["num_words"]),
    "length_constraints:nth_paragraph_first_word": lambda t, kw, p: _nth_paragraph_first_word(t, kw),
    "detectable_content:number_placeholders": lambda t, kw, p: len(re.findall(r"\[.*?\]", t)) >= kw["num_placeholders"],
    "detectable_content:postscript": lambda t, kw, p: re.search(
        r"\s*p\.\s?p\..*$" if kw["postscript_marker"].lower() == "p.p.s" else rf"\s*{re.escape(kw['postscript_marker'].lower())}.*$",
        t.lower(), re.MULTILINE) is not None,
    "detectable_format:number_bullet_lists": lambda t, kw, p: len(re.findall(r"^\s*[\*\-]\s[^\*\-]", t, re.MULTILINE))
                                                              == kw["num_bullets"],
    "detectable_format:constrained_response": lambda t, kw, p: any(
        option in t for option in ("My answer is yes.", "My answer is no.", "My answer is maybe.")),
    "detectable_format:number_highlighted_sections": lambda t, kw, p: len(
        [h for h in re.findall(r"\*[^\n\*]+\*", t) + re.findall(r"\*\*[^\n\*]+\*\*", t) if h.strip("*").strip()])
        >= kw["num_highlights"],
    "detectable_format:multiple_sections": lambda t, kw, p: _sections(t, kw),
    "detectable_format:json_format": lambda t, kw, p: _json(t, kw),
    "detectable_format:title": lambda t, kw, p: any(x.strip() for x in re.findall(r"<<([^\n]+)>>", t)),
    "combination:two_responses": lambda t, kw, p: _two_responses(t, kw),
    "combination:repeat_prompt": lambda t, kw, p: t.strip().lower().startswith(kw["prompt_to_repeat"].strip().lower()),
    "startend:end_checker": lambda t, kw, p: t.strip().strip('"').lower().endswith(kw["end_phrase"].strip().lower()),
    "startend:quotation": lambda t, kw, p: len(t.strip()) > 1 and t.strip()[0] == '"' and t.strip()[-1] == '"',
    "change_case:capital_word_frequency": lambda t, kw, p: _capital_words(t, kw),
    "change_case:english_capital": lambda t, kw, p: t.isupper() and _language(t, {"language": "en"}),
    "change_case:english_lowercase": lambda t, kw, p: t.islower() and _language(t, {"language": "en"}),
    "punctuation:no_comma": lambda t, kw, p: "," not in t,
}


def loose_variants(text: str) -> list[str]:
    lines = text.split("\n")
    bases = [text, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return bases + [b.replace("*", "") for b in bases]


def follows(instruction: str, text: str, kwargs: dict, prompt: str) -> bool:
    kwargs = {k: v for k, v in (kwargs or {}).items() if v is not None}
    return bool(text.strip()) and CHECKERS[instruction](text, kwargs, prompt)


def score(item: dict, output: str) -> dict:
    ids, kwargs = item["instruction_id_list"], item["kwargs"]
    strict = [follows(i, output, kw, item["prompt"]) for i, kw in zip(ids, kwargs)]
    loose = [any(follows(i, v, kw, item["prompt"]) for v in loose_variants(output) if v) for i, kw in zip(ids, kwargs)]
    failed = [i for i, ok in zip(ids, strict) if not ok]
    levels = {"prompt_level_strict": float(all(strict)), "inst_level_strict": sum(strict) / len(strict),
              "prompt_level_loose": float(all(loose)), "inst_level_loose": sum(loose) / len(loose)}
    # IBM reports "IFEval (avg)": the mean of the four accuracies
    return {**levels, "average": sum(levels.values()) / 4,
            "reason": "all followed" if not failed else "not followed: " + ", ".join(failed)}
