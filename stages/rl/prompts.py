"""A stage's RL prompts (docs/design.md, contract 3): read, checked before any training, split, tokenized.

Every prompt is a chat sample ending before the answer, with a `domain` and a `verifier` whose `type` names a
checker of granite_cli/verify. A prompt without one, or with a type no checker knows, stops the stage with
FILE:LINE and exit 2 (`--on-error skip` counts and skips it instead). Prompts scored by a reward model are left
out, with a count, when the stage has none. A fixed hash of each prompt's messages (not the seed: every seed of
a stage is judged on the same prompts; not the id: the same question under two ids in two stages' files is held
out in both or in neither) sets aside the held-out prompts the stages are evaluated on.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

from granite_cli.data.chat import normalize_sample, schema_problems
from granite_cli.data.records import ErrorPolicy, checked_records
from granite_cli.errors import BadInput
from granite_cli.verify import VERIFIERS


@dataclass
class Prompt:
    id: str
    domain: str
    messages: list[dict]
    verifier: dict
    tools: Optional[list[dict]] = None
    ids: list[int] = field(default_factory=list)  # the rendered prompt's token ids (filled by `tokenize`)


def load_prompts(paths: list[str], policy: ErrorPolicy, heldout_fraction: float, reward_model: bool, need_train: bool = True):
    """(training prompts, held-out prompts, counts) from RL-prompt files."""
    train, heldout = [], []
    counts: Counter = Counter()
    for prompt in checked_records(paths, policy, checked_prompt, "bad RL prompt"):
        counts["read"] += 1
        if prompt.verifier["type"] == "reward_model" and not reward_model:
            counts["left_out_needs_reward_model"] += 1
            continue
        held = is_heldout(prompt.messages, heldout_fraction)
        (heldout if held else train).append(prompt)
        counts["heldout" if held else "train"] += 1
    if need_train and not train:
        raise BadInput(f"no training prompts in {', '.join(paths)} ({dict(counts)})")
    return train, heldout, counts


def checked_prompt(record: dict, path: str, line_no: int) -> Prompt:
    sample = normalize_sample(record)
    problems = schema_problems(sample, prompt=True)
    verifier = record.get("verifier")
    if not isinstance(verifier, dict) or "type" not in verifier:
        problems.append("no verifier record ({\"type\": ...}): rl cannot score it")
    elif verifier["type"] not in VERIFIERS:
        problems.append(f"unknown verifier type {verifier['type']!r} (known: {', '.join(VERIFIERS)})")
    if problems:
        raise BadInput("; ".join(problems), path, line_no)
    return Prompt(str(record.get("id", f"{path}:{line_no}")), str(record.get("domain", "all")),
                  [{**m, "content": m.get("content") or ""} for m in sample["messages"]], verifier, sample.get("tools"))


def is_heldout(messages: list[dict], fraction: float) -> bool:
    """Whether a prompt (its turns' roles and texts) is in the held-out share: the same for rl's prompts and the
    reward model's pairs, so a question held out of one is never trained on by the other."""
    digest = hashlib.blake2b(f"rl-heldout:{content_key(messages)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def content_key(messages: list[dict]) -> str:
    """A prompt's turns, roles and texts, as one string: equal for the same question under any id."""
    return "\x1e".join(f"{m['role']}\x1f{m.get('content') or ''}" for m in messages)


def tokenize(prompts: list[Prompt], render, tokenizer) -> None:
    """Each prompt's token ids as the policy sees them (`render`: the engine's chat rendering with the generation
    prompt), so a rollout's sequence is these ids followed by the completion's."""
    from model.generation import Request

    texts = [render(Request(messages=p.messages, tools=p.tools)) for p in prompts]
    for prompt, ids in zip(prompts, tokenizer(texts, add_special_tokens=False)["input_ids"]):
        prompt.ids = list(ids)
