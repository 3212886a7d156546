"""granite eval: scoring agrees with hand-checked cases, code runs in the sandbox, the CLI writes its contract."""

import gzip
import json
import shutil

import pytest

from conftest import REPO, granite
from granite_cli.errors import BadInput
from fake_openai import FakeOpenAI
from stages.eval.runner import pass_at_k
from stages.eval.tasks import bbh_score, code_score, deepmind_math_score, extract_completion, gsm8k_score, mbpp_score, mmlu_pro_score

HUMANEVAL = REPO / "runs" / "eval-data" / "humaneval" / "HumanEval.jsonl.gz"
FIXTURES = REPO / "tests" / "fixtures" / "eval"


def humaneval():
    if not HUMANEVAL.exists():
        pytest.fail("HumanEval data is missing: `make eval-data` extracts it (make test runs it first)")
    with gzip.open(HUMANEVAL, "rt") as f:
        return [json.loads(line) for line in f]


def test_humaneval_canonical_solutions_all_pass():
    problems = humaneval()
    assert len(problems) == 164
    failed = [p["task_id"] for p in problems if code_score(p, p["canonical_solution"])["pass@1"] != 1.0]
    assert not failed


@pytest.mark.parametrize("completion, status", [
    ("    return None\n", "failed"),  # wrong answer
    ("    while True:\n        pass\n", "timeout"),  # loops forever
    ("    import os\n    while True:\n        os.fork()\n", "failed"),  # fork bomb: fork fails at the sandbox's process limit
    ("    return x +\n", "failed"),  # syntax error
])
def test_wrong_code_scores_zero(completion, status):
    problem = humaneval()[0]
    result = code_score(problem, completion, timeout=3)
    assert result["pass@1"] == 0.0 and result["status"] == status


def test_chat_style_answers_are_reduced_to_the_body():
    problem = humaneval()[2]  # truncate_number
    answer = f"Sure!\n```python\ndef {problem['entry_point']}(number: float) -> float:\n    return number % 1.0\n```\nDone."
    assert extract_completion(problem, answer) == "    return number % 1.0\n"
    assert code_score(problem, answer)["pass@1"] == 1.0


@pytest.mark.parametrize("output, strict, flexible", [
    ("3 * 12 = 36\n#### 36", 1.0, 1.0),
    ("The answer is 36.", 0.0, 1.0),
    ("#### $36.", 0.0, 1.0),  # strict regex wants digits right after '#### '
    ("#### 36.00", 1.0, 1.0),
    ("#### 3,6", 1.0, 1.0),
    ("first 36 then 40", 0.0, 0.0),
])
def test_gsm8k_extractions(output, strict, flexible):
    scores = gsm8k_score({"answer": "12 * 3 = 36\n#### 36"}, output)
    assert (scores["exact_match_strict"], scores["exact_match_flexible"]) == (strict, flexible)


def test_gsm8k_gold_with_thousands_separator():
    assert gsm8k_score({"answer": "... #### 2,400"}, "#### 2400")["exact_match_strict"] == 1.0


def test_mbpp_reference_code_passes_and_markers_are_stripped():
    items = [json.loads(line) for line in (FIXTURES / "mbpp" / "test.jsonl").read_text().splitlines()]
    for item in items:
        assert mbpp_score(item, f"[BEGIN]\n{item['code']}\n[DONE]")["pass@1"] == 1.0
        assert mbpp_score(item, f"Here you go:\n```python\n{item['code']}\n```")["pass@1"] == 1.0
    assert mbpp_score(items[0], "def square_all(xs):\n    return xs")["pass@1"] == 0.0


@pytest.mark.parametrize("output, score", [
    ("6 * 7 = 42. The answer is (C).", 1.0),
    ("the answer is C", 1.0),
    ("The answer is (B). Wait, the answer is (C).", 1.0),  # the last statement counts
    ("Answer: C", 1.0),
    ("The answer is (D).", 0.0),
    ("I think 42.", 0.0),
])
def test_mmlu_pro_extraction(output, score):
    assert mmlu_pro_score({"answer": "C"}, output)["exact_match"] == score


@pytest.mark.parametrize("output, target, score", [
    ("not True is False. So the answer is False.", "False", 1.0),
    ("So the answer is (A).", "(A)", 1.0),
    ("So the answer is True.", "False", 0.0),
    ("I do not know", "False", 0.0),
])
def test_bbh_extraction(output, target, score):
    assert bbh_score({"target": target}, output)["exact_match"] == score


