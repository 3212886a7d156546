"""BFCL v3 (Berkeley Function Calling Leaderboard) AST evaluation for the single-turn categories.

The model sees the question with the functions listed through the Granite chat format's `tools`,
answers with `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks, and each call is
checked against BFCL's possible answers the way its AST checker does: the right function names;
every required parameter present and none the function lacks; each value among the allowed ones
("" among them means the parameter may be left out); an int accepted where a float is expected;
strings compared after removing spaces and , . / - _ * ^ and case. Parallel categories need every
expected call matched by a distinct model call, in any order. In `irrelevance` no function fits,
and the answer is right when it makes no call.
"""

from __future__ import annotations

import json
import re

CATEGORIES = ("simple", "multiple", "parallel", "parallel_multiple", "irrelevance")
_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
_STRIP = re.compile(r"[ ,./\-_*^]")


def load(data_dir, category: str) -> list[dict]:
    """Questions and functions, joined with their possible answers (irrelevance has none)."""
    root = data_dir / "bfcl"
    questions = _read(root / f"BFCL_v3_{category}.json")
    if category == "irrelevance":
        return [{**q, "category": category, "ground_truth": []} for q in questions]
    answers = {a["id"]: a["ground_truth"] for a in _read(root / "possible_answer" / f"BFCL_v3_{category}.json")}
    return [{**q, "category": category, "ground_truth": answers[q["id"]]} for q in questions]


def _read(path) -> list[dict]:
    from granite_cli.errors import BadInput

    if not path.exists():
        raise BadInput(f"no BFCL data at {path}: run `make eval-data` (extracted from the nvidia-bfcl package)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def messages(item: dict) -> list[dict]:
    return item["question"][0]


def tools(item: dict) -> list[dict]:
    """BFCL's functions as JSON-schema tools (its Python-flavoured "dict" type is an object)."""
    return [{**f, "parameters": _schema(f.get("parameters", {}))} for f in item["function"]]


def _schema(node):
    if isinstance(node, dict):
        node = {k: _schema(v) for k, v in node.items()}
        if node.get("type") == "dict":
            node["type"] = "object"
        elif node.get("type") in ("float", "tuple"):
            node["type"] = "number" if node["type"] == "float" else "array"
        return node
    if isinstance(node, list):
        return [_schema(v) for v in node]
    return node


def parse_calls(output: str) -> list[dict] | None:
    """The calls in a response, as [{name: arguments}]; None when a call block is not valid JSON."""
    calls = []
    for block in _CALL.findall(output):
        try:
            call = json.loads(block)
            arguments = call.get("arguments", {})
            if isinstance(arguments, str):
                arguments = json.loads(arguments)
            calls.append({call["name"]: arguments})
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            return None
    return calls


def score(item: dict, output: str) -> dict:
    calls = parse_calls(output)
    if item["category"] == "irrelevance":
        ok = not calls
        return {"accuracy": float(ok), "reason": "no call" if ok else "called a function where none fits"}
    if calls is None:
        return {"accuracy": 0.0, "reason": "a tool call is not valid JSON"}
    functions = {f["name"]: f for f in item["function"]}
    expected = item["ground_truth"]
    if len(calls) != len(expected):
        return {"accuracy": 0.0, "reason": f"{len(calls)} call(s), expected {len(expected)}"}
    unmatched = list(range(len(calls)))
    for want in expected:
        match = next((i for i in unmatched if check_call(calls[i], want, functions) is None), None)
        if match is None:
            reason = check_call(calls[unmatched[0]], want, functions) if len(expected) == 1 else "no call matches one expected call"
            return {"accuracy": 0.0, "reason": reason}
        unmatched.remove(match)
    return {"accuracy": 1.0, "reason": "all calls match"}


def check_call(call: dict, expected: dict, functions: dict) -> str | None:
    """None when the call matches the expected one, else why not."""
    (name, arguments), = call.items()
    (want_name, allowed), = expected.items()
    if name != want_name:
        return f"called {name!r}, expected {want_name!r}"
    if not isinstance(arguments, dict):
        return "arguments are not an object"
    spec = functions.get(name, {}).get("parameters", {})
    properties, required = spec.get("properties", {}), spec.get("required", [])
    for param in arguments:
        if param not in allowed and param not in properties:
            return f"unexpected parameter {param!r}"
    for param in required:
        if param not in arguments:
            return f"missing required parameter {param!r}"
    for param, options in allowed.items():
        if param not in arguments:
            if "" not in options:
                return f"missing parameter {param!r}"
            continue
        kind = properties.get(param, {}).get("type")
        if not any(same_value(arguments[param], option, kind) for option in options if option != "" or arguments[param] == ""):
            return f"{param}={arguments[param]!r} is not among {options!r}"
    return None


def same_value(value, option, kind=None) -> bool:
    numbers = (int, float)
    if kind == "float" and isinstance(value, numbers) and isinstance(option, numbers) and not isinstance(value, bool):
        return float(value) == float(option)  # a float parameter takes an int; its answers may be written either way
    if isinstance(option, str) and isinstance(value, str):
        return _STRIP.sub("", value).lower().replace("'", '"') == _STRIP.sub("", option).lower().replace("'", '"')
    if isinstance(option, list) and isinstance(value, list):
        return len(value) == len(option) and all(same_value(v, o) for v, o in zip(value, option))
    if isinstance(option, dict) and isinstance(value, dict):
        return option.keys() == value.keys() and all(
            any(same_value(value[k], o) for o in (option[k] if isinstance(option[k], list) else [option[k]])) for k in option)
    if type(value) is bool or type(option) is bool:
        return value is option
    if isinstance(option, float) and isinstance(value, int):
        return float(value) == option
    return type(value) is type(option) and value == option
