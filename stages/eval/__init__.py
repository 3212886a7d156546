"""granite eval: evaluate a checkpoint (or an OpenAI-compatible endpoint) on declarative tasks.

    granite eval CKPT --tasks heldout,humaneval,ruler [-o OUTDIR] [--compare granite-4.1-8b]
    granite eval table [EVALDIR ...]

1. model: the generation engine (model/generation.py) over a local model directory (batched
   KV-cached generation, log-likelihoods) or an OpenAI-compatible endpoint; chat prompts when the
   checkpoint's lineage went through sft or rl, plain text for base models;
2. per task (the registry in stages/eval/tasks.py): load items, draw few-shot examples as
   lm-evaluation-harness does, render prompts (stages/eval/prompting.py), generate or score
   choices, extract and score each item;
3. write results.json and samples.jsonl (stages/eval/results.py) atomically, and print a table on
   stderr — with IBM's numbers beside ours on --compare.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Optional

import typer

from granite_cli import options
from granite_cli.console import console
from granite_cli.errors import BadInput
from stages.eval import ruler
from stages.eval.judged import add_interval
from stages.eval.published import MODELS
from granite_cli.eval_results import read_results, shown, write_results
from stages.eval.results import results_table, stages_tables, summarize
from stages.eval.runner import LM_EVAL_FEWSHOT_SEED, FewShot, evaluate, load_items
from stages.eval.tasks import TaskSpec, get_task

app = typer.Typer(cls=options.DefaultCommandGroup, help="Evaluate a checkpoint (default) or print a table of evaluations (`table`).\n\n"
                                                     "`granite eval CKPT ...` is `granite eval run CKPT ...`.")
@app.command("run")
def eval_command(
    checkpoint: Optional[str] = typer.Argument(None, help="Checkpoint or any local HF causal LM directory (omit with --endpoint)."),
    tasks: str = typer.Option("heldout", "--tasks", help="Comma-separated: gsm8k, mmlu, mmlu_pro, bbh, deepmind_math, humaneval, humaneval_plus, mbpp, mbpp_plus, bfcl, ifeval, heldout, heldout_bpb, ruler, mt_bench, arenahard, alpacaeval (these three need --judge), local:PATH.jsonl."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Results directory. Default: <run-dir>/eval/<checkpoint name>, where a checkpoint in X/checkpoints/ without --run-dir writes to X/eval/."),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help="OpenAI-compatible base URL (e.g. http://localhost:8000/v1) instead of a local model."),
    model_name: Optional[str] = typer.Option(None, "--model", help="Model name to send to --endpoint."),
    limit: Optional[str] = typer.Option(None, "--limit", help="Evaluate only the first N items of each task: N, or TASK=N "
                                                             "for one task, comma-separated (100,humaneval=40: 40 "
                                                             "HumanEval problems, 100 items of every other task)."),
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
    allow_unsafe_code: bool = typer.Option(False, "--allow-unsafe-code", help="Run model-written code (humaneval, mbpp, "
                                           "...) even where the sandbox (bubblewrap) cannot isolate it. Default: refuse."),
    stage: Optional[str] = typer.Option(None, "--stage", help="Label for this evaluation in `granite eval table`. Default: the checkpoint's last lineage stage."),
    recipe: Optional[str] = options.RecipeOption,
    run_dir: Optional[str] = options.RunDirOption,
    seed: int = options.SeedOption,
    fewshot_seed: int = typer.Option(LM_EVAL_FEWSHOT_SEED, "--fewshot-seed", help="Seed of the few-shot draw for tasks that "
                                     "sample their shots (gsm8k). Default: lm-evaluation-harness's, so prompts agree with it."),
    device: str = options.DeviceOption,
) -> None:
    """Evaluate a model on benchmark tasks; writes results.json and samples.jsonl."""
    if compare and compare not in MODELS:
        raise BadInput(f"--compare takes one of {', '.join(MODELS)}")
    if chat_template not in ("auto", "on", "off"):
        raise BadInput("--chat-template must be on, off or auto")
    lengths, depths = parse_grid(ruler_lengths, int, "--ruler-lengths"), parse_grid(ruler_depths, float, "--ruler-depths")
    specs = [get_task(name.strip(), lengths, depths, seed) for name in tasks.split(",") if name.strip()]
    if not specs:
        raise BadInput("--tasks names no task")
    limits = parse_limits(limit, [spec.name for spec in specs])
    if any(spec.kind == "code" for spec in specs):
        from granite_cli.verify.sandbox import require_isolation

        require_isolation(allow_unsafe_code)
    backend = make_backend(checkpoint, endpoint, model_name, batch_size, device)
    if any(spec.name == "ruler" for spec in specs):  # ruler's prompts are sized in the evaluated model's own tokens
        specs = [get_task("ruler", lengths, depths, seed, token_counter(backend)) if spec.name == "ruler" else spec
                 for spec in specs]
    grader = make_judge(specs, judge, judge_model, judge_concurrency, device)
    label = stage or default_stage(checkpoint)
    tuned = chat_tuned(checkpoint, endpoint)
    out = Path(output) if output else default_output(checkpoint, recipe, run_dir)
    settings = {"batch_size": batch_size, "seed": seed, "fewshot_seed": fewshot_seed, "samples": samples,
                "data_dir": data_dir}
    results, all_samples = {}, []
    for spec in specs:
        started = time.perf_counter()
        chat = use_chat(chat_template, tuned)
        items = load_items(spec, Path(data_dir), limits[spec.name])
        shots = FewShot(spec, Path(data_dir), num_fewshot, fewshot_seed)
        if max_new_tokens:
            spec = dataclasses.replace(spec, max_new_tokens=max_new_tokens)
        if spec.run:  # judged tasks: their own generation and grading, and an interval on the main metric
            scored = spec.run(spec, backend, grader, items, chat, Path(data_dir), seed)
            summary = summarize(spec, scored)
            add_interval(summary, scored, summary["main_metric"], seed)
        else:
            scored = evaluate(spec, backend, items, shots, chat, samples, temperature, seed)
            summary = summarize(spec, scored)
        summary["settings"] = {"limit": limits[spec.name], **settings, "num_fewshot": shots.count or spec.inline_shots, "chat_template": chat,
                               "max_new_tokens": spec.max_new_tokens, "seconds": round(time.perf_counter() - started, 1)}
        if spec.name == "ruler":
            summary["grids"] = ruler.grids(summary["subtasks"])
            summary["effective_length"] = ruler.effective_length(summary["grids"])
            for view in ruler.show(summary["grids"], summary["effective_length"]):
                console.print(view)
        results[spec.name] = summary
        all_samples.extend({"task": spec.name, **row} for row in scored)
        console.print(f"{spec.name}: {summary['main_metric']} = {shown(summary['main_metric'], summary['value'])} over {summary['n']} items")
    write_results(out, backend.name, label, results, all_samples)
    console.print(results_table(results, compare))
    console.print(f"wrote [bold]{out}/results.json[/] and samples.jsonl")


def token_counter(backend):
    """Tokens of a text in the evaluated model's tokenizer (a local model's; None for an endpoint: ruler estimates)."""
    tokenizer = getattr(backend, "tokenizer", None)
    return (lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])) if tokenizer is not None else None


def make_backend(checkpoint, endpoint, model_name, batch_size, device):
    from model.generation import open_engine

    if endpoint:
        if not model_name:
            raise BadInput("--endpoint needs --model (the name the server serves)")
        return open_engine(endpoint, model_name, concurrency=batch_size)
    if not checkpoint:
        raise BadInput("give a checkpoint directory, or --endpoint URL --model NAME")
    return open_engine(checkpoint, device=device, batch_size=batch_size)


def make_judge(specs: list[TaskSpec], judge: Optional[str], judge_model: Optional[str], concurrency: int, device: str):
    """The judge backend, opened only when a judged task is asked for."""
    needing = [spec.name for spec in specs if spec.run]
    if not needing:
        return None
    if not judge:
        raise BadInput(f"{', '.join(needing)} need a judge: --judge URL --judge-model NAME, or --judge MODEL_DIR")
    from model.generation import open_judge

    return open_judge(judge, judge_model, device=device, concurrency=concurrency)


def default_output(checkpoint: Optional[str], recipe: str, run_dir: Optional[str]) -> Path:
    """<run dir>/eval/<checkpoint name>: the run dir --run-dir names, else the one holding the checkpoint
    (X/checkpoints/NAME -> X/eval/NAME), else the recipe's. Following the checkpoint keeps the evaluation of another
    run's rl-stage-4 (a seed run in D) from overwriting this run's results of the same name."""
    from granite_cli.recipe import load_recipe
    from granite_cli.rundir import RunDir

    holding = RunDir.holding(Path(checkpoint)) if checkpoint and run_dir is None else None
    if holding:
        return holding.eval_dir(Path(checkpoint).name)
    return load_recipe(recipe, run_dir).paths.eval_dir(Path(checkpoint).name if checkpoint else "endpoint")


def default_stage(checkpoint: Optional[str]) -> str:
    from model.checkpoint import stage_label

    return stage_label(Path(checkpoint)) if checkpoint else "endpoint"


CHAT_STAGES = ("sft", "rl")  # a model that went through one of these answers chat turns


def chat_tuned(checkpoint: Optional[str], endpoint: Optional[str]) -> bool:
    """Whether the model is a chat model: its lineage went through a chat stage (a served model is taken to be one,
    and so is a foreign checkpoint without lineage that ships a chat template)."""
    from model.checkpoint import read_lineage

    if endpoint or not checkpoint:
        return True
    lineage = read_lineage(Path(checkpoint))
    if lineage:
        return any(entry.get("stage") in CHAT_STAGES for entry in lineage)
    return (Path(checkpoint) / "chat_template.jinja").exists()


def use_chat(mode: str, tuned: bool) -> bool:
    """auto: the chat template for chat models; base models get plain-text prompts."""
    return tuned if mode == "auto" else mode == "on"


# ------------------------------------------------------------------ items and prompts
def parse_limits(text: Optional[str], tasks: list[str]) -> dict[str, Optional[int]]:
    """Each task's --limit: `N` for every task, `TASK=N` for one; a task that none names has no limit."""
    default, named = None, {}
    for entry in filter(None, (e.strip() for e in (text or "").split(","))):
        name, equals, count = entry.rpartition("=")
        if not count.isdigit() or int(count) < 1 or (equals and not name):
            raise BadInput(f"--limit takes N or TASK=N with N at least 1, comma-separated, not {entry!r}; leave it out "
                           f"to evaluate every item")
        if not equals:
            default = int(count)
        elif name not in tasks:
            raise BadInput(f"--limit names task {name!r}, which --tasks does not ({', '.join(tasks)})")
        else:
            named[name] = int(count)
    return {task: named.get(task, default) for task in tasks}


def parse_grid(text: str, kind, flag: str) -> tuple:
    try:
        return tuple(kind(x) for x in text.split(",") if x.strip())
    except ValueError as err:
        raise BadInput(f"{flag} takes comma-separated numbers, not {text!r}") from err


@app.command("table")
def table_command(
    directories: Optional[list[str]] = typer.Argument(None, help="Eval result directories. Default: every one under <run-dir>/eval/."),
    recipe: Optional[str] = options.RecipeOption,
    run_dir: Optional[str] = options.RunDirOption,
) -> None:
    """One table of every evaluated stage (rows) by task (columns), in the order the stages ran."""
    from granite_cli.recipe import load_recipe

    paths = [Path(d) for d in directories] if directories else sorted(load_recipe(recipe, run_dir).paths.eval_root.glob("*/"))
    for table in stages_tables(read_results(paths)):
        console.print(table)
