"""The Granite chat format rendered by our own code into token ids and a loss mask.

It produces exactly the ids that `tokenizer.apply_chat_template(..., tokenize=True)` produces with
GRANITE_CHAT_TEMPLATE (a test holds the two together), and knows which of them to train on: each
assistant turn's content, its tool calls and its `<|end_of_text|>`. Role headers, the newline after
each turn, and every other role's text are context only.

A conversation is a sequence of pieces, each either plain text or one special token; every piece
boundary sits next to a special token, where the tokenizer splits anyway, so encoding the pieces
one by one gives the ids of encoding the whole string, and a mask can follow the pieces.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from granite_cli.errors import BadInput
from model.chat_template import EOS_TOKEN

START_ROLE, END_ROLE = "<|start_of_role|>", "<|end_of_role|>"
TOOLS_PREAMBLE = 'You can call these tools. To call one, answer with <tool_call>{"name": ..., "arguments": {...}}</tool_call>.\n<tools>'
DOCUMENTS_PREAMBLE = "Answer using only these documents.\n<documents>"


def tojson(value) -> str:
    """JSON as the chat template's `tojson` filter writes it (transformers: json.dumps, non-ASCII kept)."""
    return json.dumps(value, ensure_ascii=False)


def call_arguments(call: dict):
    arguments = call.get("arguments", {})
    return json.loads(arguments) if isinstance(arguments, str) else arguments


def system_text(sample: dict) -> str:
    """The system turn: the system prompt, then the tool list, then the documents (each block only if present)."""
    messages = sample["messages"]
    text = messages[0].get("content") or "" if messages and messages[0]["role"] == "system" else ""
    if sample.get("tools"):
        text = (text + "\n\n" if text else "") + TOOLS_PREAMBLE + "".join("\n" + tojson(t) for t in sample["tools"]) + "\n</tools>"
    if sample.get("documents"):
        text = (text + "\n\n" if text else "") + DOCUMENTS_PREAMBLE + "".join("\n" + tojson(d) for d in sample["documents"]) + "\n</documents>"
    return text


def turn_text(message: dict) -> str:
    """A turn's content followed by its tool calls, one `<tool_call>{...}</tool_call>` per call."""
    content = message.get("content") or ""
    parts = [content]
    for i, call in enumerate(message.get("tool_calls") or []):
        separator = "\n" if (i == 0 and content) or i > 0 else ""
        parts.append(separator + "<tool_call>" + tojson({"name": call["name"], "arguments": call_arguments(call)}) + "</tool_call>")
    return "".join(parts)


@dataclass
class Rendered:
    ids: np.ndarray    # int32 token ids of the whole conversation
    trained: np.ndarray  # bool: this token is a training target


class ChatRenderer:
    """Renders chat samples with one tokenizer; pieces are encoded in batches for speed."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        ids = {token: tokenizer.convert_tokens_to_ids(token) for token in (START_ROLE, END_ROLE, EOS_TOKEN)}
        missing = [t for t, i in ids.items() if i is None or i == tokenizer.unk_token_id]
        if missing:
            raise BadInput(f"the tokenizer lacks the Granite chat tokens {', '.join(missing)}")
        self.start_role, self.end_role, self.eot = ids[START_ROLE], ids[END_ROLE], ids[EOS_TOKEN]
        self.newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
        self.control_tokens = sorted({str(t) for t in tokenizer.all_special_tokens} | {START_ROLE, END_ROLE, EOS_TOKEN})

    def pieces(self, sample: dict) -> list[tuple[str | int, bool]]:
        """(text or special-token id, trained) in order; raises BadInput for a control token inside any text."""
        messages = sample["messages"]
        pieces: list[tuple[str | int, bool]] = []
        system = system_text(sample)
        if system:
            self.check_text(system, sample, "the system turn")
            pieces += [(self.start_role, False), ("system", False), (self.end_role, False), (system, False),
                       (self.eot, False), ("\n", False)]
        body = messages[1:] if messages and messages[0]["role"] == "system" else messages
        offset = len(messages) - len(body)
        for i, message in enumerate(body):
            text = turn_text(message)
            self.check_text(text, sample, f"messages[{i + offset}]")
            assistant = message["role"] == "assistant"
            pieces += [(self.start_role, False), (message["role"], False), (self.end_role, False), (text, assistant),
                       (self.eot, assistant), ("\n", False)]
        return pieces

    def check_text(self, text: str, sample: dict, where: str) -> None:
        found = next((t for t in self.control_tokens if t in text), None)
        if found:
            raise BadInput(f"sample {sample.get('id')!r}: {where} contains the template token {found}, which would be "
                           f"read as a control token; `granite filter` (leakage check) rejects such samples")

    def render(self, samples: list[dict]) -> list[Rendered]:
        return self.encode(samples, [self.pieces(s) for s in samples])

    def encode(self, samples: list[dict], all_pieces: list[list[tuple[str | int, bool]]]) -> list[Rendered]:
        """Ids and mask of each sample from its pieces; every distinct text piece is encoded once, in one batch."""
        texts = sorted({p for pieces in all_pieces for p, _ in pieces if isinstance(p, str) and p})
        encoded = dict(zip(texts, self.tokenizer(texts, add_special_tokens=False)["input_ids"])) if texts else {}
        out = []
        for sample, pieces in zip(samples, all_pieces):
            ids: list[int] = []
            trained: list[bool] = []
            for piece, is_trained in pieces:
                piece_ids = [piece] if isinstance(piece, int) else encoded.get(piece, [])
                ids.extend(piece_ids)
                trained.extend([is_trained] * len(piece_ids))
            rendered = Rendered(np.asarray(ids, dtype=np.int32), np.asarray(trained, dtype=bool))
            self.check_rendering(rendered, sample)
            out.append(rendered)
        return out

    def check_rendering(self, rendered: Rendered, sample: dict) -> None:
        """Every assistant turn must end in a trained end-of-turn token, and nothing else may be one."""
        trained_ends = int((rendered.trained & (rendered.ids == self.eot)).sum())
        turns = sum(m["role"] == "assistant" for m in sample["messages"])
        if trained_ends != turns:
            raise AssertionError(f"sample {sample.get('id')!r}: {trained_ends} trained end-of-turn tokens for {turns} "
                                 f"assistant turns; the renderer and the template disagree")
