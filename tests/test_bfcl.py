"""BFCL v3 AST checking: the possible answers themselves pass, and each kind of wrong call fails for its reason."""

import json

import pytest

from conftest import REPO
from granite_cli.verify import bfcl

DATA = REPO / "runs" / "eval-data"


def answer(calls: list[dict]) -> str:
    return "".join(f"<tool_call>{json.dumps({'name': n, 'arguments': a})}</tool_call>" for c in calls for n, a in c.items())


def resolve(option):
    """A concrete value from a possible answer: inside dicts, every key lists its allowed values."""
    if isinstance(option, dict):
        return {k: resolve(v[0]) if isinstance(v, list) else v for k, v in option.items() if not (isinstance(v, list) and v[0] == "")}
    if isinstance(option, list):
        return [resolve(x) for x in option]
    return option


def first_allowed(ground_truth: list[dict]) -> list[dict]:
    """A call built from the first non-empty allowed value of every parameter (optional ones without one left out)."""
    calls = []
    for expected in ground_truth:
        (name, allowed), = expected.items()
        given = {p: [o for o in options if o != ""] for p, options in allowed.items()}
        calls.append({name: {p: resolve(options[0]) for p, options in given.items() if options}})
    return calls


@pytest.mark.parametrize("category", bfcl.CATEGORIES)
def test_possible_answers_pass_their_own_checker(category):
    items = bfcl.load(DATA, category)
    assert items
    for item in items:
        output = answer(first_allowed(item["ground_truth"]))
        assert bfcl.score(item, output)["accuracy"] == 1.0, (item["id"], bfcl.score(item, output)["reason"])


ITEM = {"category": "simple", "function": [{"name": "area", "parameters": {"type": "dict", "properties": {
    "base": {"type": "integer"}, "height": {"type": "float"}, "unit": {"type": "string"}}, "required": ["base", "height"]}}],
    "ground_truth": [{"area": {"base": [10], "height": [5.0], "unit": ["square meters", ""]}}]}


@pytest.mark.parametrize("calls, ok, reason", [
    ([{"area": {"base": 10, "height": 5}}], 1.0, "all calls match"),  # an int where a float is expected is fine
    ([{"area": {"base": 10, "height": 5.0, "unit": "Square_Meters"}}], 1.0, "all calls match"),  # normalized string
    ([{"area": {"base": 10.0, "height": 5.0}}], 0.0, "base=10.0"),  # a float where an int is expected is not
    ([{"volume": {"base": 10, "height": 5.0}}], 0.0, "called 'volume'"),
    ([{"area": {"base": 10}}], 0.0, "missing required parameter 'height'"),
    ([{"area": {"base": 10, "height": 5.0, "color": "red"}}], 0.0, "unexpected parameter 'color'"),
    ([{"area": {"base": 11, "height": 5.0}}], 0.0, "base=11"),
    ([], 0.0, "0 call(s)"),
])
def test_hand_checked_calls(calls, ok, reason):
    result = bfcl.score(ITEM, answer(calls))
    assert result["accuracy"] == ok and reason in result["reason"]


def test_parallel_calls_match_in_any_order_and_malformed_json_fails():
    item = {**ITEM, "category": "parallel",
            "ground_truth": [{"area": {"base": [1], "height": [2.0]}}, {"area": {"base": [3], "height": [4.0]}}]}
    swapped = [{"area": {"base": 3, "height": 4.0}}, {"area": {"base": 1, "height": 2.0}}]
    assert bfcl.score(item, answer(swapped))["accuracy"] == 1.0
    twice = [{"area": {"base": 1, "height": 2.0}}, {"area": {"base": 1, "height": 2.0}}]
    assert bfcl.score(item, answer(twice))["accuracy"] == 0.0
    assert bfcl.score(ITEM, '<tool_call>{"name": "area", "arguments": {</tool_call>')["reason"] == "a tool call is not valid JSON"


def test_irrelevance_rewards_not_calling():
    item = {**ITEM, "category": "irrelevance", "ground_truth": []}
    assert bfcl.score(item, "None of the tools can answer that.")["accuracy"] == 1.0
    assert bfcl.score(item, answer([{"area": {"base": 1, "height": 2.0}}]))["accuracy"] == 0.0


def test_tools_are_rendered_as_json_schema():
    [tool] = bfcl.tools(ITEM)
    assert tool["parameters"]["type"] == "object" and tool["parameters"]["properties"]["height"]["type"] == "number"
