"""granite filter: every labelled defect gets its verdict and reason, the judge is robust, reruns cost nothing."""

import json
import math

import pytest

from conftest import REPO, granite
from fake_openai import FakeOpenAI
from model.endpoint import EndpointEngine
from model.generation import Completion, Request, Sampling
from stages.filter.dedup import MinHashIndex
from stages.filter.judge import DIMENSIONS, Judge, JudgeCache, expected_scores, parse_answer
from stages.filter.rules import check_computation, check_truncated, normalize, stated_computations

FIXTURES = REPO / "tests" / "fixtures" / "filter"
LABELLED = FIXTURES / "labelled.jsonl"


def labelled():
    return [json.loads(line) for line in LABELLED.read_text().splitlines()]


def answer_json(scores: dict | int = 5, **flags) -> str:
    scores = scores if isinstance(scores, dict) else dict.fromkeys(DIMENSIONS, scores)
    answer = {**scores, "hallucination": False, "false_premise_accepted": False, "incorrect_computation": False,
              **flags, "rationale": "checked"}
    return json.dumps(answer)


def graded_turn(body: dict) -> str:
    prompt = body["messages"][1]["content"]
    return prompt.split("## Assistant turn to grade\n", 1)[1].split("\n\n## Score", 1)[0]


def scripted_judge(body, attempt):
    """Flags what the fixture's judge-only defects need; everything else gets top marks."""
    turn = graded_turn(body)
    if "Karel Novak" in turn:
        return answer_json(4, hallucination=True)
    if "because relativity" in turn:
        return answer_json(4, false_premise_accepted=True)
    if "Eggs are food" in turn:
        return answer_json(2)
    if "Seven is one" in turn:
        return answer_json({**dict.fromkeys(DIMENSIONS, 4), "conciseness": 2, "naturalness": 3})
    return answer_json(5)


def run_filter(tmp_path, *extra, name="run"):
    kept, audit = tmp_path / f"{name}-kept.jsonl", tmp_path / f"{name}-audit.jsonl"
    result = granite("filter", LABELLED, "-o", kept, "--audit", audit, "--run-dir", tmp_path / "runs",
                     "--decontaminate", FIXTURES / "benchmark.jsonl", "--set", "length.max_tokens=2000", *extra)
    assert result.returncode == 0, result.stderr.decode()
    audits = {a["id"]: a for a in map(json.loads, audit.read_text().splitlines())}
    kept_ids = [json.loads(line)["id"] for line in kept.read_text().splitlines()]
    return audits, kept_ids, result.stderr.decode()


def check_expectations(audits: dict, judged: bool) -> None:
    for sample in labelled():
        expect, audit = sample["meta"]["expect"], audits[sample["id"]]
        if expect["rule"] == "judge" and not judged:
            assert audit["verdict"] == "accept" and audit["judge"]["status"] == "none", sample["id"]
            continue
        assert audit["verdict"] == expect["verdict"], (sample["id"], audit)
        if expect["verdict"] != "accept":
            assert expect["rule"] in [r["rule"] for r in audit["reasons"]], (sample["id"], audit["reasons"])
            assert all(r["reason"] for r in audit["reasons"])  # every decision says why


def test_labelled_fixture_without_judge(tmp_path):
    audits, kept, stderr = run_filter(tmp_path, "--judge", "none")
    check_expectations(audits, judged=False)
    assert len(audits) == len(labelled())  # one audit record per sample: nothing dropped silently
    assert kept == [i for i, a in audits.items() if a["kept"]]
    assert "judge: none ran" in stderr and "filter: kept" in stderr
    assert audits["good-normalized"]["changes"] and "good-normalized" in kept


def test_labelled_fixture_with_endpoint_judge_and_cached_rerun(tmp_path):
    with FakeOpenAI(scripted_judge, lower_digit_share=0.3) as server:
        audits, kept, stderr = run_filter(tmp_path, "--judge", server.url, "--judge-model", "judge")
        check_expectations(audits, judged=True)
        good = audits["good-plain"]["judge"]
        assert good["status"] == "ok" and good["turns"][0]["logprob_weighted"]
        assert good["score"] == pytest.approx(4.7)  # 5 * 0.7 + 4 * 0.3 on every dimension
        assert "hallucination" in audits["judge-hallucination"]["reasons"][0]["reason"]
        # rule rejects are never sent to the judge
        assert audits["bad-arithmetic"]["judge"]["status"] == "skipped"
        calls = len(server.bodies)
        assert all(b["logprobs"] and b["model"] == "judge" for b in server.bodies)

        # a stricter threshold re-decides from the cache: no new judge calls
        audits, kept, stderr = run_filter(tmp_path, "--judge", server.url, "--judge-model", "judge",
                                          "--accept-at", "4.8", "--borderline", "keep", name="rerun")
        assert len(server.bodies) == calls and "0 miss(es)" in stderr
        assert audits["good-plain"]["verdict"] == "borderline" and "good-plain" in kept


