"""granite filter: curate SFT chat samples with deterministic checks and an LLM judge, every decision audited.

    granite filter SFT.jsonl.zst -o kept.jsonl.zst --audit audit.jsonl [--judge URL --judge-model NAME]
    granite filter report audit.jsonl [--json summary.json]
    granite filter dedup kept-*.jsonl.zst -o kept.jsonl.zst --audit dedup-audit.jsonl

1. read chat samples (docs/design.md, contract 2) as a stream, in chunks;
2. per sample (stages/filter/curate.py): normalize text; the schema check, then every enabled rule
   (stages/filter/rules.py); the judge (stages/filter/judge.py) for samples no rule rejected;
   accept / borderline / reject; exact and near deduplication of what would be kept;
3. write the kept samples (normalized) and one audit record per sample, then print the report.

Settings come from the recipe's [filter] table; flags override them.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Iterator, Optional

import typer

from granite_cli import options
from granite_cli.console import console, progress
from granite_cli.errors import BadInput, GraniteError
from granite_cli.recipe import FilterSection, Recipe, expand_path, load_recipe
from granite_cli.data.atomic import atomic_path
from granite_cli.data.parts import worker_records
from granite_cli.data.records import STDIO, ErrorPolicy, dumps, input_paths, read_records, record_writer
from stages.filter import report as report_module
from stages.filter.curate import DEDUP_RULES, OPTIONAL_CHECKS, Check, Curator
from stages.filter.dedup import ExactIndex, MinHashIndex
from stages.filter.judge import DEFAULT_WEIGHTS, Judge, JudgeCache, JudgePolicy
from stages.filter.rules import DEFAULT_SETTINGS, RULES, BenchmarkIndex

app = typer.Typer(cls=options.DefaultCommandGroup, help="Curate SFT chat samples (default), print an audit report (`report`), "
                                                     "or deduplicate shard outputs (`dedup`).\n\n"
                                                     "`granite filter FILE ...` is `granite filter run FILE ...`.")

NEAR_DEFAULTS = {"ngram": 5, "bands": 14, "rows": 8, "min_words": 15}


@app.command("run")
def filter_command(
    inputs: Optional[list[str]] = typer.Argument(None, help="Chat-sample JSONL files (.zst/.gz ok). Default: stdin."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Where the kept samples go. Default: stdout."),
    audit: Optional[str] = typer.Option(None, "--audit", help="One audit record per sample. Default: <run-dir>/filter/audit[-I-of-N].jsonl."),
    judge: str = typer.Option("none", "--judge", help="'none' (deterministic checks only), an OpenAI-compatible base URL "
                                                      "(http://host:8000/v1), or a local model directory."),
    judge_model: Optional[str] = typer.Option(None, "--judge-model", help="Model name the endpoint serves (with a URL --judge)."),
    judge_concurrency: int = typer.Option(8, "--judge-concurrency", help="Requests in flight to an endpoint judge."),
    judge_timeout: float = typer.Option(60.0, "--judge-timeout", help="Seconds before an endpoint request is abandoned and retried."),
    judge_retries: int = typer.Option(3, "--judge-retries", help="Retries (with exponential backoff) of a failed endpoint request."),
    judge_format_retries: int = typer.Option(2, "--judge-format-retries", help="Times a malformed judge answer is sent back for correction."),
    judge_logprobs: bool = typer.Option(True, "--judge-logprobs/--no-judge-logprobs", help="Ask for token log-probabilities and weight scores by them."),
    judge_cache: Optional[str] = typer.Option(None, "--judge-cache", help="SQLite cache of judge answers. Default: <run-dir>/filter/judge-cache.sqlite."),
    accept_at: Optional[float] = typer.Option(None, "--accept-at", help="Judge score (1-5) at or above which a sample is accepted. Recipe default: 4.0."),
    reject_below: Optional[float] = typer.Option(None, "--reject-below", help="Judge score under which a sample is rejected; in between is borderline. Recipe default: 3.0."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Dimension weights, e.g. correctness=0.4,conciseness=0.05 (the rest keep theirs)."),
    borderline: Optional[str] = typer.Option(None, "--borderline", help="keep or drop borderline samples. Recipe default: drop."),
    checks: Optional[str] = typer.Option(None, "--checks", help=f"Comma-separated checks to run (schema always runs): {', '.join(OPTIONAL_CHECKS)}. Default: the recipe's list, else all."),
    set_values: Optional[list[str]] = typer.Option(None, "--set", help="Tune a check: CHECK.KEY=VALUE, e.g. length.max_tokens=2048 or near_dedup.min_words=30 (repeatable)."),
    decontaminate: Optional[list[str]] = typer.Option(None, "--decontaminate", help="Benchmark JSONL whose prompts must not appear in the data (repeatable; adds to the recipe's)."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Count tokens for the length check with this tokenizer. Default: <run-dir>/tokenizer if it exists, else estimate from bytes."),
    chunk: int = typer.Option(256, "--chunk", help="Samples processed together (the judge sees a chunk's turns at once)."),
    recipe: Optional[str] = options.RecipeOption,
    run_dir: Optional[str] = options.RunDirOption,
    on_error: str = options.OnErrorOption,
    shard_index: Optional[int] = options.ShardIndexOption,
    num_shards: Optional[int] = options.NumShardsOption,
    device: str = options.DeviceOption,
) -> None:
    """Filter chat samples: rules and judge decide, the audit says why, the report sums it up."""
    loaded = load_recipe(recipe, run_dir)
    settings = loaded.filter
    index, count = options.array_position(shard_index, num_shards)
    policy = judge_policy(settings, accept_at, reject_below, weights)
    keep_borderline = borderline_choice(borderline or settings.borderline)
    enabled = enabled_checks(checks, settings)
    tuned = tuned_settings(settings, set_values, decontaminate, tokenizer, loaded)
    the_judge = open_judge(judge, judge_model, judge_concurrency, judge_timeout, judge_retries, judge_format_retries,
                           judge_logprobs, judge_cache, loaded, device)
    curator = Curator([Check(name, RULES[name], tuned.get(name, {})) for name in enabled if name in RULES], the_judge,
                      policy, ExactIndex() if "exact_dedup" in enabled else None,
                      MinHashIndex(**tuned["near_dedup"]) if "near_dedup" in enabled else None, keep_borderline)
    suffix = f"-{index:05d}-of-{count:05d}" if count > 1 else ""
    audit_path = audit or str(loaded.paths.filter_dir / f"audit{suffix}.jsonl")
    run_curation(curator, input_paths(inputs), output, audit_path, ErrorPolicy(on_error), chunk, index, count)
    if the_judge is not None:
        console.print(f"judge cache: {the_judge.cache.hits} hit(s), {the_judge.cache.misses} miss(es)")
    report_module.print_summary(report_module.summarize([audit_path]))


def run_curation(curator: Curator, paths: list[str], output: Optional[str], audit_path: str, errors: ErrorPolicy,
                 chunk: int, index: int, count: int) -> None:
    """Stream the samples through the curator chunk by chunk: memory holds one chunk plus the dedup index."""
    if chunk < 1:
        raise BadInput("--chunk must be at least 1")
    judged: Counter = Counter()  # judge statuses of the samples sent to the judge
    with record_writer(output) as kept_sink, record_writer(audit_path) as audit_sink, progress() as bar:
        task = bar.add_task("filter", total=None, rate="")
        pending: list[dict] = []
        for position, sample in enumerate(worker_samples(paths, errors, index, count)):
            sample.setdefault("id", f"#{position}" if count == 1 else f"#{index}.{position}")
            pending.append(sample)
            if len(pending) == chunk:
                judged += write_chunk(curator.curate(pending), kept_sink, audit_sink)
                bar.advance(task, len(pending))
                pending = []
        judged += write_chunk(curator.curate(pending), kept_sink, audit_sink)
        if judged and not judged["ok"]:  # raised inside: neither output is published
            raise GraniteError(f"the judge gave no usable verdict on any of the {sum(judged.values())} samples it was asked "
                               f"about ({', '.join(f'{n} {status}' for status, n in judged.items())}); see the judge "
                               f"errors above, or check --judge, --judge-model and the server")
    errors.report()
    console.print(f"audit: {audit_path}")


def worker_samples(paths: list[str], errors: ErrorPolicy, index: int, count: int) -> Iterator[dict]:
    """This worker's samples: its part of the files (granite_cli/data/parts.py), or every N-th sample of stdin (a
    stream cannot be split)."""
    if STDIO not in paths:
        return worker_records(paths, errors, index, count)
    return (sample for position, sample in enumerate(read_records(paths, errors)) if position % count == index)


def write_chunk(results: list[tuple[dict, dict]], kept_sink, audit_sink) -> Counter:
    """Write the kept samples and every audit record; count the judge's statuses (ok, malformed, failed)."""
    judged: Counter = Counter()
    for sample, audit in results:
        if audit["kept"]:
            kept_sink.write(dumps(sample))
        audit_sink.write(dumps(audit))
        status = audit.get("judge", {}).get("status")
        if status in ("ok", "malformed", "failed"):
            judged[status] += 1
    return judged


