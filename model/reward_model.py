"""Reward models: a Granite backbone with a scalar head, stored as transformers stores sequence classifiers.

Transformers has no Granite sequence-classification class, so this module makes one the way transformers makes
its own (`GenericForSequenceClassification` over the Granite backbone). A reward model checkpoint is

    RM/config.json            architectures ["GraniteForSequenceClassification"], num_labels 1, pad_token_id
    RM/model.safetensors      model.* (the backbone of the starting causal LM) and score.weight ([1, hidden])
    RM/reward_model.json      {"offset": ...}: the mean score over the training pairs' responses
    RM/tokenizer files, lineage.json

and loads without granite as

    from transformers import GraniteConfig, GraniteModel, GranitePreTrainedModel
    from transformers.modeling_layers import GenericForSequenceClassification
    class GraniteForSequenceClassification(GenericForSequenceClassification, GranitePreTrainedModel): pass
    GraniteForSequenceClassification.from_pretrained("RM").

A conversation's score is the head applied to the hidden state of its last token: the end-of-text token that
closes the assistant's answer (the chat template's newline after it is dropped), which is the last token that
is not padding, as transformers' classifier reads it. Scores of a Bradley-Terry model have no zero of their own,
so a reward is sigmoid(score - offset): above 0.5 for an answer the model prefers to its average training answer.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from transformers import GranitePreTrainedModel
from transformers.modeling_layers import GenericForSequenceClassification

from granite_cli.errors import BadInput
from granite_cli.training import IGNORE
from granite_cli.training.logprobs import last_hidden_state

CALIBRATION = "reward_model.json"


class GraniteForSequenceClassification(GenericForSequenceClassification, GranitePreTrainedModel):
    """The Granite backbone with a linear head on the last non-padding token (what transformers lacks)."""


def from_causal_lm(directory: Path, dtype=torch.float32) -> GraniteForSequenceClassification:
    """A reward model whose backbone is the causal LM's, with a freshly initialised head."""
    from model.checkpoint import load_model

    lm = load_model(Path(directory), dtype=dtype)
    if lm.config.model_type != "granite":
        raise BadInput(f"a reward model is built on a Granite checkpoint, not {lm.config.model_type!r}", str(directory))
    config = lm.config.__class__.from_dict({**lm.config.to_dict(), "id2label": {0: "reward"}, "label2id": {"reward": 0},
                                            "architectures": [GraniteForSequenceClassification.__name__]})
    model = GraniteForSequenceClassification(config).to(dtype)  # the head as transformers initialises it
    model.model.load_state_dict(lm.model.state_dict())
    return model


def load_reward_model(directory: Path, dtype=torch.float32) -> tuple[GraniteForSequenceClassification, float]:
    """(model in eval mode, offset) of a reward model checkpoint."""
    from model.checkpoint import check_weights

    directory = Path(directory)
    if not (directory / CALIBRATION).exists():
        raise BadInput(f"not a reward model (no {CALIBRATION}): train one with `granite rl reward-model`", str(directory))
    check_weights(directory)
    model = GraniteForSequenceClassification.from_pretrained(str(directory), dtype=dtype, local_files_only=True)
    return model.eval(), float(json.loads((directory / CALIBRATION).read_text())["offset"])


def calibration_text(offset: float) -> str:
    return json.dumps({"offset": offset, "reward": "sigmoid(score - offset)"}, indent=2) + "\n"


class RewardScores(torch.nn.Module):
    """The trainer's scorer for a reward model (the counterpart of TokenLogprobs): forward(input_ids, labels,
    position_ids) -> (score at every labelled position, 0 elsewhere; None). Only labelled positions, the last
    token of each packed conversation, go through the head. `chunk_tokens` and `kernel` are the scorer's arguments
    (the trainer passes them to every scorer); the score head is one output wide, so there is nothing to chunk or fuse."""

    def __init__(self, lm, chunk_tokens: int | None = None, kernel: str = "chunked"):
        super().__init__()
        self.lm = lm

    @property
    def config(self):
        return self.lm.config

    def forward(self, input_ids, labels, position_ids=None, entropy: bool = False):
        hidden = last_hidden_state(self.lm, input_ids, position_ids)
        picked = (labels != IGNORE).nonzero(as_tuple=True)
        scores = torch.zeros(labels.shape, dtype=hidden.dtype, device=hidden.device)
        scores = scores.index_put(picked, self.lm.score(hidden[picked]).squeeze(-1))
        return scores, None


def end_of_answer(ids: list[int], eot: int) -> list[int]:
    """A rendered conversation cut after its last end-of-text token: the token whose hidden state is scored."""
    last = max((i for i, token in enumerate(ids) if token == eot), default=None)
    if last is None:
        raise ValueError("the rendered conversation has no end-of-text token")
    return ids[:last + 1]


class RewardScorer:
    """Scores (prompt messages, answer text) pairs with a reward model, many at once: rl's reward for chat prompts."""

    def __init__(self, directory: Path, device, batch_tokens: int = 16384):
        from granite_cli.data.tokenizer_io import load_tokenizer
        from model.chat_format import ChatRenderer

        self.model, self.offset = load_reward_model(directory)
        self.model.to(device)
        self.scorer = RewardScores(self.model)
        self.device, self.batch_tokens = device, batch_tokens
        self.renderer = ChatRenderer(load_tokenizer(str(directory)))
        self.directory = Path(directory)

    def rewards(self, conversations: list[list[dict]], answers: list[str]) -> list[float]:
        """sigmoid(score - offset) of each answer to its conversation."""
        return [1 / (1 + math.exp(-(s - self.offset))) for s in self.scores(conversations, answers)]

    @torch.no_grad()
    def scores(self, conversations: list[list[dict]], answers: list[str]) -> list[float]:
        samples = [{"messages": messages + [{"role": "assistant", "content": answer}]}
                   for messages, answer in zip(conversations, answers)]
        rows = [end_of_answer(r.ids.tolist(), self.renderer.eot) for r in self.renderer.render(samples)]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        out = [0.0] * len(rows)
        start = 0
        while start < len(order):  # length-sorted batches of about batch_tokens tokens (right-padded)
            end = start + 1
            while end < len(order) and (end - start + 1) * len(rows[order[end]]) <= self.batch_tokens:
                end += 1
            chunk = order[start:end]
            width = len(rows[chunk[-1]])
            ids = torch.full((len(chunk), width), self.model.config.pad_token_id, dtype=torch.long)
            labels = torch.full((len(chunk), width), IGNORE, dtype=torch.long)
            for r, i in enumerate(chunk):
                ids[r, :len(rows[i])] = torch.tensor(rows[i])
                labels[r, len(rows[i]) - 1] = 0
            scored, _ = self.scorer(ids.to(self.device), labels.to(self.device))
            for r, i in enumerate(chunk):
                out[i] = float(scored[r, len(rows[i]) - 1])
            start = end
        return out