def test_judge_retries_timeouts_and_server_errors():
    def flaky(body, attempt):
        if attempt == 0:
            return ("sleep", 1.0)  # past the client's timeout
        if attempt == 1:
            return (503, None)
        return answer_json(4)

    with FakeOpenAI(flaky) as server:
        backend = EndpointEngine(server.url, "judge", concurrency=4, timeout=0.3, retries=3, backoff=0.01)
        samples = [s for s in labelled() if s["id"] in ("good-plain", "good-math")]
        results = Judge(backend, JudgeCache(None)).judge(samples)
    assert [r.status for r in results] == ["ok", "ok"]
    assert results[0].turns[0].scores["correctness"] == 4.0


def test_malformed_judge_answers_are_retried_then_recorded():
    def garbage_then_valid(body, attempt):
        corrected = body["messages"][-1]["content"].startswith("That answer is not valid")
        return answer_json(5) if corrected and "good-math" not in json.dumps(body) and "17 * 23" not in json.dumps(body) \
            else "Looks fine to me, 10/10!"

    with FakeOpenAI(garbage_then_valid) as server:
        samples = [s for s in labelled() if s["id"] in ("good-plain", "good-math")]
        results = Judge(EndpointEngine(server.url, "judge", retries=0), JudgeCache(None), retries=2).judge(samples)
        # good-plain: garbage, then a valid answer once told what was wrong
        assert results[0].status == "ok"
        # good-math: garbage three times (1 + 2 retries): recorded as malformed, never a pass or a fail
        assert results[1].status == "malformed" and "holds no JSON object" in results[1].error
        assert sum("17 * 23" in json.dumps(b) for b in server.bodies) == 3


def test_a_judge_that_never_answers_fails_the_run_and_writes_nothing(tmp_path):
    with FakeOpenAI(lambda body, attempt: (500, None)) as server:
        url = server.url
    kept, audit = tmp_path / "kept.jsonl", tmp_path / "audit.jsonl"
    result = granite("filter", LABELLED, "-o", kept, "--audit", audit, "--run-dir", tmp_path / "runs",
                     "--judge", url, "--judge-model", "judge", "--judge-retries", "0")
    err = result.stderr.decode()
    assert result.returncode == 1 and "no usable verdict" in err and "failed" in err and "Traceback" not in err
    assert not kept.exists() and not audit.exists()  # a pipeline stops here instead of training on an empty file


def test_a_judge_that_fails_some_calls_leaves_those_samples_unjudged(tmp_path):
    def flaky(body, attempt):  # the good-plain sample's judge call always fails; every other gets an answer
        return (500, None) if "Explain photosynthesis briefly" in json.dumps(body) else answer_json(4)

    with FakeOpenAI(flaky) as server:
        audits, kept, stderr = run_filter(tmp_path, "--judge", server.url, "--judge-model", "judge", "--judge-retries", "0")
    assert audits["good-plain"]["verdict"] == "unjudged" and "good-plain" not in kept
    assert audits["bad-arithmetic"]["verdict"] == "reject"  # rule verdicts still stand
    assert "unjudged" in stderr


def test_answer_validation():
    assert parse_answer(answer_json(3))[0]["correctness"] == 3
    assert parse_answer("no json here")[0] is None
    assert "integer from 1 to 5" in parse_answer(answer_json(6))[1]
    assert "true or false" in parse_answer(answer_json(5, hallucination="no"))[1]
    assert "integer from 1 to 5" in parse_answer(answer_json(True))[1]


def test_logprob_expectation_hand_checked():
    text = answer_json(4)
    top = [{ch: 0.0} for ch in text]
    position = text.index('"correctness": 4') + len('"correctness": ')
    top[position] = {"4": math.log(0.5), "3": math.log(0.25), "5": math.log(0.2), "x": math.log(0.05)}
    scores = expected_scores(Completion(text, tokens=list(text), top_logprobs=top), json.loads(text))
    assert scores["correctness"] == pytest.approx((4 * 0.5 + 3 * 0.25 + 5 * 0.2) / 0.95)
    assert scores["naturalness"] == 4.0
    assert expected_scores(Completion(text), json.loads(text)) is None


