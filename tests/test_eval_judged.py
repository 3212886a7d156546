"""Judged eval tasks: MT-Bench ratings and pairwise win rates, with a scripted judge on a loopback server."""

import json
import shutil

import pytest

from conftest import REPO, granite
from fake_openai import FakeOpenAI
from stages.eval.judged import bootstrap_interval, game_score, read_rating

EVAL_DATA = REPO / "runs" / "eval-data"


def mt_bench_dir(tmp_path):
    """One writing and one math question of the real MT-Bench data (make eval-data), with its judge prompts."""
    source = EVAL_DATA / "mt_bench"
    if not (source / "question.jsonl").exists():
        pytest.fail("MT-Bench data is missing: `make eval-data` extracts it (make test runs it first)")
    data = tmp_path / "data" / "mt_bench"
    shutil.copytree(source, data)
    questions = [json.loads(line) for line in (source / "question.jsonl").read_text().splitlines()]
    chosen = [next(q for q in questions if q["category"] == c) for c in ("writing", "math")]
    (data / "question.jsonl").write_text("".join(json.dumps(q) + "\n" for q in chosen))
    return data.parent


def rate_by_turn(body, attempt):
    user = body["messages"][-1]["content"]
    return "Good answer. Rating: [[9]]" if "Conversation with User" in user else "Fair. Rating: [[7]]"


def test_mt_bench_rates_both_turns_with_references_for_math(checkpoint, tmp_path):
    data = mt_bench_dir(tmp_path)
    with FakeOpenAI(rate_by_turn) as judge:
        granite("eval", checkpoint, "--tasks", "mt_bench", "--data-dir", data, "-o", tmp_path / "out", "--max-new-tokens", "4",
                "--judge", judge.url, "--judge-model", "judge", check=True)
        prompts = [b["messages"][-1]["content"] for b in judge.bodies]
    result = json.loads((tmp_path / "out" / "results.json").read_text())["tasks"]["mt_bench"]
    assert result["main_metric"] == "rating" and result["value"] == 8.0 and result["n"] == 2
    assert result["metrics"]["turn_1"] == 7.0 and result["metrics"]["turn_2"] == 9.0 and result["metrics"]["judged"] == 1.0
    assert set(result["subtasks"]) == {"writing", "math"}
    assert len(prompts) == 4 and sum("Reference Answer" in p for p in prompts) == 2  # the math question's two turns


def arena_dir(tmp_path):
    root = tmp_path / "data" / "arena_hard"
    (root / "model_answer").mkdir(parents=True)
    questions = [{"question_id": f"q{i}", "category": "arena-hard-v0.1", "cluster": "c", "turns": [{"content": f"Question {i}?"}]}
                 for i in range(4)]
    answers = [{"question_id": q["question_id"], "model_id": "gpt-4-0314",
                "choices": [{"index": 0, "turns": [{"content": f"BASELINE answer {i}", "token_len": 3}]}]}
               for i, q in enumerate(questions)]
    (root / "question.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    (root / "model_answer" / "gpt-4-0314.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))
    (tmp_path / "data" / "mt_bench").mkdir()
    shutil.copy(EVAL_DATA / "mt_bench" / "judge_prompts.jsonl", tmp_path / "data" / "mt_bench")  # the pair-v2 prompt
    return root.parent


def prefers_baseline(body, attempt):
    user = body["messages"][-1]["content"]
    first = user.split("[The Start of Assistant B's Answer]")[0]
    return "[[A]]" if "BASELINE" in first else "[[B]]"


@pytest.mark.parametrize("judge_answer, win_rate", [
    (prefers_baseline, 0.0),                       # the baseline wins both orders
    (lambda body, attempt: "[[A]]", 0.5),           # pure position bias cancels out
    (lambda body, attempt: "It is a tie. [[C]]", 0.5),
])
def test_pairwise_win_rate_against_the_baseline(checkpoint, tmp_path, judge_answer, win_rate):
    data = arena_dir(tmp_path)
    with FakeOpenAI(judge_answer) as judge:
        granite("eval", checkpoint, "--tasks", "arenahard", "--data-dir", data, "-o", tmp_path / "out", "--max-new-tokens", "4",
                "--judge", judge.url, "--judge-model", "judge", check=True)
        assert len(judge.bodies) == 8  # two games (both orders) for each of the 4 questions
    result = json.loads((tmp_path / "out" / "results.json").read_text())["tasks"]["arenahard"]
    assert result["value"] == win_rate and result["metrics"]["judged"] == 1.0
    assert result["metrics"]["win_rate_ci_low"] <= win_rate <= result["metrics"]["win_rate_ci_high"]


def test_a_judge_without_verdicts_scores_nothing(checkpoint, tmp_path):
    data = arena_dir(tmp_path)
    with FakeOpenAI(lambda body, attempt: "I cannot decide.") as judge:
        result = granite("eval", checkpoint, "--tasks", "arenahard", "--data-dir", data, "-o", tmp_path / "out",
                         "--max-new-tokens", "4", "--judge", judge.url, "--judge-model", "judge", check=True)
    document = json.loads((tmp_path / "out" / "results.json").read_text())["tasks"]["arenahard"]
    assert document["value"] is None and document["metrics"]["judged"] == 0.0 and "n/a" in result.stderr.decode()


def test_judged_tasks_need_a_judge(checkpoint, tmp_path):
    result = granite("eval", checkpoint, "--tasks", "mt_bench", "-o", tmp_path / "out")
    assert result.returncode == 2 and "need a judge" in result.stderr.decode()


def test_verdict_and_rating_extraction():
    assert read_rating("Explanation... Rating: [[8]]") == 8.0 and read_rating("Rating: [7.5]") == 7.5
    assert read_rating("no rating") is None and read_rating(None) is None
    assert game_score("[[A]]", ours_is="A") == 1.0 and game_score("[[A]]", ours_is="B") == 0.0
    assert game_score("[[C]]", ours_is="B") == 0.5 and game_score("A is better", ours_is="A") is None
    low, high = bootstrap_interval([0.0, 1.0] * 50, seed=0)
    assert 0.35 < low < 0.5 < high < 0.65


def test_alpacaeval_reads_its_own_schema(checkpoint, tmp_path):
    data = arena_dir(tmp_path)
    (data / "alpaca_eval").mkdir()
    rows = [{"dataset": "helpful_base", "instruction": f"Instruction {i}", "output": f"BASELINE output {i}",
             "generator": "gpt4_turbo"} for i in range(3)]
    (data / "alpaca_eval" / "alpaca_eval.json").write_text(json.dumps(rows))
    with FakeOpenAI(prefers_baseline) as judge:
        granite("eval", checkpoint, "--tasks", "alpacaeval", "--data-dir", data, "-o", tmp_path / "out", "--max-new-tokens", "4",
                "--judge", judge.url, "--judge-model", "judge", check=True)
    result = json.loads((tmp_path / "out" / "results.json").read_text())["tasks"]["alpacaeval"]
    assert result["n"] == 3 and result["value"] == 0.0 and set(result["subtasks"]) == {"helpful_base"}
