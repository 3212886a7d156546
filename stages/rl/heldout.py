"""The stage's evaluation: its held-out prompts answered by the starting model and by the trained one, scored by
the same verifiers as training, compared per domain with a paired bootstrap interval.

Each prompt is answered K times at the rollouts' temperature (the same seed before and after) and scored by the
mean of its K rewards: the expected reward of the policy is what RL raises, and K answers make each prompt's score
less noisy than one. Temperature 0 (one greedy answer) measures the mode instead. The interval comes from
resampling prompts, each prompt's before/after pair kept together.
"""

from __future__ import annotations

import json

from granite_cli.stats import paired_bootstrap
from stages.rl.prompts import Prompt


def answer(engine, prompts: list[Prompt], sampling, rewarder, autocast) -> list[dict]:
    """`sampling.n` answers per prompt and their mean reward: [{id, domain, reward, responses}]."""
    from model.generation import Request

    was_training = engine.model.training
    engine.model.eval()
    with autocast():
        results = engine.generate([Request(messages=p.messages, tools=p.tools, sampling=sampling) for p in prompts])
    engine.model.train(was_training)
    texts = [c.text for completions in results for c in completions]
    rewards, _ = rewarder.score([p for p in prompts for _ in range(sampling.n)], texts)
    k = sampling.n
    return [{"id": p.id, "domain": p.domain, "reward": sum(rewards[i * k:(i + 1) * k]) / k, "responses": texts[i * k:(i + 1) * k]}
            for i, p in enumerate(prompts)]


def by_domain(answers: list[dict]) -> dict[str, list[float]]:
    """Each domain's per-prompt rewards, and "all", in the answers' order."""
    found: dict[str, list[float]] = {"all": []}
    for answer in answers:
        found["all"].append(answer["reward"])
        found.setdefault(answer["domain"], []).append(answer["reward"])
    return found


def compare(before: list[dict], after: list[dict], seed: int) -> dict:
    """Per domain (and "all"): n, mean reward before and after, the change and its 95% paired bootstrap interval."""
    if [b["id"] for b in before] != [a["id"] for a in after]:
        raise ValueError("before and after must answer the same prompts in the same order")
    olds, news = by_domain(before), by_domain(after)
    table = {}
    for domain in ["all"] + sorted(d for d in olds if d != "all"):
        old, new = olds[domain], news[domain]
        change, low, high = paired_bootstrap(old, new, seed)
        table[domain] = {"n": len(old), "before": sum(old) / len(old), "after": sum(new) / len(new),
                         "change": change, "ci_low": low, "ci_high": high}
    return table


def rows_jsonl(before: list[dict], after: list[dict]) -> str:
    """The per-prompt record kept in the checkpoint (heldout.jsonl): both models' answers and mean rewards."""
    return "".join(json.dumps({"id": b["id"], "domain": b["domain"], "reward_before": b["reward"], "reward_after": a["reward"],
                               "responses_before": b["responses"], "responses_after": a["responses"]}) + "\n"
                   for b, a in zip(before, after))
