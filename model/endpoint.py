"""The generation engine's OpenAI-compatible backend: any server with /completions and /chat/completions
(vLLM, TGI, llama.cpp server, Ollama), for models too large to load here and for LLM judges.

Requests go out from a thread pool with a timeout and retries with exponential backoff on network
errors, 429 and 5xx. A request with messages goes to /chat/completions (the server applies its own
chat template; tool calls come back as `<tool_call>` blocks, Granite's format), a rendered prompt to
/completions. A failed request yields a Completion with `finish_reason="error"` in its slot, so one
bad request never loses the answers of the others. The protocol returns no token ids.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

from granite_cli.errors import BadInput, GraniteError
from model.generation import Completion, Request, truncate_at_stop


def post_json(url: str, body: dict, headers: dict, timeout: float, retries: int, backoff: float = 1.0) -> dict:
    """POST JSON and parse the JSON answer ({} for an empty one); network errors, timeouts, 429, 5xx and unparsable bodies are retried."""
    data = json.dumps(body).encode()
    delay = backoff
    for attempt in range(retries + 1):
        request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **headers})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
                return json.loads(raw) if raw.strip() else {}  # control routes (vLLM's weight updates) may answer nothing
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


class EndpointEngine:
    """`EndpointEngine("http://127.0.0.1:8000/v1", "my-model")`: the same `generate` as the local engine."""

    def __init__(self, url: str, model: str, concurrency: int = 8, timeout: float = 120.0, retries: int = 3,
                 api_key: Optional[str] = None, backoff: float = 1.0):
        if not url.startswith(("http://", "https://")):
            raise BadInput(f"an endpoint is an http(s) URL such as http://127.0.0.1:8000/v1, not {url!r}")
        if concurrency < 1:
            raise BadInput("concurrency must be at least 1")
        self.url, self.model = url.rstrip("/"), model
        self.concurrency, self.timeout, self.retries, self.backoff = concurrency, timeout, retries, backoff
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.name = f"{self.url}#{model}"
        # the identity names the model, not where it is served: the same model behind another URL answers the same
        self.identity = f"endpoint:{model}"

    def prompt_text(self, request: Request) -> str:
        """What is sent, for the record: the prompt, or the messages as JSON (the server renders them)."""
        if request.prompt is not None:
            return request.prompt
        return json.dumps({"messages": request.messages, "tools": request.tools, "documents": request.documents})

    def generate(self, requests: list[Request]) -> list[list[Completion]]:
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(self._one, requests))

    def loglikelihood(self, pairs):
        raise BadInput("log-likelihood tasks (mmlu, heldout_bpb) need a local model: endpoints do not return prompt log-probabilities")

    def _one(self, request: Request) -> list[Completion]:
        s = request.sampling
        body = {"model": self.model, "max_tokens": s.max_new_tokens, "temperature": s.temperature, "top_p": s.top_p,
                "seed": s.seed, "n": s.n, **({"stop": list(s.stop)} if s.stop else {})}
        chat = request.messages is not None
        if chat:
            body["messages"] = request.messages
            if request.tools:
                body["tools"] = [{"type": "function", "function": tool} for tool in request.tools]
            if s.logprobs or s.top_logprobs:
                body.update(logprobs=True, top_logprobs=s.top_logprobs)
        else:
            body["prompt"] = request.prompt
            if s.logprobs or s.top_logprobs:
                body["logprobs"] = s.top_logprobs  # the completions API: the count of alternatives (0: the chosen token's)
        try:
            answer = post_json(self.url + ("/chat/completions" if chat else "/completions"), body, self.headers,
                               self.timeout, self.retries, self.backoff)
        except GraniteError as err:
            return [Completion("", finish_reason="error", error=str(err))] * s.n
        try:
            return [_chat_completion(c, s.stop) if chat else _text_completion(c, s.stop) for c in answer["choices"]]
        except (KeyError, IndexError, TypeError):
            problem = f"{self.url}: the answer has no choices with text ({str(answer)[:200]})"
            return [Completion("", finish_reason="error", error=problem)] * s.n


def _chat_completion(choice: dict, stop) -> Completion:
    message = choice["message"]
    calls = message.get("tool_calls") or []
    text = (message.get("content") or "") + "".join(
        f"<tool_call>{json.dumps({'name': c['function']['name'], 'arguments': json.loads(c['function']['arguments'])})}</tool_call>"
        for c in calls)
    content = (choice.get("logprobs") or {}).get("content") or []
    tokens = [item["token"] for item in content]
    top = [{alt["token"]: alt["logprob"] for alt in item.get("top_logprobs") or []} or {item["token"]: item["logprob"]}
           for item in content] or None
    return Completion(truncate_at_stop(text, stop)[0], [], tokens, [item["logprob"] for item in content], top,
                      choice.get("finish_reason") or "stop")


def _text_completion(choice: dict, stop) -> Completion:
    logprobs = choice.get("logprobs") or {}
    top = logprobs.get("top_logprobs")
    return Completion(truncate_at_stop(choice["text"], stop)[0], [], logprobs.get("tokens") or [],
                      logprobs.get("token_logprobs") or [], top, choice.get("finish_reason") or "stop")
