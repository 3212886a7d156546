"""Running one task over its items: few-shot examples, generation or scoring, and each item's row.

The command (stages/eval/__init__.py) opens the model and loops over tasks; this module does what
a task needs done with the model: `load_items`, `FewShot` (lm-evaluation-harness's samplers),
`evaluate` for generated answers (and code, with pass@k), `score_choices` for log-likelihood
multiple choice, `score_references` for bits per byte.
"""

from __future__ import annotations

import math
import os
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

from granite_cli.errors import BadInput
from model.generation import Sampling
from stages.eval.prompting import generate_texts, render
from stages.eval.results import sample_row
from stages.eval.tasks import TaskSpec

LM_EVAL_FEWSHOT_SEED = 1234  # lm-evaluation-harness's default fewshot_random_seed


def load_items(spec: TaskSpec, data_dir: Path, limit) -> list[dict]:
    if spec.loader:
        items = spec.loader(data_dir)
    else:
        items = spec.data.load(data_dir)
    if not items:
        raise BadInput(f"task {spec.name}: no items")
    return items[:limit] if limit else items


class FewShot:
    """The few-shot examples of each item, drawn as lm-evaluation-harness draws them, so prompts agree text for text:
    `first_n` takes the first examples of the pool in order (MMLU's and MMLU-Pro's dev shots of the item's subject);
    `random` draws from one generator seeded once and called item after item in order (lm-eval's default sampler).
    Call it on the items in their order: the shots of item i depend on the draws before it, as in lm-eval."""

    def __init__(self, spec: TaskSpec, data_dir: Path, override: Optional[int], seed: int = LM_EVAL_FEWSHOT_SEED):
        self.spec = spec
        self.rng = random.Random(seed)
        self.count = spec.num_fewshot if override is None else override
        if self.count and spec.fewshot_data is None:
            raise BadInput(f"task {spec.name} has no few-shot source")
        pool = spec.fewshot_data.load(data_dir) if self.count else []
        self.pool = [shot for shot in pool if spec.fewshot_filter(shot)] if spec.fewshot_filter else pool

    def __call__(self, item: dict) -> list[dict]:
        pool = self.pool
        if self.spec.fewshot_by:
            key = self.spec.fewshot_by(item)
            pool = [shot for shot in pool if self.spec.fewshot_by(shot) == key] or self.pool
        if self.spec.fewshot_sampler == "first_n":
            return pool[:self.count]
        return self.rng.sample(pool, min(self.count, len(pool)))


# ------------------------------------------------------------------ running and scoring
def evaluate(spec: TaskSpec, backend, items, shots, chat, samples, temperature, seed) -> list[dict]:
    requests = [render(spec, item, shots(item), chat) for item in items]
    prompts = [backend.prompt_text(r) for r in requests]
    if spec.kind == "choice":
        return score_choices(spec, backend, items, prompts)
    if spec.kind == "likelihood":
        return score_references(spec, backend, items, prompts)
    n = samples if spec.kind == "code" else 1
    temp = temperature if temperature or n == 1 else 0.8
    stop = () if (chat and spec.kind == "code") else spec.stop
    outputs = generate_texts(backend, requests, Sampling(spec.max_new_tokens, temp, stop=stop, seed=seed, n=n))
    if spec.kind == "code":  # each answer runs in its own sandbox: as many at once as there are cores
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            futures = [[pool.submit(spec.score, item, out) for out in mine] for item, mine in zip(items, outputs)]
        code_outcomes = [[future.result() for future in row] for row in futures]
    rows = []
    for i, (item, prompt, mine) in enumerate(zip(items, prompts, outputs)):
        if spec.kind == "code":
            outcomes = code_outcomes[i]
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
