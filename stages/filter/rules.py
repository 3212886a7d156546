"""The deterministic checks of the filter stage: each a small named function, no judge needed.

`normalize` rewrites a sample (and says what it changed); every other rule takes the normalized
sample and its settings and returns the reasons it rejects the sample (an empty list: it passes).
`RULES` maps the names a recipe's `[filter] checks` or `--checks` uses to the functions;
`DEFAULT_SETTINGS` holds each check's documented defaults, which `[filter.settings.NAME]` in a recipe
or `--set NAME.KEY=VALUE` tune.
"""

from __future__ import annotations

import ast
import json
import operator
import re
import unicodedata
from typing import Callable

import orjson

from granite_cli.data.chat import normalize_sample, schema_problems, tool_call_arguments


# ------------------------------------------------------------------ normalization
_INVISIBLE = re.compile("[\u200b\u200c\u200d\u2060\ufeff\u00ad]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_BLANK_RUN = re.compile(r"\n{3,}")


def normalize_text(text: str) -> tuple[str, list[str]]:
    """NFC, newlines as \\n, no invisible or control characters, at most one blank line in a row, trimmed ends."""
    steps = [
        ("newlines", lambda t: t.replace("\r\n", "\n").replace("\r", "\n")),
        ("unicode NFC", lambda t: unicodedata.normalize("NFC", t)),
        ("invisible characters", lambda t: _INVISIBLE.sub("", t)),
        ("control characters", lambda t: _CONTROL.sub("", t)),
        ("blank lines", lambda t: _BLANK_RUN.sub("\n\n", t)),
        ("surrounding whitespace", str.strip),
    ]
    changes = []
    for name, step in steps:
        new = step(text)
        if new != text:
            changes.append(name)
            text = new
    return text, changes


def normalize(sample: dict) -> tuple[dict, list[str]]:
    """The sample in our shape (OpenAI-style tools and calls unwrapped) with every message and document text
    normalized, and a list of what changed where."""
    sample = normalize_sample(sample)
    changes: list[str] = []
    out = {**sample, "messages": _normalized(sample.get("messages") or [], "messages", "content", changes)}
    if "documents" in sample:
        out["documents"] = _normalized(sample.get("documents") or [], "documents", "text", changes)
    return out, changes


def _normalized(items: list, name: str, key: str, changes: list[str]) -> list:
    out = []
    for i, item in enumerate(items):
        if isinstance(item, dict) and isinstance(item.get(key), str):
            text, changed = normalize_text(item[key])
            if changed:
                changes.append(f"{name}[{i}].{key}: {', '.join(changed)}")
                item = {**item, key: text}
        out.append(item)
    return out


# ------------------------------------------------------------------ helpers
def assistant_turns(sample: dict) -> list[tuple[int, dict]]:
    return [(i, m) for i, m in enumerate(sample["messages"]) if m.get("role") == "assistant"]


def assistant_text(sample: dict) -> str:
    """Everything the assistant says, tool calls included: what near-dedup and repetition look at."""
    parts = []
    for _, message in assistant_turns(sample):
        parts.append(message.get("content") or "")
        parts.extend(orjson.dumps(call, option=orjson.OPT_SORT_KEYS).decode() for call in message.get("tool_calls") or [])
    return "\n".join(p for p in parts if p)


# ------------------------------------------------------------------ schema
def check_schema(sample: dict, settings: dict) -> list[str]:
    """The shape every reader of chat samples checks (granite_cli/data/chat.py)."""
    return schema_problems(sample)


# ------------------------------------------------------------------ tool calls
def check_tool_calls(sample: dict, settings: dict) -> list[str]:
    """Every call names a tool of the sample's list, and its arguments satisfy that tool's JSON schema."""
    import jsonschema

    tools = {t["name"]: t for t in sample.get("tools") or [] if isinstance(t, dict) and "name" in t}
    problems = []
    for i, message in assistant_turns(sample):
        for call in message.get("tool_calls") or []:
            name = call.get("name")
            if name not in tools:
                known = ", ".join(sorted(tools)) or "none"
                problems.append(f"messages[{i}] calls {name!r}, which is not in the tool list ({known})")
                continue
            try:
                arguments = tool_call_arguments(call)
            except json.JSONDecodeError:
                continue  # the schema rule reports unparsable arguments
            schema = tools[name].get("parameters") or {"type": "object"}
            try:
                error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(arguments))
            except jsonschema.exceptions.SchemaError as err:
                problems.append(f"tool {name!r} has an invalid parameter schema: {err.message}")
                continue
            if error is not None:
                where = "/".join(str(p) for p in error.absolute_path)
                problems.append(f"messages[{i}] calls {name!r} with bad arguments{' at ' + where if where else ''}: {error.message}")
    return problems


