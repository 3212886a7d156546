"""The bundled sample data: every recipe source has documents, and held-out tasks never leak into training."""

import re

from conftest import REPO
from granite_cli.recipe import load_recipe
from granite_cli.data.records import read_records

DATA = REPO / "examples" / "data"


def prompts(path):
    for record in read_records([str(path)]):
        for message in record.get("messages", []):
            if message["role"] == "user":
                yield message["content"]


def test_every_source_of_both_recipes_has_documents():
    tiny = load_recipe("tiny")
    for name in load_recipe("granite-4.1").sources:
        files = tiny.sources[name].files()
        assert files, name
        first = next(read_records(files, require_text=True))
        assert first["source"] == name and first["text"]


def test_heldout_prompts_never_appear_in_training_data():
    heldout = set(prompts(DATA / "eval" / "heldout.jsonl.zst"))
    assert len(heldout) >= 300
    training = set()
    for path in [DATA / "chat" / "sft.jsonl.zst", DATA / "chat" / "preference.jsonl.zst", *(DATA / "rl").glob("*.zst")]:
        training.update(prompts(path))
    for record in read_records([str(p) for p in (DATA / "pretrain").glob("*.zst")]):
        training.update(re.findall(r"(?:Problem|Question|### Instruction)\n?:? ?(.+)", record["text"]))
    multi_turn = {p.removeprefix("Thanks. Another one: ") for p in training}
    assert not heldout & (training | multi_turn)


def test_every_task_family_and_rl_domain_is_present():
    families = {r["family"] for r in read_records([str(DATA / "eval" / "heldout.jsonl.zst")])}
    assert len(families) == 11
    domains = {r["domain"] for r in read_records([str(DATA / "rl" / "multi-domain.jsonl.zst")])}
    assert domains == {"math", "science", "logic", "instruction_following", "structured_output", "text_to_sql",
                       "temporal", "general_chat", "in_context_learning"}
    sft = list(read_records([str(DATA / "chat" / "sft.jsonl.zst")]))
    assert any(r.get("tools") for r in sft) and any(r.get("documents") for r in sft)
    assert any(len([m for m in r["messages"] if m["role"] == "user"]) > 1 for r in sft)
    assert {r.get("meta", {}).get("defect") for r in sft} >= {"wrong_answer", "unknown_tool", "ungrounded", "duplicate"}


def test_arithmetic_rule_answers_are_what_the_arithmetic_gives():
    """The family's answers come from a rule (a number minus itself is 0); computing each prompt checks the rule."""
    rules = [r for r in read_records([str(DATA / "eval" / "heldout.jsonl.zst")]) if r["family"] == "arithmetic_rule"]
    assert len(rules) == 40
    for record in rules:
        prompt = record["messages"][-1]["content"]
        expression = re.sub(r"^(What is|Compute) |[?.]$", "", prompt).replace(" to the power of ", " ** ").replace("^", " ** ")
        assert eval(expression, {"__builtins__": {}}) == float(record["answer"]), prompt


def test_make_all_evaluates_every_heldout_task():
    """`make all` evaluates the first EVAL_LIMIT items of a task: a family added to the data must not fall past it."""
    from stages.eval import parse_limits

    makefile = (REPO / "Makefile").read_text()
    tasks, limit = (re.search(rf"^{name} \?= ?(.*)$", makefile, re.M).group(1) for name in ("EVAL_TASKS", "EVAL_LIMIT"))
    heldout = parse_limits(limit, tasks.split(","))["heldout"]
    assert heldout is None or len(list(read_records([str(DATA / "eval" / "heldout.jsonl.zst")]))) <= heldout


def test_sources_md_lists_every_file():
    listed = (DATA / "SOURCES.md").read_text()
    for path in DATA.rglob("*.zst"):
        assert str(path.relative_to(DATA)) in listed
