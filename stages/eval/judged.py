"""Tasks an LLM judge grades: MT-Bench (single answers rated 1-10) and pairwise win rates against stored
baseline answers (ArenaHard and AlpacaEval 2.0 data). The judge is any generation engine
(model/generation.py): an OpenAI-compatible endpoint or a local checkpoint, as for `granite filter`.

MT-Bench follows FastChat's llm_judge: two turns per question (the second sees the first answer),
each rated with FastChat's judge prompts (`single-v1`, or `single-math-v1` with the reference answer
for math, reasoning and coding; their `-multi-turn` forms for turn 2), the rating read from
`[[N]]`. The score is the mean rating, per turn and per category.

Pairwise tasks ask the judge twice per question with the two answers in both orders (position bias
cancels) using FastChat's `pair-v2` prompt, and score a win 1, a tie 0.5, a loss 0; the win rate
comes with a 95% bootstrap interval over questions. This is neither ArenaHard's own judge prompt and
Bradley-Terry scoring nor AlpacaEval's length-controlled win rate: the numbers are comparable between
our checkpoints, not with published leaderboards.

Judge answers that hold no verdict are counted (`judged` < 1) and left out of the means, never
read as a win or a loss.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from granite_cli.errors import BadInput
from model.generation import Request, Sampling
from stages.eval.prompting import chat_request, generate_texts
from stages.eval.results import sample_row

NEEDS_REFERENCE = ("math", "reasoning", "coding")
RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
RATING_FALLBACK = re.compile(r"\[(\d+\.?\d*)\]")
VERDICT = re.compile(r"\[\[([ABC])\]\]")
JUDGE_MAX_TOKENS = 1024


# ------------------------------------------------------------------ data (each benchmark's own schema)
def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise BadInput(f"{what} is missing ({path}); `make eval-data` extracts MT-Bench, the others need their files "
                       f"in --data-dir in the benchmark's own layout")
    return path


def judge_prompts(data_dir: Path) -> dict[str, dict]:
    """FastChat's judge prompts (name -> system_prompt, prompt_template, ...), shipped with MT-Bench."""
    path = _require(data_dir / "mt_bench" / "judge_prompts.jsonl", "FastChat's judge prompts")
    return {prompt["name"]: prompt for prompt in _jsonl(path)}


def mt_bench_load(data_dir: Path) -> list[dict]:
    """FastChat's mt_bench/question.jsonl, with the GPT-4 reference answers for the categories that use them."""
    root = data_dir / "mt_bench"
    questions = _jsonl(_require(root / "question.jsonl", "MT-Bench questions"))
    references = {}
    reference_file = root / "reference_answer" / "gpt-4.jsonl"
    if reference_file.exists():
        references = {r["question_id"]: r["choices"][0]["turns"] for r in _jsonl(reference_file)}
    return [{**q, "id": str(q["question_id"]), "reference": references.get(q["question_id"])} for q in questions]


def arenahard_load(data_dir: Path) -> list[dict]:
    """arena-hard-auto v0.1: question.jsonl and one baseline's model_answer/<model>.jsonl (gpt-4-0314 by default)."""
    root = data_dir / "arena_hard"
    questions = _jsonl(_require(root / "question.jsonl", "ArenaHard questions"))
    answer_files = sorted((root / "model_answer").glob("*.jsonl")) if (root / "model_answer").is_dir() else []
    preferred = [f for f in answer_files if f.stem == "gpt-4-0314"] or answer_files
    if not preferred:
        raise BadInput(f"ArenaHard needs a baseline's answers in {root / 'model_answer'}/<model>.jsonl")
    baseline = {a["question_id"]: a["choices"][0]["turns"][0]["content"] for a in _jsonl(preferred[0])}
    return [{"id": str(q["question_id"]), "question": q["turns"][0]["content"], "baseline": baseline[q["question_id"]],
             "baseline_model": preferred[0].stem, "category": q.get("cluster") or q.get("category", "all")}
            for q in questions if q["question_id"] in baseline]


def alpacaeval_load(data_dir: Path) -> list[dict]:
    """AlpacaEval 2.0's alpaca_eval.json: instructions with the baseline's outputs (gpt4_turbo)."""
    path = _require(data_dir / "alpaca_eval" / "alpaca_eval.json", "AlpacaEval data")
    rows = json.loads(path.read_text(encoding="utf-8"))
    return [{"id": str(i), "question": r["instruction"], "baseline": r["output"], "baseline_model": r.get("generator", ""),
             "category": r.get("dataset", "all")} for i, r in enumerate(rows)]


# ------------------------------------------------------------------ helpers
def answers(spec, backend, conversations: list[list[dict]], chat: bool, seed: int) -> list[str]:
    """The evaluated model's greedy answer to each conversation."""
    texts = generate_texts(backend, [chat_request(m, chat) for m in conversations], Sampling(spec.max_new_tokens, seed=seed))
    return [samples[0] for samples in texts]


