"""What eval asks of a model: greedy (or sampled) generation and log-likelihoods of continuations.

`LocalModel` runs any local Hugging Face causal LM directory (ours included) on CPU or GPU with
batched, KV-cached generation (left padding, `stop_strings`); `Endpoint` talks to an
OpenAI-compatible server (vLLM, TGI, llama.cpp, Ollama) for models too large to load here.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from granite_cli.errors import BadInput
from model.llm_client import post_json


@dataclass
class GenerationRequest:
    prompt: str  # fully rendered text (the chat template already applied when it is on)
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    temperature: float = 0.0
    seed: int = 0


class LocalModel:
    """A local checkpoint directory; prompts are batched by length so padding stays small."""

    def __init__(self, path: str, device: str = "auto", batch_size: int = 16, dtype: str = "auto"):
        from model.checkpoint import load_for_generation

        self.name = str(Path(path).resolve())
        self.model, self.tokenizer, self.device = load_for_generation(Path(path), device, dtype)
        self.batch_size = batch_size
        self.max_length = getattr(self.model.config, "max_position_embeddings", 4096)

    def chat_prompt(self, messages: list[dict], tools=None, documents=None) -> str:
        return self.tokenizer.apply_chat_template(messages, tools=tools, documents=documents, tokenize=False,
                                                  add_generation_prompt=True)

    def generate(self, requests: list[GenerationRequest]) -> list[str]:
        import torch

        outputs: list[str] = [""] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: len(requests[i].prompt))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            first = requests[chunk[0]]
            encoded = self.tokenizer([requests[i].prompt for i in chunk], return_tensors="pt", padding=True,
                                     add_special_tokens=False).to(self.device)
            sampling = {"do_sample": True, "temperature": first.temperature} if first.temperature > 0 else {"do_sample": False}
            if first.temperature > 0:
                torch.manual_seed(first.seed + start)
            with torch.no_grad():
                generated = self.model.generate(
                    **encoded, max_new_tokens=max(requests[i].max_new_tokens for i in chunk),
                    stop_strings=list(first.stop) or None, tokenizer=self.tokenizer,
                    pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id, **sampling)
            new_tokens = generated[:, encoded["input_ids"].shape[1]:]
            for row, index in enumerate(chunk):
                text = self.tokenizer.decode(new_tokens[row], skip_special_tokens=True)
                outputs[index] = truncate_at_stop(text, requests[index].stop)
        return outputs

    def loglikelihood(self, pairs: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        """Sum of log-probabilities of each continuation given its context, and whether it is the greedy one."""
        import torch
        import torch.nn.functional as F

        results: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
        encoded = []
        for context, continuation in pairs:
            ctx = self.tokenizer(context, add_special_tokens=False)["input_ids"]
            cont = self.tokenizer(continuation, add_special_tokens=False)["input_ids"]
            encoded.append((ctx, cont))
        order = sorted(range(len(pairs)), key=lambda i: -len(encoded[i][0]) - len(encoded[i][1]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            rows = [(encoded[i][0] + encoded[i][1])[-self.max_length:] for i in chunk]
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, row in enumerate(rows):
                ids[r, :len(row)] = torch.tensor(row)
                mask[r, :len(row)] = 1
            with torch.no_grad():
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits.float()
            logprobs = F.log_softmax(logits, dim=-1).cpu()
            for r, index in enumerate(chunk):
                n_cont, length = len(encoded[index][1]), len(rows[r])
                positions = torch.arange(length - n_cont - 1, length - 1)
                targets = ids[r, length - n_cont:length]
                scores = logprobs[r, positions]
                total = float(scores.gather(1, targets[:, None]).sum())
                greedy = bool((scores.argmax(-1) == targets).all())
                results[index] = (total, greedy)
        return results


def truncate_at_stop(text: str, stops) -> str:
    cut = min((text.find(s) for s in stops if s and s in text), default=-1)
    return text[:cut] if cut >= 0 else text


class Endpoint:
    """An OpenAI-compatible completions server: `--endpoint http://host:8000/v1 --model NAME`."""

    def __init__(self, url: str, model: str, concurrency: int = 8, timeout: float = 120.0, retries: int = 4,
                 api_key: str | None = None):
        self.url, self.model, self.concurrency, self.timeout, self.retries = url.rstrip("/"), model, concurrency, timeout, retries
        self.name = f"{self.url}#{model}"
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def chat_prompt(self, messages, tools=None, documents=None):
        # the server applies its own chat template: keep the messages, rendered as JSON for the request
        return json.dumps({"messages": messages, "tools": tools, "documents": documents})

    def _post(self, path: str, body: dict) -> dict:
        return post_json(self.url + path, body, self.headers, self.timeout, self.retries)

    def _one(self, request: GenerationRequest) -> str:
        common = {"model": self.model, "max_tokens": request.max_new_tokens, "temperature": request.temperature,
                  "seed": request.seed, **({"stop": list(request.stop)} if request.stop else {})}
        try:
            chat = json.loads(request.prompt)
            is_chat = isinstance(chat, dict) and "messages" in chat
        except json.JSONDecodeError:
            is_chat = False
        if is_chat:
            body = {**common, "messages": chat["messages"], **({"tools": _openai_tools(chat["tools"])} if chat.get("tools") else {})}
            message = self._post("/chat/completions", body)["choices"][0]["message"]
            calls = message.get("tool_calls") or []
            text = message.get("content") or ""
            return text + "".join(f"<tool_call>{json.dumps({'name': c['function']['name'], 'arguments': json.loads(c['function']['arguments'])})}</tool_call>"
                                  for c in calls)
        return self._post("/completions", {**common, "prompt": request.prompt})["choices"][0]["text"]

    def generate(self, requests: list[GenerationRequest]) -> list[str]:
        with ThreadPoolExecutor(self.concurrency) as pool:
            return [truncate_at_stop(text, r.stop) for text, r in zip(pool.map(self._one, requests), requests)]

    def loglikelihood(self, pairs):
        raise BadInput("log-likelihood tasks (mmlu) need a local model: endpoints do not return prompt log-probabilities")


def _openai_tools(tools: list[dict]) -> list[dict]:
    return [{"type": "function", "function": tool} for tool in tools]
