"""granite eval: evaluate a checkpoint (or an OpenAI-compatible endpoint) on declarative tasks.

    granite eval CKPT --tasks heldout,humaneval,ruler [-o OUTDIR] [--compare granite-4.1-8b]
    granite eval table [EVALDIR ...]

1. backend: a local model directory (batched KV-cached generation, log-likelihoods) or an endpoint;
2. per task (stages/eval/tasks.py): load items, render prompts (chat template on or off, few-shot as
   text or as turns), generate or score choices, extract and score each item;
3. write results.json (per task: metrics, n, settings) and samples.jsonl (every prompt, output and
   score) atomically, and print a table on stderr — with IBM's numbers beside ours on --compare.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import sys
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from granite_cli import options
from granite_cli.console import console
from granite_cli.errors import BadInput
from granite_cli.data.atomic import atomic_path
from stages.eval.backends import Endpoint, GenerationRequest, LocalModel
from stages.eval.judged import add_interval
from stages.eval.published import MODELS, PUBLISHED
from stages.eval.tasks import TaskSpec, get_task, ruler_items

app = typer.Typer(cls=options.DefaultCommandGroup, help="Evaluate a checkpoint (default) or print a table of evaluations (`table`).\n\n"
                                                     "`granite eval CKPT ...` is `granite eval run CKPT ...`.")
MAIN_METRIC = {"generate": "score", "choice": "acc", "code": "pass@1", "likelihood": "bits_per_byte", "judged": "win_rate"}
NOT_PERCENT = {"bits_per_byte", "rating"}  # shown as is; every other metric is a rate shown in percent
TASK_MAIN_METRIC = {"mt_bench": "rating", "gsm8k": "exact_match_strict", "ruler": "accuracy", "bfcl": "accuracy", "mmlu_pro": "exact_match",
                    "ifeval": "average", "bbh": "exact_match", "deepmind_math": "exact_match"}


@app.command("run")
def eval_command(
    checkpoint: Optional[str] = typer.Argument(None, help="Checkpoint or any local HF causal LM directory (omit with --endpoint)."),
    tasks: str = typer.Option("heldout", "--tasks", help="Comma-separated: gsm8k, mmlu, mmlu_pro, bbh, deepmind_math, humaneval, humaneval_plus, mbpp, mbpp_plus, bfcl, ifeval, heldout, heldout_bpb, ruler, mt_bench, arenahard, alpacaeval (these three need --judge), local:PATH.jsonl."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Results directory. Default: <run-dir>/eval/<checkpoint name>."),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help="OpenAI-compatible base URL (e.g. http://localhost:8000/v1) instead of a local model."),
    model_name: Optional[str] = typer.Option(None, "--model", help="Model name to send to --endpoint."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Evaluate only the first N items of each task."),
    batch_size: int = typer.Option(32, "--batch-size", help="Prompts per generation batch (local model) or concurrent requests (endpoint)."),
    num_fewshot: Optional[int] = typer.Option(None, "--num-fewshot", help="Override each task's few-shot count."),
    chat_template: str = typer.Option("auto", "--chat-template", help="on, off, or auto: on for chat-native tasks and for checkpoints past SFT."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Override each task's generation length."),
    samples: int = typer.Option(1, "--samples", help="Samples per code problem: pass@k is reported for k <= N."),
    temperature: float = typer.Option(0.0, "--temperature", help="Sampling temperature (0: greedy; defaults to 0.8 when --samples > 1)."),
    ruler_lengths: str = typer.Option("256,512,1024", "--ruler-lengths", help="Context lengths (tokens) for the ruler task."),
    ruler_depths: str = typer.Option("0,0.5,1", "--ruler-depths", help="Needle depths (0 = start, 1 = end) for the ruler task."),
    data_dir: str = typer.Option("runs/eval-data", "--data-dir", help="Benchmark files in their original schema (make eval-data)."),
    compare: Optional[str] = typer.Option(None, "--compare", help="Show IBM's published numbers beside ours: granite-4.1-3b, -8b or -30b."),
    judge: Optional[str] = typer.Option(None, "--judge", help="For mt_bench, arenahard, alpacaeval: an OpenAI-compatible base URL or a local model directory."),
    judge_model: Optional[str] = typer.Option(None, "--judge-model", help="Model name the --judge endpoint serves."),
    judge_concurrency: int = typer.Option(8, "--judge-concurrency", help="Requests in flight to an endpoint judge."),
    stage: Optional[str] = typer.Option(None, "--stage", help="Label for this evaluation in `granite eval table`. Default: the checkpoint's last lineage stage."),
    recipe: Optional[str] = options.RecipeOption,
    run_dir: Optional[str] = options.RunDirOption,
    seed: int = options.SeedOption,
    device: str = options.DeviceOption,
) -> None:
    """Evaluate a model on benchmark tasks; writes results.json and samples.jsonl."""
    from granite_cli.recipe import load_recipe

    if compare and compare not in MODELS:
        raise BadInput(f"--compare takes one of {', '.join(MODELS)}")
    if chat_template not in ("auto", "on", "off"):
        raise BadInput("--chat-template must be on, off or auto")
    specs = [get_task(name.strip()) for name in tasks.split(",") if name.strip()]
    backend = make_backend(checkpoint, endpoint, model_name, batch_size, device)
    grader = make_judge(specs, judge, judge_model, judge_concurrency, device)
    label = stage or default_stage(checkpoint)
    out = Path(output) if output else load_recipe(recipe, run_dir).run_dir / "eval" / (Path(checkpoint).name if checkpoint else "endpoint")
    settings = {"limit": limit, "batch_size": batch_size, "seed": seed, "samples": samples, "data_dir": data_dir}
    results, all_samples = {}, []
    for spec in specs:
        started = time.perf_counter()
        chat = use_chat(spec, chat_template, label)
        items = load_items(spec, Path(data_dir), limit, ruler_lengths, ruler_depths, seed)
        shots = FewShot(spec, Path(data_dir), num_fewshot, seed)
        if max_new_tokens:
            spec = dataclasses.replace(spec, max_new_tokens=max_new_tokens)
        if spec.run:  # judged tasks: their own generation and grading, and an interval on the main metric
            scored = spec.run(spec, backend, grader, items, chat, Path(data_dir), seed)
            summary = summarize(spec, scored)
            add_interval(summary, scored, summary["main_metric"], seed)
        else:
            scored = evaluate(spec, backend, items, shots, chat, samples, temperature, seed)
            summary = summarize(spec, scored)
        summary["settings"] = {**settings, "num_fewshot": shots.count or spec.inline_shots, "chat_template": chat,
                               "max_new_tokens": spec.max_new_tokens, "seconds": round(time.perf_counter() - started, 1)}
        results[spec.name] = summary
        all_samples.extend({"task": spec.name, **row} for row in scored)
        console.print(f"{spec.name}: {summary['main_metric']} = {shown(summary['main_metric'], summary['value'])} over {summary['n']} items")
    write_results(out, backend.name, label, results, all_samples)
    console.print(results_table(results, compare))
    console.print(f"wrote [bold]{out}/results.json[/] and samples.jsonl")


def make_backend(checkpoint, endpoint, model_name, batch_size, device):
    if endpoint:
        if not model_name:
            raise BadInput("--endpoint needs --model (the name the server serves)")
        return Endpoint(endpoint, model_name, concurrency=batch_size)
    if not checkpoint:
        raise BadInput("give a checkpoint directory, or --endpoint URL --model NAME")
    return LocalModel(checkpoint, device=device, batch_size=batch_size)


def make_judge(specs: list[TaskSpec], judge: Optional[str], judge_model: Optional[str], concurrency: int, device: str):
    """The judge backend, opened only when a judged task is asked for."""
    needing = [spec.name for spec in specs if spec.run]
    if not needing:
        return None
    if not judge:
        raise BadInput(f"{', '.join(needing)} need a judge: --judge URL --judge-model NAME, or --judge MODEL_DIR")
    from model.llm_client import open_chat_model

    return open_chat_model(judge, judge_model, concurrency=concurrency, device=device)


def default_stage(checkpoint: Optional[str]) -> str:
    from model.checkpoint import read_lineage

    lineage = read_lineage(Path(checkpoint)) if checkpoint else []
    if not lineage:
        return Path(checkpoint).name if checkpoint else "endpoint"
    last = lineage[-1]
    phase = last.get("arguments", {}).get("phase")
    return f"{last['stage']}" + (f" phase {phase}" if phase is not None else "")


def use_chat(spec: TaskSpec, mode: str, label: str) -> bool:
    """auto: the chat template for models past pre-training; base models get plain-text prompts."""
    if mode != "auto":
        return mode == "on"
    return not label.startswith("pretrain")


# ------------------------------------------------------------------ items and prompts
def load_items(spec: TaskSpec, data_dir: Path, limit, lengths: str, depths: str, seed: int) -> list[dict]:
    if spec.name == "ruler":
        items = ruler_items([int(x) for x in lengths.split(",")], [float(x) for x in depths.split(",")], 2, seed)
    elif spec.loader:
        items = spec.loader(data_dir)
    else:
        items = spec.data.load(data_dir)
    if not items:
        raise BadInput(f"task {spec.name}: no items")
    return items[:limit] if limit else items


class FewShot:
    """The few-shot examples of each item: a seeded sample of the few-shot split, from the item's own
    subject when the task says so (MMLU's subjects, MMLU-Pro's categories)."""

    def __init__(self, spec: TaskSpec, data_dir: Path, override: Optional[int], seed: int):
        self.spec, self.seed = spec, seed
        self.count = spec.num_fewshot if override is None else override
        if self.count and spec.fewshot_data is None:
            raise BadInput(f"task {spec.name} has no few-shot source")
        self.pool = spec.fewshot_data.load(data_dir) if self.count else []

    def __call__(self, item: dict) -> list[dict]:
        pool = self.pool
        if self.spec.fewshot_by:
            key = self.spec.fewshot_by(item)
            pool = [shot for shot in pool if self.spec.fewshot_by(shot) == key] or self.pool
        return random.Random(self.seed).sample(pool, min(self.count, len(pool)))


def plain_instruction(messages: list[dict], tools: Optional[list[dict]] = None) -> str:
    """A chat prompt as plain text for a base model, in the instruction format of the pre-training data."""
    said = "\n\n".join(m["content"] for m in messages if m["role"] in ("system", "user"))
    if tools:
        said += "\n\nTools:\n" + "\n".join(json.dumps(tool) for tool in tools)
    return f"### Instruction\n{said}\n### Response\n"


def render(spec: TaskSpec, backend, item: dict, shots: list[dict], chat: bool) -> str:
    """The prompt text for one item: few-shot as plain text blocks, or as chat turns."""
    if spec.messages is not None:
        tools = spec.tools(item) if spec.tools else item.get("tools")
        if chat:
            return backend.chat_prompt(spec.messages(item), tools=tools, documents=item.get("documents"))
        return plain_instruction(spec.messages(item), tools)
    question = spec.template.format(question=spec.question(item))
    if chat:
        turns = []
        for shot in shots:
            turns += [{"role": "user", "content": spec.template.format(question=spec.question(shot))},
                      {"role": "assistant", "content": spec.target(shot).strip()}]
        return backend.chat_prompt(turns + [{"role": "user", "content": spec.chat_instruction + question}])
    blocks = [spec.template.format(question=spec.question(shot)) + spec.target_delimiter + spec.target(shot).strip()
              for shot in shots]
    return "\n\n".join(blocks + [question])


# ------------------------------------------------------------------ running and scoring
def evaluate(spec: TaskSpec, backend, items, shots, chat, samples, temperature, seed) -> list[dict]:
    prompts = [render(spec, backend, item, shots(item), chat) for item in items]
    if spec.kind == "choice":
        return score_choices(spec, backend, items, prompts)
    if spec.kind == "likelihood":
        return score_references(spec, backend, items, prompts)
    n = samples if spec.kind == "code" else 1
    temp = temperature if temperature or n == 1 else 0.8
    stop = () if (chat and spec.kind == "code") else spec.stop
    requests = [GenerationRequest(p, spec.max_new_tokens, stop, temp, seed + k) for p in prompts for k in range(n)]
    outputs = backend.generate(requests)
    rows = []
    for i, (item, prompt) in enumerate(zip(items, prompts)):
        mine = outputs[i * n:(i + 1) * n]
        if spec.kind == "code":
            outcomes = [spec.score(item, out) for out in mine]
            passed = sum(o["pass@1"] for o in outcomes)
            scores = {f"pass@{k}": pass_at_k(n, passed, k) for k in (1, 10, 100) if k <= n}
            rows.append(sample_row(spec, item, i, prompt, mine[0], scores, outcomes[0].get("detail") or outcomes[0]["status"]))
        else:
            result = spec.score(item, mine[0])
            scores = {k: v for k, v in result.items() if isinstance(v, float)}
            rows.append(sample_row(spec, item, i, prompt, mine[0], scores, result.get("reason")))
    return rows


def pass_at_k(n: int, correct: float, k: int) -> float:
    """The unbiased pass@k estimator of the Codex paper: 1 - C(n-c, k) / C(n, k)."""
    if n - correct < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(int(n - correct) + 1, n + 1))


def score_choices(spec: TaskSpec, backend, items, prompts) -> list[dict]:
    pairs, spans = [], []
    for item, prompt in zip(items, prompts):
        options, _ = spec.choices(item)
        spans.append((len(pairs), len(options)))
        pairs.extend((prompt, option) for option in options)
    scores = backend.loglikelihood(pairs)
    rows = []
    for i, (item, prompt, (start, count)) in enumerate(zip(items, prompts, spans)):
        options, gold = spec.choices(item)
        logliks = [scores[start + j][0] for j in range(count)]
        lengths = [len(o) for o in options]
        pick = max(range(count), key=lambda j: logliks[j])
        pick_norm = max(range(count), key=lambda j: logliks[j] / max(lengths[j], 1))
        rows.append(sample_row(spec, item, i, prompt, options[pick], {"acc": float(pick == gold), "acc_norm": float(pick_norm == gold)},
                               f"log-likelihoods {[round(x, 3) for x in logliks]}"))
    return rows


def score_references(spec: TaskSpec, backend, items, prompts) -> list[dict]:
    """Bits per UTF-8 byte of each reference answer (its end-of-turn included via the model's EOS)."""
    references = [spec.target(item) for item in items]
    scores = backend.loglikelihood(list(zip(prompts, references)))
    rows = []
    for i, (item, prompt, reference, (loglik, greedy)) in enumerate(zip(items, prompts, references, scores)):
        bits = -loglik / math.log(2) / max(len(reference.encode()), 1)
        rows.append(sample_row(spec, item, i, prompt, reference, {"bits_per_byte": bits, "greedy_match": float(greedy)}, None))
    return rows


def sample_row(spec: TaskSpec, item: dict, index: int, prompt: str, output: str, scores: dict, reason) -> dict:
    reference = item.get("answer", item.get("canonical_solution"))
    return {"id": spec.item_id(item, index), "subtask": spec.subtask(item) if spec.subtask else None, "prompt": prompt,
            "output": output, "reference": reference if isinstance(reference, (str, int, float)) else json.dumps(reference),
            "scores": scores, "reason": reason}


def summarize(spec: TaskSpec, rows: list[dict]) -> dict:
    metrics = defaultdict(list)
    by_subtask = defaultdict(lambda: defaultdict(list))
    for row in rows:
        for name, value in row["scores"].items():
            metrics[name].append(value)
            if row["subtask"] is not None:
                by_subtask[row["subtask"]][name].append(value)
    main = TASK_MAIN_METRIC.get(spec.name, MAIN_METRIC[spec.kind])
    means = {name: sum(v) / len(v) for name, v in metrics.items()}
    # None when no item has the main metric (a judge that never gave a verdict): never shown as a zero
    return {"main_metric": main, "value": means.get(main), "metrics": means, "n": len(rows),
            "subtasks": {name: {m: sum(v) / len(v) for m, v in values.items()}
                         for name, values in sorted(by_subtask.items(), key=lambda kv: natural_key(kv[0]))}}


def natural_key(text: str) -> list:
    """'len 256' before 'len 1024': digits compare as numbers."""
    import re

    return [float(part) if part.replace(".", "", 1).isdigit() else part for part in re.split(r"(\d+(?:\.\d+)?)", text)]


# ------------------------------------------------------------------ output
def write_results(out: Path, model: str, stage: str, results: dict, samples: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    document = {"model": model, "stage": stage, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "command": sys.argv, "tasks": results}
    with atomic_path(out / "samples.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(s) + "\n" for s in samples))
    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps(document, indent=2))


def results_table(results: dict, compare: Optional[str]) -> Table:
    size = MODELS.get(compare) if compare else None
    table = Table(title="eval results" + (f" — IBM {compare} beside" if compare else ""), title_justify="left")
    for column in ("task", "metric", "ours", "n") + ((f"IBM {compare}",) if compare else ()):
        table.add_column(column, justify="left" if column in ("task", "metric") else "right")
    for name, result in results.items():
        row = [name, result["main_metric"], shown(result["main_metric"], result["value"]), str(result["n"])]
        if size:
            row.append(f"{PUBLISHED[name][1][size]:.2f}" if name in PUBLISHED else "-")
        table.add_row(*row)
        for subtask, values in result["subtasks"].items():
            if len(result["subtasks"]) > 1:
                table.add_row(f"  {subtask}", "", shown(result["main_metric"], values.get(result["main_metric"])), "",
                              *([""] if size else []))
    if size:
        for name, (label, numbers) in PUBLISHED.items():
            if name not in results:
                table.add_row(f"[dim]{name}[/]", f"[dim]{label}[/]", "[dim]not run[/]", "", f"{numbers[size]:.2f}")
    return table


def shown(metric: str, value: Optional[float]) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" if metric in NOT_PERCENT else f"{100 * value:.2f}"


@app.command("table")
def table_command(
    directories: Optional[list[str]] = typer.Argument(None, help="Eval result directories. Default: every one under <run-dir>/eval/."),
    recipe: Optional[str] = options.RecipeOption,
    run_dir: Optional[str] = options.RunDirOption,
) -> None:
    """One table of every evaluated stage (rows) by task (columns), in the order the stages ran."""
    from granite_cli.recipe import load_recipe

    paths = [Path(d) for d in directories] if directories else sorted((load_recipe(recipe, run_dir).run_dir / "eval").glob("*/"))
    documents = [json.loads((p / "results.json").read_text()) for p in paths if (p / "results.json").exists()]
    if not documents:
        raise BadInput("no results.json found: run `granite eval` first")
    documents.sort(key=lambda d: d["created"])
    task_names = list(dict.fromkeys(name for d in documents for name in d["tasks"]))
    table = Table(title="evaluation after each stage (percent; bits_per_byte: lower is better)", title_justify="left")
    table.add_column("stage")
    for name in task_names:
        metric = next(d["tasks"][name]["main_metric"] for d in documents if name in d["tasks"])
        table.add_column(f"{name}\n{metric}", justify="right")
    for document in documents:
        table.add_row(document["stage"], *[shown(document["tasks"][n]["main_metric"], document["tasks"][n]["value"])
                                           if n in document["tasks"] else "-" for n in task_names])
    console.print(table)