def ask_judge(judge, conversations: list[list[dict]]) -> list[str | None]:
    """The judge's greedy answers; None where it did not answer."""
    replies = judge.generate([Request(messages=c, sampling=Sampling(JUDGE_MAX_TOKENS)) for c in conversations])
    return [None if r[0].error is not None else r[0].text for r in replies]


def read_rating(text: str | None) -> float | None:
    if text is None:
        return None
    found = RATING.search(text) or RATING_FALLBACK.search(text)
    return float(found.group(1)) if found else None


def judge_conversation(prompt: dict, **fields) -> list[dict]:
    return [{"role": "system", "content": prompt["system_prompt"]},
            {"role": "user", "content": prompt["prompt_template"].format(**fields)}]


def bootstrap_interval(values: list[float], seed: int, resamples: int = 1000) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of the mean over resamples of the items."""
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=len(values))) / len(values) for _ in range(resamples))
    return means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]


# ------------------------------------------------------------------ MT-Bench
def run_mt_bench(spec, backend, judge, items: list[dict], chat: bool, data_dir: Path, seed: int) -> list[dict]:
    prompts = judge_prompts(data_dir)
    first = [[{"role": "user", "content": item["turns"][0]}] for item in items]
    answers_1 = answers(spec, backend, first, chat, seed)
    second = [m + [{"role": "assistant", "content": a}, {"role": "user", "content": item["turns"][1]}]
              for m, a, item in zip(first, answers_1, items)]
    answers_2 = answers(spec, backend, second, chat, seed)
    conversations = []
    for item, a1, a2 in zip(items, answers_1, answers_2):
        reference = item.get("reference") if item["category"] in NEEDS_REFERENCE else None
        math = "math-" if reference else ""
        refs = {"ref_answer_1": reference[0], "ref_answer_2": reference[1]} if reference else {}
        conversations.append(judge_conversation(prompts[f"single-{math}v1"], question=item["turns"][0], answer=a1, **refs))
        conversations.append(judge_conversation(prompts[f"single-{math}v1-multi-turn"], question_1=item["turns"][0],
                                                answer_1=a1, question_2=item["turns"][1], answer_2=a2, **refs))
    verdicts = ask_judge(judge, conversations)
    rows = []
    for i, (item, a1, a2) in enumerate(zip(items, answers_1, answers_2)):
        ratings = [read_rating(verdicts[2 * i]), read_rating(verdicts[2 * i + 1])]
        valid = [r for r in ratings if r is not None]
        scores = {f"turn_{t + 1}": r for t, r in enumerate(ratings) if r is not None}
        scores["judged"] = len(valid) / 2
        if valid:
            scores["rating"] = sum(valid) / len(valid)
        reason = " | ".join((v or "no judge answer")[-200:] for v in verdicts[2 * i:2 * i + 2])
        rows.append(sample_row(spec, item, i, item["turns"][0], json.dumps([a1, a2]), scores, reason))
    return rows


# ------------------------------------------------------------------ pairwise against a baseline
def run_pairwise(spec, backend, judge, items: list[dict], chat: bool, data_dir: Path, seed: int) -> list[dict]:
    prompt = judge_prompts(data_dir)["pair-v2"]
    ours = answers(spec, backend, [[{"role": "user", "content": item["question"]}] for item in items], chat, seed)
    conversations = []
    for item, answer in zip(items, ours):
        conversations.append(judge_conversation(prompt, question=item["question"], answer_a=answer, answer_b=item["baseline"]))
        conversations.append(judge_conversation(prompt, question=item["question"], answer_a=item["baseline"], answer_b=answer))
    verdicts = ask_judge(judge, conversations)
    rows = []
    for i, (item, answer) in enumerate(zip(items, ours)):
        games = [game_score(verdicts[2 * i], ours_is="A"), game_score(verdicts[2 * i + 1], ours_is="B")]
        valid = [g for g in games if g is not None]
        scores = {"judged": len(valid) / 2, **({"win_rate": sum(valid) / len(valid)} if valid else {})}
        reason = " | ".join((v or "no judge answer")[-120:] for v in verdicts[2 * i:2 * i + 2])
        rows.append(sample_row(spec, item, i, item["question"], answer, scores, reason))
    return rows


def game_score(verdict: str | None, ours_is: str) -> float | None:
    """1 when our answer wins the game, 0.5 for a tie, 0 for a loss, None when the judge gave no verdict."""
    found = VERDICT.search(verdict or "")
    if not found:
        return None
    return 0.5 if found.group(1) == "C" else float(found.group(1) == ours_is)


def add_interval(summary: dict, rows: list[dict], metric: str, seed: int) -> None:
    """Bootstrap interval of the task's main metric, over the items the judge scored."""
    values = [r["scores"][metric] for r in rows if metric in r["scores"]]
    if values:
        summary["metrics"][f"{metric}_ci_low"], summary["metrics"][f"{metric}_ci_high"] = bootstrap_interval(values, seed)
