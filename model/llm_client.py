"""Chat models asked for answers by other stages (the filter's judge, eval's graders).

Two backends answer the same call, `chat_many(conversations)`:
- `ChatEndpoint`: any OpenAI-compatible `/chat/completions` server (vLLM, TGI, llama.cpp server,
  Ollama), called from a thread pool with a timeout, retries with exponential backoff on network
  errors, 429 and 5xx, and top-k token log-probabilities when the server gives them.
- `LocalChat`: a local transformers checkpoint, batched greedy generation on CPU or GPU, with the
  same top-k log-probabilities read from the generation scores.

A failed call yields a `ChatFailure` in its slot rather than an exception, so one bad request never
loses the answers of the others in its batch.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from granite_cli.errors import BadInput, GraniteError

TOP_LOGPROBS = 5


@dataclass
class TokenChoice:
    """One generated token and the log-probabilities of the most likely alternatives at its position."""

    token: str
    alternatives: dict[str, float]


@dataclass
class ChatReply:
    text: str
    tokens: list[TokenChoice] | None = None  # None when the backend gives no log-probabilities


@dataclass
class ChatFailure:
    error: str


def post_json(url: str, body: dict, headers: dict, timeout: float, retries: int, backoff: float = 1.0) -> dict:
    """POST JSON and parse the JSON answer; network errors, timeouts, 429, 5xx and unparsable bodies are retried."""
    data = json.dumps(body).encode()
    delay = backoff
    for attempt in range(retries + 1):
        request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **headers})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            if err.code < 500 and err.code != 429:
                detail = err.read()[:300].decode(errors="replace")
                raise GraniteError(f"{url} answered HTTP {err.code}: {detail}") from err
            problem = f"HTTP {err.code}"
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:  # URLError, timeouts, resets
            problem = f"{type(err).__name__}: {err}"
        if attempt == retries:
            raise GraniteError(f"{url} failed after {retries + 1} attempt(s): {problem}")
        time.sleep(delay)
        delay *= 2
    raise AssertionError("unreachable")


class ChatEndpoint:
    """An OpenAI-compatible chat server: `ChatEndpoint("http://127.0.0.1:8000/v1", "my-model")`."""

    def __init__(self, url: str, model: str, concurrency: int = 8, timeout: float = 60.0, retries: int = 3,
                 api_key: str | None = None, backoff: float = 1.0):
        if not url.startswith(("http://", "https://")):
            raise BadInput(f"an endpoint is an http(s) URL such as http://127.0.0.1:8000/v1, not {url!r}")
        if concurrency < 1:
            raise BadInput("concurrency must be at least 1")
        self.url, self.model = url.rstrip("/"), model
        self.concurrency, self.timeout, self.retries, self.backoff = concurrency, timeout, retries, backoff
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # the identity names the model, not where it is served: the same model behind another URL answers the same
        self.identity = f"endpoint:{model}"

    def chat(self, messages: list[dict], max_tokens: int, temperature: float = 0.0, logprobs: bool = False) -> ChatReply:
        body = {"model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature}
        if logprobs:
            body.update(logprobs=True, top_logprobs=TOP_LOGPROBS)
        answer = post_json(self.url + "/chat/completions", body, self.headers, self.timeout, self.retries, self.backoff)
        try:
            choice = answer["choices"][0]
            text = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as err:
            raise GraniteError(f"{self.url}: the answer has no choices[0].message.content ({str(answer)[:200]})") from err
        return ChatReply(text, _endpoint_tokens(choice.get("logprobs")))

    def chat_many(self, conversations: list[list[dict]], max_tokens: int, temperature: float = 0.0,
                  logprobs: bool = False) -> list[ChatReply | ChatFailure]:
        def one(messages):
            try:
                return self.chat(messages, max_tokens, temperature, logprobs)
            except GraniteError as err:
                return ChatFailure(str(err))

        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(one, conversations))


def _endpoint_tokens(logprobs: dict | None) -> list[TokenChoice] | None:
    content = (logprobs or {}).get("content")
    if not content:
        return None
    return [TokenChoice(item["token"], {alt["token"]: alt["logprob"] for alt in item.get("top_logprobs") or []}
                        or {item["token"]: item["logprob"]}) for item in content]


class LocalChat:
    """A local checkpoint directory (ours or any transformers causal LM with a chat template)."""

    def __init__(self, path: str, device: str = "auto", batch_size: int = 8):
        from model.checkpoint import load_for_generation

        self.model, self.tokenizer, self.device = load_for_generation(Path(path), device)
        self.batch_size = batch_size
        self.identity = f"local:{Path(path).resolve().name}:{_weights_digest(Path(path))}"

    def chat_many(self, conversations: list[list[dict]], max_tokens: int, temperature: float = 0.0,
                  logprobs: bool = False) -> list[ChatReply | ChatFailure]:
        if temperature > 0:
            raise BadInput("the local judge decodes greedily (temperature 0)")
        prompts = [self.tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in conversations]
        replies: list[ChatReply | ChatFailure] = []
        for start in range(0, len(prompts), self.batch_size):
            replies.extend(self._generate(prompts[start:start + self.batch_size], max_tokens, logprobs))
        return replies

    def _generate(self, prompts: list[str], max_tokens: int, logprobs: bool) -> list[ChatReply]:
        import torch

        encoded = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        with torch.no_grad():
            out = self.model.generate(**encoded, max_new_tokens=max_tokens, do_sample=False, output_scores=logprobs,
                                      return_dict_in_generate=True, pad_token_id=self.tokenizer.pad_token_id,
                                      eos_token_id=self.tokenizer.eos_token_id)
        new = out.sequences[:, encoded["input_ids"].shape[1]:]
        replies = []
        for row in range(len(prompts)):
            ids = [int(t) for t in new[row] if int(t) not in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id)]
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            tokens = None
            if logprobs:
                tokens = []
                for step, token_id in enumerate(ids):
                    top = torch.log_softmax(out.scores[step][row].float(), -1).topk(TOP_LOGPROBS)
                    alternatives = {self.tokenizer.decode([int(i)]): float(v) for v, i in zip(top.values, top.indices)}
                    tokens.append(TokenChoice(self.tokenizer.decode([token_id]), alternatives))
            replies.append(ChatReply(text, tokens))
        return replies


def _weights_digest(path: Path) -> str:
    """A cheap fingerprint of a checkpoint's weights (names, sizes and modification times)."""
    parts = [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(path.glob("*.safetensors"))]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]


def open_chat_model(spec: str, model: str | None = None, concurrency: int = 8, timeout: float = 60.0,
                    retries: int = 3, device: str = "auto", api_key_env: str = "GRANITE_JUDGE_API_KEY"):
    """A URL opens an endpoint (`model` names the served model), anything else a local checkpoint directory."""
    if spec.startswith(("http://", "https://")):
        if not model:
            raise BadInput("an endpoint judge needs --judge-model NAME (the model the server serves)")
        return ChatEndpoint(spec, model, concurrency, timeout, retries, os.environ.get(api_key_env))
    if not Path(spec).is_dir():
        raise BadInput(f"--judge is 'none', an http(s) URL or a model directory; {spec!r} is none of these")
    return LocalChat(spec, device)