@pytest.mark.parametrize("text, wrong", [
    ("17 * 23 = 391", False), ("17 * 23 = 381", True), ("1,234 + 5 = 1,239", False), ("10 / 4 = 2.5", False),
    ("10 / 3 = 3.33", False), ("10 / 3 = 3.4", True), ("(2 + 3) * 4 = 20", False), ("2^10 = 1024", False),
    ("m * v^2 / 2 = 17 * 144 / 2 = 1224", False), ("m * v^2 / 2 = 17 * 144 / 2 = 1225", True),
    ("on 2015-09-22 = Tuesday", False), ("x = 3 + 4 = 8", True), ("3 × 4 = 12", False),
])
def test_computation_check(text, wrong):
    sample = {"messages": [{"role": "user", "content": "?"}, {"role": "assistant", "content": text}]}
    assert bool(check_computation(sample, {})) == wrong, stated_computations(text)


@pytest.mark.parametrize("content, truncated", [
    ("The answer is 22", False), ("SELECT name FROM t;", False), ('{"a": "}"}', False), ('{"a": [1, 2', True),
    ("```python\nprint(1)\n```", False), ("```python\nprint(1)", True), ("Blue light scatters more because", True),
])
def test_truncation_check(content, truncated):
    sample = {"messages": [{"role": "user", "content": "?"}, {"role": "assistant", "content": content}]}
    assert bool(check_truncated(sample, {})) == truncated


def test_normalize_reports_each_change():
    sample, changes = normalize({"messages": [{"role": "user", "content": "Cafe\u0301\r\n\u200b"}]})
    assert sample["messages"][0]["content"] == "Café"
    assert changes == ["messages[0].content: newlines, unicode NFC, invisible characters, surrounding whitespace"]


def test_minhash_finds_near_duplicates_and_spares_distinct_text():
    index = MinHashIndex()
    base = " ".join(f"word{i}" for i in range(60))
    assert index.first_copy("a", base) is None
    assert index.first_copy("b", base.replace("word59", "other")) == "a"
    assert index.first_copy("c", " ".join(f"term{i}" for i in range(60))) is None
    assert index.first_copy("d", "too short to judge") is None and index.first_copy("e", "too short to judge") is None


def test_shards_then_dedup_equal_one_run(tmp_path):
    sft = REPO / "examples" / "data" / "chat" / "sft.jsonl.zst"
    common = ["--run-dir", tmp_path / "runs", "--checks", "schema,tool_calls,leakage,exact_dedup"]
    granite("filter", sft, "-o", tmp_path / "all.jsonl", "--audit", tmp_path / "all-audit.jsonl", *common, check=True)
    for index in (0, 1):
        granite("filter", sft, "-o", tmp_path / f"part{index}.jsonl", "--audit", tmp_path / f"audit{index}.jsonl",
                "--shard-index", index, "--num-shards", 2, *common, check=True)
    granite("filter", "dedup", tmp_path / "part0.jsonl", tmp_path / "part1.jsonl", "-o", tmp_path / "merged.jsonl",
            "--audit", tmp_path / "dedup-audit.jsonl", "--checks", "exact_dedup", "--run-dir", tmp_path / "runs", check=True)

    def contents(path):
        return sorted(json.dumps([json.loads(line).get(k) for k in ("tools", "documents", "messages")])
                      for line in path.read_text().splitlines())

    merged = contents(tmp_path / "merged.jsonl")
    assert merged == contents(tmp_path / "all.jsonl") and len(merged) == len(set(merged))
    report = json.loads(granite("filter", "report", tmp_path / "audit0.jsonl", tmp_path / "audit1.jsonl", "--json", "-",
                                check=True).stdout)
    from granite_cli.data.records import read_records

    samples = list(read_records([str(sft)]))
    leaks = sum((s.get("meta") or {}).get("defect") == "template_leak" for s in samples)
    assert report["total"] == len(samples) and report["rules"]["leakage"] == leaks > 0


def test_a_worker_filters_only_its_part_of_the_input(tmp_path):
    """A malformed line in the second half of a plain file stops worker 1 of 2 alone: worker 0 never parses it."""
    from granite_cli.data.records import read_records

    samples = list(read_records([str(REPO / "examples" / "data" / "chat" / "sft.jsonl.zst")]))[:40]
    lines = [json.dumps(s).encode() + b"\n" for s in samples] + [b'{"messages": [\n']
    data = tmp_path / "sft.jsonl"
    data.write_bytes(b"".join(lines))
    results = [granite("filter", data, "-o", tmp_path / f"kept{index}.jsonl", "--audit", tmp_path / f"audit{index}.jsonl",
                       "--checks", "schema", "--run-dir", tmp_path / "runs", "--shard-index", index, "--num-shards", 2)
               for index in (0, 1)]
    assert [r.returncode for r in results] == [0, 2], [r.stderr.decode() for r in results]  # 2: bad input
    assert f"{data}[bytes {data.stat().st_size // 2}:{data.stat().st_size}]:" in results[1].stderr.decode()
    audited = [json.loads(line)["id"] for line in (tmp_path / "audit0.jsonl").read_text().splitlines()]
    assert 0 < len(audited) < len(samples) and audited == [s["id"] for s in samples[:len(audited)]]