@pytest.mark.parametrize("output, answer, score", [
    ("-3 + 8 = 5. The answer is 5.", "5", 1.0),
    ("x = 3.0, so the answer is 3.0.", "3", 1.0),
    ("The answer is 7/2.", "3.5", 0.0),
    ("The answer is a + b.", "a + b", 1.0),
])
def test_deepmind_math_extraction(output, answer, score):
    assert deepmind_math_score({"answer": answer}, output)["exact_match"] == score


def test_pass_at_k_estimator():
    assert pass_at_k(10, 5, 1) == pytest.approx(0.5)
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 1, 10) == 1.0
    assert pass_at_k(4, 2, 2) == pytest.approx(1 - 1 / 6)  # 1 - C(2,2)/C(4,2)


def test_eval_cli_writes_results_and_samples(checkpoint, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(FIXTURES, data)
    shutil.copytree(HUMANEVAL.parent, data / "humaneval")
    shutil.copytree(REPO / "runs" / "eval-data" / "bfcl", data / "bfcl")
    out = tmp_path / "out"
    result = granite("eval", checkpoint, "--tasks", "gsm8k,mmlu,mmlu_pro,bbh,deepmind_math,humaneval,mbpp,bfcl,ifeval,heldout,heldout_bpb,ruler",
                     "--limit", "3,ifeval=2",
                     "--data-dir", data, "-o", out, "--ruler-lengths", "128", "--ruler-depths", "0,1",
                     "--compare", "granite-4.1-8b", "--batch-size", "4", check=True)
    document = json.loads((out / "results.json").read_text())
    assert set(document["tasks"]) == {"gsm8k", "mmlu", "mmlu_pro", "bbh", "deepmind_math", "humaneval", "mbpp",
                                        "bfcl", "ifeval", "heldout", "heldout_bpb", "ruler"}
    assert document["tasks"]["bbh"]["settings"]["num_fewshot"] == 3 and document["tasks"]["bbh"]["n"] == 2
    assert set(document["tasks"]["ifeval"]["metrics"]) >= {"prompt_level_strict", "inst_level_loose", "average"}
    assert document["tasks"]["mbpp"]["settings"]["num_fewshot"] == 3 and document["tasks"]["mmlu_pro"]["n"] == 2
    assert document["tasks"]["heldout_bpb"]["value"] > 1.0  # an untrained model: several bits per byte
    gsm8k = document["tasks"]["gsm8k"]
    assert gsm8k["n"] == 3 and gsm8k["settings"]["num_fewshot"] == 8 and gsm8k["settings"]["chat_template"] is True
    assert set(gsm8k["metrics"]) == {"exact_match_strict", "exact_match_flexible"}
    assert document["tasks"]["mmlu"]["n"] == 2 and 0 <= document["tasks"]["mmlu"]["value"] <= 1
    assert document["tasks"]["ruler"]["n"] == 3 and len(document["tasks"]["ruler"]["subtasks"]) == 3  # --limit applies to every task
    assert document["tasks"]["ruler"]["grids"]["passkey"] == {"128": {"0": 0.0, "1": 0.0}}
    assert document["tasks"]["ruler"]["effective_length"] is None
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert document["tasks"]["ifeval"]["n"] == 2 and document["tasks"]["ifeval"]["settings"]["limit"] == 2  # TASK=N
    assert len(samples) == 3 + 2 + 2 + 2 + 3 + 3 + 2 + 3 + 2 + 3 + 3 + 3
    bfcl_prompt = next(s["prompt"] for s in samples if s["task"] == "bfcl")
    assert "<tools>" in bfcl_prompt and "calculate_triangle_area" in bfcl_prompt
    assert all({"task", "prompt", "output", "scores"} <= set(s) for s in samples)
    assert "92.49" in result.stderr.decode()  # IBM's GSM8K for the 8B, beside ours
    table = granite("eval", "table", out, check=True).stderr.decode()
    assert "sft" in table and "gsm8k" in table


def test_results_go_beside_the_checkpoint_run_not_into_the_recipe_run(tmp_path):
    """A seed run's checkpoint D/checkpoints/rl-stage-4 is evaluated into D/eval/, not over runs/tiny/eval/rl-stage-4."""
    from stages.eval import default_output

    other = tmp_path / "seed-1" / "checkpoints" / "rl-stage-4"
    assert default_output(str(other), "tiny", None) == tmp_path / "seed-1" / "eval" / "rl-stage-4"
    assert default_output(str(other), "tiny", str(tmp_path / "run")) == tmp_path / "run" / "eval" / "rl-stage-4"
    assert default_output(str(tmp_path / "loose"), "tiny", str(tmp_path / "run")) == tmp_path / "run" / "eval" / "loose"


def test_limit_per_task():
    from stages.eval import parse_limits

    assert parse_limits(None, ["heldout", "humaneval"]) == {"heldout": None, "humaneval": None}
    assert parse_limits("100,humaneval=40", ["heldout", "humaneval"]) == {"heldout": 100, "humaneval": 40}
    assert parse_limits("humaneval=40", ["heldout", "humaneval"]) == {"heldout": None, "humaneval": 40}
    for bad, message in [("0", "at least 1"), ("humaneval=", "TASK=N"), ("=4", "TASK=N"), ("x", "TASK=N"),
                         ("mbpp=3", "'mbpp', which --tasks does not")]:
        with pytest.raises(BadInput, match=message):
            parse_limits(bad, ["heldout", "humaneval"])


def test_missing_benchmark_data_is_bad_input(checkpoint, tmp_path):
    result = granite("eval", checkpoint, "--tasks", "gsm8k", "--data-dir", tmp_path, "-o", tmp_path / "out")
    assert result.returncode == 2 and "make eval-data" in result.stderr.decode()


def test_endpoint_backend_with_retries(tmp_path):
    from model.endpoint import EndpointEngine
    from model.generation import Request, Sampling

    def respond(body, attempt):  # fails once with 500, then answers
        assert body["model"] == "fake" and body["messages"][-1]["role"] == "user"
        return (500, None) if attempt == 0 else "The answer is 36."

    with FakeOpenAI(respond) as server:
        backend = EndpointEngine(server.url, "fake", concurrency=1, retries=2, backoff=0.01)
        [[output]] = backend.generate([Request(messages=[{"role": "user", "content": "12 * 3?"}], sampling=Sampling(32))])
    assert output.text == "The answer is 36." and len(server.bodies) == 2


def plus_items(name, file):
    return [json.loads(line) for line in (FIXTURES / name / file).read_text().splitlines()]


def test_evalplus_canonical_solutions_pass_and_base_only_answers_fail():
    from stages.eval.tasks import humaneval_plus_score, mbpp_plus_score

    add_up, middle = plus_items("humaneval_plus", "HumanEvalPlus.jsonl")
    for item in (add_up, middle):
        assert humaneval_plus_score(item, item["canonical_solution"])["pass@1"] == 1.0
    # right on the base inputs, wrong on the plus ones (the empty list, float rounding, the empty word)
    assert humaneval_plus_score(add_up, "    return float(numbers[0] + numbers[-1]) if len(numbers) > 1 else float(numbers[0])\n")["pass@1"] == 0.0
    assert humaneval_plus_score(add_up, "    return round(sum(numbers), 1)\n")["pass@1"] == 0.0
    assert humaneval_plus_score(middle, "    return word[(len(word) - 1) // 2]\n")["pass@1"] == 0.0
    assert humaneval_plus_score(middle, "    while True:\n        pass\n", timeout=2)["status"] == "timeout"
    [largest] = plus_items("mbpp_plus", "MbppPlus.jsonl")
    assert mbpp_plus_score(largest, f"```python\n{largest['canonical_solution']}```")["pass@1"] == 1.0
    assert mbpp_plus_score(largest, "def largest(xs):\n    return max(xs)\n")["pass@1"] == 0.0


def test_evalplus_tasks_run_from_the_cli(checkpoint, tmp_path):
    granite("eval", checkpoint, "--tasks", "humaneval_plus,mbpp_plus", "--data-dir", FIXTURES, "-o", tmp_path / "out",
            "--max-new-tokens", "8", check=True)
    tasks = json.loads((tmp_path / "out" / "results.json").read_text())["tasks"]
    assert tasks["humaneval_plus"]["n"] == 2 and tasks["mbpp_plus"]["n"] == 1
    assert tasks["humaneval_plus"]["main_metric"] == "pass@1"


@pytest.mark.parametrize("task, keep", [("gsm8k", lambda item: True),
                                        ("mmlu", lambda item: item["subject"] == "elementary_mathematics"),
                                        ("mmlu_pro", lambda item: item["category"] == "math")])
def test_few_shot_prompts_are_lm_evaluation_harness_prompts_text_for_text(task, keep):
    """The stored prompts were built by lm-eval itself from the same fixture files (see the file's _made_by)."""
    from stages.eval.runner import FewShot
    from stages.eval.prompting import render
    from stages.eval.tasks import get_task

    theirs = json.loads((FIXTURES / "lm_eval_prompts.json").read_text())[task]
    spec = get_task(task)
    items = [item for item in spec.data.load(FIXTURES) if keep(item)]
    shots = FewShot(spec, FIXTURES, None)  # called on the items in order, as lm-eval draws them
    assert [render(spec, item, shots(item), chat=False).prompt for item in items] == theirs