# ------------------------------------------------------------------ settings
def judge_policy(settings: FilterSection, accept_at, reject_below, weights: Optional[str]) -> JudgePolicy:
    chosen = {**DEFAULT_WEIGHTS, **settings.weights, **parse_assignments(weights or "", "--weights")}
    return JudgePolicy(accept_at if accept_at is not None else settings.accept_at,
                       reject_below if reject_below is not None else settings.reject_below,
                       {k: float(v) for k, v in chosen.items()})


def borderline_choice(value: str) -> bool:
    if value not in ("keep", "drop"):
        raise BadInput(f"--borderline must be keep or drop, not {value!r}")
    return value == "keep"


def enabled_checks(checks: Optional[str], settings: FilterSection) -> list[str]:
    if checks is not None:
        names = [c.strip() for c in checks.split(",") if c.strip()]
    else:
        names = settings.checks if settings.checks is not None else list(OPTIONAL_CHECKS)
    unknown = [n for n in names if n not in OPTIONAL_CHECKS and n != "schema"]
    if unknown:
        raise BadInput(f"unknown check(s) {', '.join(unknown)} (known: schema, {', '.join(OPTIONAL_CHECKS)})")
    return [n for n in names if n != "schema"]


def parse_assignments(text: str, flag: str) -> dict:
    out = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise BadInput(f"{flag}: expected KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = float(value)
        except ValueError as err:
            raise BadInput(f"{flag}: {key.strip()} needs a number, got {value!r}") from err
    return out


def tuned_settings(settings: FilterSection, set_values: Optional[list[str]], decontaminate: Optional[list[str]],
                   tokenizer: Optional[str], recipe: Recipe) -> dict[str, dict]:
    """Each check's settings: its defaults, then the recipe's [filter.settings.CHECK], then --set; plus what they load."""
    tuned = {name: dict(values) for name, values in {**DEFAULT_SETTINGS, "near_dedup": NEAR_DEFAULTS}.items()}
    for name, values in settings.settings.items():
        if name not in tuned:
            raise BadInput(f"[filter.settings.{name}]: no check has settings by that name (known: {', '.join(sorted(tuned))})",
                           str(recipe.path))
        tuned[name].update(values)
    for assignment in set_values or []:
        target, sep, value = assignment.partition("=")
        check, dot, key = target.partition(".")
        if not (sep and dot) or check not in tuned:
            raise BadInput(f"--set takes CHECK.KEY=VALUE with CHECK one of {', '.join(sorted(tuned))} (got {assignment!r})")
        tuned[check][key] = _number_or_text(value)
    files = [expand_path(p, recipe.path.parent) for p in tuned["leakage"].get("decontaminate", [])] + list(decontaminate or [])
    tuned["leakage"]["benchmark"] = BenchmarkIndex(files, int(tuned["leakage"]["ngram"]), float(tuned["leakage"]["overlap"]))
    tuned["length"]["count_tokens"] = token_counter(tokenizer, recipe)
    return tuned


def _number_or_text(value: str):
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return value


def token_counter(tokenizer: Optional[str], recipe: Recipe):
    """Tokens of a rendered sample: exact with a tokenizer (chat template applied), else UTF-8 bytes / bytes_per_token."""
    path = tokenizer or (str(recipe.paths.tokenizer) if recipe.paths.tokenizer.is_dir() else None)
    if path is None:
        def estimate(sample: dict) -> int:
            text = json.dumps([sample["messages"], sample.get("tools"), sample.get("documents")], ensure_ascii=False)
            return int(len(text.encode()) / recipe.bytes_per_token)
        return estimate
    from granite_cli.data.tokenizer_io import load_tokenizer

    loaded = load_tokenizer(path)

    def count(sample: dict) -> int:
        rendered = loaded.apply_chat_template(sample["messages"], tools=sample.get("tools"), documents=sample.get("documents"),
                                              tokenize=False)
        return len(loaded(rendered, add_special_tokens=False)["input_ids"])
    return count


def open_judge(spec: str, model, concurrency, timeout, retries, format_retries, logprobs, cache_path, recipe: Recipe,
               device: str) -> Optional[Judge]:
    if spec == "none":
        return None
    from model.generation import open_judge

    backend = open_judge(spec, model, device=device, concurrency=concurrency, timeout=timeout, retries=retries)
    cache = JudgeCache(Path(cache_path) if cache_path else recipe.paths.filter_dir / "judge-cache.sqlite")
    return Judge(backend, cache, format_retries, logprobs)


# ------------------------------------------------------------------ report and cross-shard dedup
@app.command("report")
def report_command(
    audits: list[str] = typer.Argument(..., help="Audit files written by `granite filter` (several shards' audits add up)."),
    json_out: Optional[str] = typer.Option(None, "--json", help="Also write the summary as JSON to this file ('-': stdout)."),
) -> None:
    """Summarize audit files: verdicts, reasons, sources, judge score histograms."""
    summary = report_module.summarize(audits)
    report_module.print_summary(summary)
    if json_out == "-":
        typer.echo(json.dumps(summary, indent=2))
    elif json_out:
        with atomic_path(Path(json_out)) as tmp:
            tmp.write_text(json.dumps(summary, indent=2))


@app.command("dedup")
def dedup_command(
    inputs: list[str] = typer.Argument(..., help="Kept-sample files of every shard of a job array, in shard order."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="The deduplicated samples. Default: stdout."),
    audit: str = typer.Option(..., "--audit", help="One audit record per input sample (kept, or which sample it duplicates)."),
    checks: str = typer.Option(",".join(DEDUP_RULES), "--checks", help="exact_dedup, near_dedup or both."),
    recipe: Optional[str] = options.RecipeOption,
    run_dir: Optional[str] = options.RunDirOption,
    on_error: str = options.OnErrorOption,
) -> None:
    """Deduplicate across the shards of a job array (each shard deduplicated only its own samples)."""
    settings = load_recipe(recipe, run_dir).filter
    chosen = [c.strip() for c in checks.split(",") if c.strip()]
    if not chosen or set(chosen) - set(DEDUP_RULES):
        raise BadInput(f"--checks for dedup takes {' and/or '.join(DEDUP_RULES)}, not {checks!r}")
    near_settings = {**NEAR_DEFAULTS, **settings.settings.get("near_dedup", {})}
    curator = Curator([], None, JudgePolicy(), ExactIndex() if "exact_dedup" in chosen else None,
                      MinHashIndex(**near_settings) if "near_dedup" in chosen else None, keep_borderline=False)
    run_curation(curator, inputs, output, audit, ErrorPolicy(on_error), 1024, 0, 1)
    report_module.print_summary(report_module.summarize([audit]))