# ------------------------------------------------------------------ computation
_NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
_EXPRESSION = re.compile(
    rf"(?<![\w.,/*+^×)-])(?<![/*+^×-]\s)((?:\(\s*)*(?:{_NUM})(?:\s*\)*\s*[-+*/×x^]\s*(?:\(\s*)*(?:{_NUM})\s*\)*)+)\s*=\s*(-?(?:{_NUM}))(?![\w.,]\d)")
_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
              ast.Pow: operator.pow}


def _evaluate(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 64:
            raise ValueError("exponent too large to check")
        return _OPERATORS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_evaluate(node.operand)
    raise ValueError("not plain arithmetic")


def stated_computations(text: str) -> list[tuple[str, float, str]]:
    """(expression, its value, the stated result) for every `a op b = c` in the text that is plain arithmetic."""
    found = []
    for match in _EXPRESSION.finditer(text):
        expression, stated = match.group(1), match.group(2)
        python = expression.replace(",", "").replace("×", "*").replace("^", "**")
        python = re.sub(r"(?<=[\d)\s])x(?=[\s(\d])", "*", python)
        if python.count("(") != python.count(")"):
            continue
        try:
            value = _evaluate(ast.parse(python, mode="eval").body)
        except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, RecursionError):
            continue
        found.append((expression.strip(), value, stated))
    return found


def _agrees(value: float, stated: str) -> bool:
    """The stated result equals the value; a non-integer value may be rounded to the decimals shown."""
    target = float(stated.replace(",", ""))
    if value == int(value) and "." not in stated:
        return value == target
    decimals = len(stated.split(".")[1]) if "." in stated else 0
    return abs(value - target) <= 0.5 * 10 ** -decimals + 1e-9 * abs(value)


def check_computation(sample: dict, settings: dict) -> list[str]:
    """Arithmetic the assistant states (`17 * 23 = 391`) is recomputed; a wrong result is an incorrect computation."""
    problems = []
    for i, message in assistant_turns(sample):
        for expression, value, stated in stated_computations(message.get("content") or ""):
            if not _agrees(value, stated):
                problems.append(f"messages[{i}] states {expression} = {stated}, but it is {value:g}")
    return problems


# ------------------------------------------------------------------ grounding
_GROUNDABLE_NUMBER = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?")


def _numbers(text: str, min_digits: int) -> set[str]:
    found = (n.replace(",", "").rstrip(".") for n in _GROUNDABLE_NUMBER.findall(text))
    return {n for n in found if sum(c.isdigit() for c in n) >= min_digits}


def check_grounding(sample: dict, settings: dict) -> list[str]:
    """In a RAG sample, every number the assistant states must appear in the documents or the conversation.

    A cheap stand-in for the judge's hallucination flag: it catches invented figures, not invented words.
    """
    if not sample.get("documents"):
        return []
    min_digits = int(settings["min_digits"])
    given = set()
    for document in sample["documents"]:
        given |= _numbers(document.get("text", ""), min_digits)
    problems = []
    for i, message in enumerate(sample["messages"]):
        if message["role"] != "assistant":
            given |= _numbers(message.get("content") or "", min_digits)
            continue
        unsupported = sorted(_numbers(message.get("content") or "", min_digits) - given)
        if unsupported:
            problems.append(f"messages[{i}] states {', '.join(unsupported[:5])}, found in no document or earlier turn")
        given |= _numbers(message.get("content") or "", min_digits)
    return problems


# ------------------------------------------------------------------ length and truncation
def check_length(sample: dict, settings: dict) -> list[str]:
    """The rendered conversation fits `max_tokens` (counted with the tokenizer, or estimated from UTF-8 bytes)."""
    count = settings["count_tokens"](sample)
    limit = int(settings["max_tokens"])
    return [f"{count} tokens, over the limit of {limit}"] if count > limit else []


_DANGLING = re.compile(r"(?:[,:(\[{-]|\b(?:and|or|but|the|a|an|of|to|with|because|which|that|is))$", re.IGNORECASE)


def check_truncated(sample: dict, settings: dict) -> list[str]:
    """The final answer was cut off: a generator's finish_reason 'length', an open code fence or JSON, a dangling word."""
    if (sample.get("meta") or {}).get("finish_reason") == "length":
        return ["meta.finish_reason is 'length': the generator stopped at its token limit"]
    turns = assistant_turns(sample)
    index, last = turns[-1] if turns else (None, {})
    content = last.get("content") or ""
    if not content:
        return []
    if content.count("```") % 2:
        return [f"messages[{index}] ends inside an open code block"]
    if content.lstrip().startswith(("{", "[")) and _unbalanced(content):
        return [f"messages[{index}] is JSON that is never closed"]
    if _DANGLING.search(content):
        return [f"messages[{index}] ends mid-sentence ({content[-20:]!r})"]
    return []


