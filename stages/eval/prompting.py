"""How eval puts a task item to a model: a generation request (chat messages or plain text), and the texts back."""

from __future__ import annotations

import dataclasses
import json
from typing import Optional

from granite_cli.errors import GraniteError
from model.generation import Request, Sampling


def plain_instruction(messages: list[dict], tools: Optional[list[dict]] = None) -> str:
    """A chat prompt as plain text for a base model, in the instruction format of the pre-training data."""
    said = "\n\n".join(m["content"] for m in messages if m["role"] in ("system", "user"))
    if tools:
        said += "\n\nTools:\n" + "\n".join(json.dumps(tool) for tool in tools)
    return f"### Instruction\n{said}\n### Response\n"


def render(spec, item: dict, shots: list[dict], chat: bool) -> Request:
    """One item's request: chat messages (few-shot examples as earlier turns), or plain text as lm-evaluation-harness
    builds it: the preamble, then each shot as question + target delimiter + target, "\n\n" between shots and before
    the question (the targets as they are, unstripped)."""
    if spec.messages is not None:
        tools = spec.tools(item) if spec.tools else item.get("tools")
        if chat:
            return Request(messages=spec.messages(item), tools=tools, documents=item.get("documents"))
        return Request(prompt=plain_instruction(spec.messages(item), tools))
    question = spec.template.format(question=spec.question(item))
    preamble = spec.preamble(item) if spec.preamble else ""
    if chat:
        turns = [{"role": "system", "content": preamble.strip()}] if preamble else []
        for shot in shots:
            turns += [{"role": "user", "content": spec.template.format(question=spec.question(shot))},
                      {"role": "assistant", "content": spec.target(shot).strip()}]
        return Request(messages=turns + [{"role": "user", "content": spec.chat_instruction + question}])
    blocks = [spec.template.format(question=spec.question(shot)) + spec.target_delimiter + spec.target(shot) for shot in shots]
    return Request(prompt=preamble + "\n\n".join(blocks + [question]))


def chat_request(messages: list[dict], chat: bool) -> Request:
    """A conversation as chat messages, or for a base model as one plain-text instruction."""
    return Request(messages=messages) if chat else Request(prompt=plain_instruction(messages))


def generate_texts(engine, requests: list[Request], sampling: Sampling) -> list[list[str]]:
    """Every request's sample texts under `sampling`; a request the engine could not answer fails the evaluation."""
    completions = engine.generate([dataclasses.replace(r, sampling=sampling) for r in requests])
    for samples in completions:
        for completion in samples:
            if completion.error is not None:
                raise GraniteError(completion.error)
    return [[c.text for c in samples] for samples in completions]