def test_bad_usage_is_exit_2(tmp_path):
    for args in (["--checks", "schema,nonsense"], ["--judge", "/no/such/model"], ["--judge", "http://127.0.0.1:9/v1"],
                 ["--accept-at", "2", "--reject-below", "3"], ["--set", "length.max_tokens"], ["--borderline", "maybe"]):
        result = granite("filter", LABELLED, "--audit", tmp_path / "a.jsonl", "--run-dir", tmp_path, *args)
        assert result.returncode == 2, (args, result.stderr.decode())


def test_local_model_judge_gives_logprobs_and_never_passes_garbage(checkpoint):
    from model.generation import LocalEngine

    backend = LocalEngine(str(checkpoint))
    [[reply]] = backend.generate([Request(messages=[{"role": "user", "content": "Grade this."}],
                                          sampling=Sampling(max_new_tokens=6, top_logprobs=5))])
    assert 0 < len(reply.tokens) <= 6 and all(len(alternatives) == 5 for alternatives in reply.top_logprobs)
    assert all(lp <= 0 for alternatives in reply.top_logprobs for lp in alternatives.values())
    samples = [s for s in labelled() if s["id"] == "good-math"]
    [result] = Judge(backend, JudgeCache(None), retries=1).judge(samples)
    assert result.status == "malformed"  # an untrained model's babble is recorded as such


def test_bundled_sft_defects_are_caught(tmp_path):
    """Every labelled defect of the bundled SFT data a rule can see is rejected by the right check; clean samples
    are rejected only as duplicates. Wrong final answers need a judge and are left to it."""
    from stages.filter.dedup import exact_key

    sft = REPO / "examples" / "data" / "chat" / "sft.jsonl.zst"
    kept_path, audit_path = tmp_path / "kept.jsonl", tmp_path / "audit.jsonl"
    granite("filter", sft, "-o", kept_path, "--audit", audit_path, "--run-dir", tmp_path / "runs", check=True)
    from granite_cli.data.records import read_records

    samples = {s["id"]: s for s in read_records([str(sft)])}
    audits = [json.loads(line) for line in audit_path.read_text().splitlines()]
    expected_check = {"template_leak": "leakage", "wrong_computation": "computation", "ungrounded": "grounding",
                      "unknown_tool": "tool_calls", "bad_arguments": "tool_calls"}
    kept_keys = [exact_key(json.loads(line)) for line in kept_path.read_text().splitlines()]
    assert len(kept_keys) == len(set(kept_keys))
    for audit in audits:
        defect = (samples[audit["id"]].get("meta") or {}).get("defect")
        checks = {r["rule"] for r in audit["reasons"]}
        if defect in expected_check:
            assert expected_check[defect] in checks, audit
        elif defect is None or defect == "duplicate":
            assert checks <= {"exact_dedup", "near_dedup"}, audit


def test_openai_shaped_samples_get_the_same_verdicts_as_ours(tmp_path):
    from granite_cli.data.chat import normalize_sample

    ours = [s for s in labelled() if s.get("tools")]
    openai = []
    for sample in ours:
        messages = [{**m, "content": m["content"] or None, "tool_calls": [
            {"id": f"call_{j}", "type": "function", "function": {"name": c["name"], "arguments": c["arguments"] if isinstance(
                c["arguments"], str) else json.dumps(c["arguments"])}} for j, c in enumerate(m["tool_calls"])]}
            if m.get("tool_calls") else m for m in sample["messages"]]
        openai.append({**sample, "messages": messages, "tools": [{"type": "function", "function": t} for t in sample["tools"]]})
    assert [normalize_sample(s)["tools"] for s in openai] == [s["tools"] for s in ours]
    paths = {}
    for name, samples in (("ours", ours), ("openai", openai)):
        paths[name] = tmp_path / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(s) + "\n" for s in samples))
        granite("filter", paths[name], "-o", tmp_path / f"{name}-kept.jsonl", "--audit", tmp_path / f"{name}-audit.jsonl",
                "--run-dir", tmp_path / "runs", check=True)
    verdicts = {name: [json.loads(line)["verdict"] for line in (tmp_path / f"{name}-audit.jsonl").read_text().splitlines()]
                for name in paths}
    assert verdicts["openai"] == verdicts["ours"] and "accept" in verdicts["ours"] and "reject" in verdicts["ours"]