def _unbalanced(text: str) -> bool:
    depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
    return depth > 0


# ------------------------------------------------------------------ leakage
_CONTROL_TOKEN = re.compile(r"<\|[A-Za-z_]+\|>|\[/?INST\]|<</?SYS>>")


def check_leakage(sample: dict, settings: dict) -> list[str]:
    """No chat-template control token inside any content, and no benchmark prompt from the decontamination list."""
    problems = []
    for i, message in enumerate(sample["messages"]):
        token = _CONTROL_TOKEN.search(message.get("content") or "")
        if token:
            problems.append(f"messages[{i}] contains the control token {token.group(0)}")
    for i, document in enumerate(sample.get("documents") or []):
        token = _CONTROL_TOKEN.search(document.get("text", ""))
        if token:
            problems.append(f"documents[{i}] contains the control token {token.group(0)}")
    benchmark = settings.get("benchmark")
    if benchmark:
        for i, message in enumerate(sample["messages"]):
            found = benchmark.contained_in(message.get("content") or "")
            if found:
                problems.append(f"messages[{i}] contains a benchmark prompt: {found[:80]!r}")
    return problems


def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """Lower-cased word n-grams; a text shorter than n words is one n-gram of all its words."""
    words = re.findall(r"\w+", text.lower())
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


class BenchmarkIndex:
    """Benchmark prompts by their word n-grams: a text contains a prompt when it holds at least `overlap` of
    that prompt's n-grams. One shared n-gram is not enough: templated prompts ("What date is N days after
    D?") share their template with the benchmark's, and only a real copy shares most of them."""

    def __init__(self, paths: list[str], n: int, overlap: float):
        from granite_cli.data.records import read_records

        self.n, self.overlap = n, overlap
        self.prompts: list[str] = []
        self.sizes: list[int] = []
        self.postings: dict[tuple[str, ...], list[int]] = {}
        for record in read_records(paths):
            texts = [m.get("content", "") for m in record.get("messages") or [] if m.get("role") == "user"]
            texts += [record[k] for k in ("prompt", "question") if isinstance(record.get(k), str)]
            for text in texts:
                grams = word_ngrams(text, n)
                if grams:
                    for gram in grams:
                        self.postings.setdefault(gram, []).append(len(self.prompts))
                    self.prompts.append(text)
                    self.sizes.append(len(grams))

    def __bool__(self) -> bool:
        return bool(self.prompts)

    def contained_in(self, text: str) -> str | None:
        """The first benchmark prompt the text contains, or None."""
        hits: dict[int, int] = {}
        for gram in word_ngrams(text, self.n):
            for prompt in self.postings.get(gram, ()):
                hits[prompt] = hits.get(prompt, 0) + 1
        for prompt, count in hits.items():
            if count >= self.overlap * self.sizes[prompt]:
                return self.prompts[prompt]
        return None


# ------------------------------------------------------------------ repetition
def check_repetition(sample: dict, settings: dict) -> list[str]:
    """An assistant turn stuck in a loop: too large a share of its word n-grams are repeats."""
    n, limit, min_words = int(settings["ngram"]), float(settings["max_repeated_fraction"]), int(settings["min_words"])
    problems = []
    for i, message in assistant_turns(sample):
        words = re.findall(r"\w+", (message.get("content") or "").lower())
        if len(words) < max(min_words, n):
            continue
        grams = [tuple(words[j:j + n]) for j in range(len(words) - n + 1)]
        repeated = 1 - len(set(grams)) / len(grams)
        if repeated > limit:
            problems.append(f"messages[{i}] repeats itself: {repeated:.0%} of its {n}-grams are repeats (limit {limit:.0%})")
    return problems


RULES: dict[str, Callable[[dict, dict], list[str]]] = {
    "schema": check_schema,
    "tool_calls": check_tool_calls,
    "computation": check_computation,
    "grounding": check_grounding,
    "length": check_length,
    "truncated": check_truncated,
    "leakage": check_leakage,
    "repetition": check_repetition,
}

DEFAULT_SETTINGS: dict[str, dict] = {
    "grounding": {"min_digits": 2},
    "length": {"max_tokens": 16384},
    "leakage": {"ngram": 8, "overlap": 0.5, "decontaminate": []},
    "repetition": {"ngram": 3, "max_repeated_fraction": 0.3, "min_words": 30},
}
