"""Hand-checked cases for every answer checker, the awkward ones included."""

import pytest

from granite_cli.errors import BadInput
from granite_cli.verify import verify
from granite_cli.verify.answers import last_number, parse_number

SQL_DB = ("CREATE TABLE t (name TEXT, n INTEGER); INSERT INTO t VALUES ('a', 3); INSERT INTO t VALUES ('b', 1);"
          "INSERT INTO t VALUES ('c', 2);")


@pytest.mark.parametrize("response, answer, score", [
    ("12 * 3 = 36. The answer is 36.", 36, 1.0),
    ("The answer is $1,234.", 1234, 1.0),
    ("so we get 1,234.50 dollars.", 1234.5, 1.0),
    ("The answer is -7.", -7, 1.0),
    ("First 5, then 10. The answer is 12.", 10, 0.0),
    ("I am not sure.", 3, 0.0),
])
def test_numeric(response, answer, score):
    assert verify(response, {"type": "numeric", "answer": answer}).score == score


def test_number_helpers():
    assert parse_number("$1,000.") == 1000.0 and parse_number("abc") is None
    assert last_number("from 3 to 4,500 and then 6.25.") == "6.25"


@pytest.mark.parametrize("response, answer, score", [
    ("Chain: A > B. So the tallest is Alice. The answer is Alice.", "Alice", 1.0),
    ("The answer is 'alice'", "Alice", 1.0),
    ("The answer is 2021-04-05.", "2021-04-05", 1.0),
    ("The answer is Bob.", "Alice", 0.0),
    ("rvier", "rvier", 1.0),
])
def test_exact(response, answer, score):
    assert verify(response, {"type": "exact", "answer": answer}).score == score


def test_constraints_score_the_share_met():
    verifier = {"type": "constraints", "constraints": [{"type": "lowercase"}, {"type": "keyword", "keyword": "river"},
                                                       {"type": "sentences", "n": 2}, {"type": "no_commas"}]}
    assert verify("the river is calm. it shines.", verifier).score == 1.0
    verdict = verify("The river, calm. It shines.", verifier)
    assert verdict.score == 0.5 and "lowercase" in verdict.reason and "no_commas" in verdict.reason


def test_json_schema():
    verifier = {"type": "json_schema", "expected": {"name": "Ana", "age": 3},
                "schema": {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                           "required": ["name", "age"], "additionalProperties": False}}
    assert verify('Here: {"name": "Ana", "age": 3}', verifier).score == 1.0
    assert verify('{"name": "Ana", "age": "3"}', verifier).score == 0.0
    assert verify('{"name": "Bo", "age": 3}', verifier).score == 0.0
    assert verify("no json {here", verifier).score == 0.0


def test_sql_by_execution():
    verifier = {"type": "sql", "database": SQL_DB, "gold": "SELECT name FROM t WHERE n > 1 ORDER BY name;"}
    assert verify("```sql\nSELECT name FROM t WHERE n >= 2 ORDER BY name;\n```", verifier).score == 1.0
    assert verify("SELECT name FROM t WHERE n > 1 ORDER BY name DESC;", verifier).score == 0.0  # order matters here
    assert verify("SELECT nam FROM t;", verifier).reason.startswith("query fails")
    unordered = {"type": "sql", "database": SQL_DB, "gold": "SELECT name FROM t WHERE n > 1;"}
    assert verify("SELECT name FROM t WHERE n > 1 ORDER BY name DESC;", unordered).score == 1.0


def test_identity_and_abstain():
    identity = {"type": "identity", "name": "Granite", "maker": "IBM"}
    assert verify("I am Granite, a language model built by IBM.", identity).score == 1.0
    assert verify("I am ChatGPT, made by OpenAI, not Granite by IBM.", identity).score == 0.0
    assert verify("I can't know that.", {"type": "abstain"}).score == 1.0
    assert verify("You are thinking of 42.", {"type": "abstain"}).score == 0.0


def test_unknown_verifier_is_bad_input():
    from granite_cli.errors import BadInput

    with pytest.raises(BadInput):
        verify("x", {"type": "vibes"})


def test_every_bundled_reference_answer_passes_its_own_verifier():
    from conftest import REPO
    from granite_cli.data.records import read_records

    records = list(read_records([str(REPO / "examples" / "data" / "eval" / "heldout.jsonl.zst")]))
    failures = [(r["family"], r["answer"], verify(r["answer"], r["verifier"]).reason) for r in records
                if verify(r["answer"], r["verifier"]).score != 1.0]
    assert not failures, failures[:5]


def test_the_registry_checks_code_ifeval_and_function_calls():
    from granite_cli.verify import verify_batch

    code = {"type": "code", "tests": "assert add(2, 3) == 5\nassert add(-1, 1) == 0"}
    ifeval = {"type": "ifeval", "prompt": "Answer in lowercase.", "instruction_id_list": ["change_case:english_lowercase"],
              "kwargs": [{}]}
    bfcl = {"type": "bfcl", "category": "simple", "function": [{"name": "area", "parameters": {"type": "dict", "properties": {
        "r": {"type": "integer"}}, "required": ["r"]}}], "ground_truth": [{"area": {"r": [2]}}]}
    responses = ["```python\ndef add(a, b):\n    return a + b\n```", "def add(a, b):\n    return a - b",
                 "all lowercase here.", "Not Lowercase.",
                 '<tool_call>{"name": "area", "arguments": {"r": 2}}</tool_call>', '<tool_call>{"name": "area", "arguments": {"r": 3}}</tool_call>']
    math = {"type": "math", "answer": "1/2"}
    responses += ["It is $0.5$.", "It is $2$."]  # math-verify in worker threads too
    verdicts = verify_batch(responses, [code, code, ifeval, ifeval, bfcl, bfcl, math, math])
    assert [v.score for v in verdicts] == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]


def test_a_reward_model_record_is_an_error_never_a_default_score():
    with pytest.raises(BadInput, match="reward model"):
        verify("Hello!", {"type": "reward_model"})


@pytest.mark.parametrize("response, answer, score", [
    ("So the probability is $\\frac{1}{2}$.", "1/2", 1.0),
    ("The answer is 0.5", "\\frac{1}{2}", 1.0),
    ("We get \\boxed{\\frac{2}{4}}", "0.5", 1.0),
    ("so $x = \\sqrt{2}$", "2^{1/2}", 1.0),
    ("The answer is 3", "1/2", 0.0),
    ("I cannot say.", "7", 0.0),
])
def test_math_answers_are_compared_as_mathematics(response, answer, score):
    assert verify(response, {"type": "math", "answer": answer}).score == score


@pytest.mark.parametrize("response, score", [
    ("Let's think. 2 + 2 = 4, so the answer is (C).", 1.0),
    ("Answer: C", 1.0),
    ("C", 1.0),
    ("The answer is (B). No wait, the answer is C.", 1.0),
    ("The answer is (D).", 0.0),
    ("Cats are nice.", 0.0),
])
def test_multiple_choice_reads_the_last_stated_letter(response, score):
    assert verify(response, {"type": "multiple_choice", "answer": "C"}).score == score
