"""One generation engine for every stage that asks a model for text: eval, chat, the filter's judge, rl.

    engine = open_engine("runs/tiny/checkpoints/sft")            # or open_engine(URL, model="name")
    [completions] = engine.generate([Request(messages=[...], sampling=Sampling(temperature=1.0, n=16))])
    completions[0].text, .token_ids, .logprobs, .top_logprobs, .finish_reason

Each request carries its own sampling settings (temperature, top-p, stop strings, seed, max tokens,
number of samples, top-k alternatives to report). The local engine batches requests that share
every setting that changes how a batch is decoded (greedy or sampled, temperature, top-p, stop
strings, seed) and sorts prompts by length so padding stays small; a request never takes another's
settings. `logprobs` (when asked) are the model's own log-probabilities of each generated token
(temperature 1, no top-p), which is what a policy-gradient ratio needs; `top_logprobs` lists the most
likely alternatives at each position when asked. Neither keeps a whole vocabulary's log-probabilities
beyond the step they are read from. Samples of a sampled request depend on its seed and on
the batch it was decoded in (one torch generator per batch), not on requests with other settings.

The OpenAI-compatible endpoint (vLLM, TGI, llama.cpp, Ollama) lives in model/endpoint.py behind
the same `generate`; it reports no token ids (the OpenAI protocol has none).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from granite_cli.errors import BadInput


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int = 0
    n: int = 1  # samples of this request
    logprobs: bool = False  # report each generated token's log-probability (what a policy-gradient ratio needs)
    top_logprobs: int = 0  # alternatives reported per generated token

    def __post_init__(self):
        object.__setattr__(self, "stop", tuple(self.stop))  # a list given by a caller: requests group by it
        if self.max_new_tokens < 1:
            raise BadInput(f"max new tokens must be at least 1 (got {self.max_new_tokens})")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.n < 1:
            raise BadInput(f"bad sampling settings: temperature {self.temperature}, top-p {self.top_p}, n {self.n}")

    def batch_key(self) -> tuple:
        """What requests must share to be decoded in one batch."""
        return (self.temperature, self.top_p, self.stop, self.seed if self.temperature > 0 else 0)

    def decoding(self, seed_offset: int = 0) -> dict:
        """transformers' generate arguments for this decoding: greedy, or sampling at a temperature and top-p drawn
        by `Draw` (seeded with the request's seed plus `seed_offset`, the batch's place among its key's rows)."""
        if self.temperature > 0:
            return {"do_sample": False, "logits_processor": [Draw(self.temperature, self.top_p, self.seed + seed_offset)]}
        return {"do_sample": False}


class Draw:
    """A transformers logits processor that samples the next token itself and leaves only that token a finite
    score, so generate's greedy step takes it.

    Why not generate's own sampling: it calls torch.multinomial, which on CPU draws one exponential variate per
    vocabulary entry, 39 ms a step for rl's 128 rows x 8,192 tokens (60% of a rollout on 2 cores). Inverse-CDF
    sampling draws one uniform number per row (under 1 ms). The distribution is the same: softmax(logits /
    temperature), cut to the nucleus (the most likely tokens whose mass first reaches top-p, as transformers' top-p
    keeps), renormalised; no top-k cut. The generator is the processor's own, so sampling never reseeds torch's
    global one."""

    def __init__(self, temperature: float, top_p: float, seed: int):
        self.temperature, self.top_p, self.seed = temperature, top_p, seed
        self.generator = None

    def __call__(self, input_ids, scores):
        import torch

        if self.generator is None:  # made on the first step, on the device the scores are on
            self.generator = torch.Generator(device=scores.device).manual_seed(self.seed)
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        order = None
        if self.top_p < 1:
            probs, order = probs.sort(dim=-1, descending=True)
            probs = probs.masked_fill(probs.cumsum(-1) - probs >= self.top_p, 0.0)  # the mass before it already reaches top-p
        cumulative = probs.cumsum(-1)
        total = cumulative[:, -1:]
        point = torch.rand(total.shape, generator=self.generator, device=scores.device) * total
        point = torch.minimum(point, torch.nextafter(total, torch.zeros_like(total)))  # below the total: a token of mass > 0
        chosen = torch.searchsorted(cumulative, point, right=True)
        if order is not None:
            chosen = order.gather(1, chosen)
        return torch.full_like(scores, float("-inf")).scatter_(1, chosen, 0.0)


@dataclass
class Request:
    """A prompt as rendered text, or as chat messages the engine renders (local: the chat template; endpoint: the server)."""

    prompt: Optional[str] = None
    messages: Optional[list[dict]] = None
    tools: Optional[list[dict]] = None
    documents: Optional[list[dict]] = None
    sampling: Sampling = field(default_factory=Sampling)

    def __post_init__(self):
        if (self.prompt is None) == (self.messages is None):
            raise BadInput("a generation request has either a prompt or messages")


@dataclass
class Completion:
    text: str
    token_ids: list[int] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)  # each generated token's text
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: Optional[list[dict[str, float]]] = None
    finish_reason: str = "stop"  # stop (end of text or a stop string), length, or error
    error: Optional[str] = None


def truncate_at_stop(text: str, stops) -> tuple[str, bool]:
    """The text before the first stop string, and whether one was found."""
    cut = min((text.find(s) for s in stops if s and s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


JUDGE_API_KEY = "GRANITE_JUDGE_API_KEY"  # the environment variable an endpoint judge's key is read from


def open_judge(spec: str, model: Optional[str] = None, **options):
    """An LLM judge (filter's, eval's judged tasks): an endpoint needs --judge-model, and takes its key from the
    environment, never from a flag that would land in shell history and lineage."""
    import os

    if spec.startswith(("http://", "https://")) and not model:
        raise BadInput("an endpoint judge needs --judge-model NAME (the model the server serves)")
    return open_engine(spec, model, api_key=os.environ.get(JUDGE_API_KEY), **options)


def open_engine(spec: str, model: Optional[str] = None, *, device: str = "auto", batch_size: int = 16,
                concurrency: int = 8, timeout: float = 120.0, retries: int = 3, api_key: Optional[str] = None):
    """A URL opens an OpenAI-compatible endpoint (`model` names the served model), a directory a local checkpoint."""
    if spec.startswith(("http://", "https://")):
        from model.endpoint import EndpointEngine

        if not model:
            raise BadInput("an endpoint needs the name of the model it serves (--model / --judge-model)")
        return EndpointEngine(spec, model, concurrency=concurrency, timeout=timeout, retries=retries, api_key=api_key)
    if not Path(spec).is_dir():
        raise BadInput(f"expected an http(s) URL or a model directory, not {spec!r}")
    return LocalEngine(spec, device=device, batch_size=batch_size)


class LocalEngine:
    """A local checkpoint directory (ours or any transformers causal LM): batched, KV-cached generation."""

    def __init__(self, path: str, device: str = "auto", batch_size: int = 16, dtype: str = "auto"):
        from model.checkpoint import load_for_generation

        self.path = Path(path)
        self.name = str(self.path.resolve())
        self.model, self.tokenizer, self.device = load_for_generation(self.path, device, dtype)
        self.batch_size = batch_size
        self.max_length = getattr(self.model.config, "max_position_embeddings", 4096)
        # names the weights, not where they are: a judge cache keyed by it survives a moved run directory
        self.identity = f"local:{self.path.resolve().name}:{_weights_digest(self.path)}"

    @classmethod
    def of_model(cls, model, tokenizer, device, batch_size: int, name: str) -> "LocalEngine":
        """An engine over a model in memory (rl samples from the policy it is training, whose weights change every step).

        The caller keeps the model in eval mode while generating; the tokenizer is copied to pad on the left."""
        import copy

        engine = cls.__new__(cls)
        engine.path, engine.name, engine.identity = None, name, f"in-memory:{name}"
        engine.model, engine.device, engine.batch_size = model, device, batch_size
        engine.tokenizer = copy.copy(tokenizer)
        engine.tokenizer.padding_side = "left"
        if engine.tokenizer.pad_token_id is None:
            engine.tokenizer.pad_token = engine.tokenizer.eos_token
        engine.max_length = getattr(model.config, "max_position_embeddings", 4096)
        return engine

    def prompt_text(self, request: Request) -> str:
        if request.prompt is not None:
            return request.prompt
        if not self.tokenizer.chat_template:
            raise BadInput("the model's tokenizer has no chat template: give plain-text prompts, or use an SFT checkpoint",
                           self.name)
        return self.tokenizer.apply_chat_template(request.messages, tools=request.tools, documents=request.documents,
                                                  tokenize=False, add_generation_prompt=True)

    def generate(self, requests: list[Request]) -> list[list[Completion]]:
        """n completions for each request, in request order."""
        prompts = [self.prompt_text(r) for r in requests]
        results: list[list[Completion]] = [[] for _ in requests]
        groups: dict[tuple, list[tuple[int, int]]] = {}
        for index, request in enumerate(requests):
            for sample in range(request.sampling.n):
                groups.setdefault(request.sampling.batch_key(), []).append((index, sample))
        for key, rows in groups.items():
            rows.sort(key=lambda row: len(prompts[row[0]]))
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start:start + self.batch_size]
                completions = self._decode([prompts[i] for i, _ in chunk], [requests[i].sampling for i, _ in chunk], start)
                for (index, sample), completion in zip(chunk, completions):
                    results[index].append((sample, completion))
        return [[completion for _, completion in sorted(pairs, key=lambda p: p[0])] for pairs in results]

    def _decode(self, prompts: list[str], settings: list[Sampling], offset: int) -> list[Completion]:
        import torch

        first = settings[0]
        scored = any(s.logprobs or s.top_logprobs for s in settings)
        with torch.no_grad():
            encoded, cache = self._prefill(prompts)
            out = self.model.generate(
                **encoded, **cache, max_new_tokens=max(s.max_new_tokens for s in settings),
                stop_strings=list(first.stop) or None, tokenizer=self.tokenizer, pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id, return_dict_in_generate=True, output_logits=scored,
                **first.decoding(offset))
        new = out.sequences[:, encoded["input_ids"].shape[1]:]
        chosen, top = _token_scores(out.logits, new, max(s.top_logprobs for s in settings)) if scored else (None, None)
        return [self._completion(new[row], chosen, top, row, settings[row]) for row in range(len(prompts))]

    def _prefill(self, prompts: list[str]) -> tuple[dict, dict]:
        """The batch's inputs, and a KV cache that already holds each distinct prompt once when prompts repeat (the
        n samples of a request, rl's group of G): a repeated prompt is prefilled once and its cache copied to its
        rows, so prefill costs the distinct prompts, not every sample. `generate` then feeds only the last prompt
        token. Returns (inputs, {"cache": cache} or {})."""
        import torch
        from transformers import DynamicCache

        distinct = {prompt: row for row, prompt in enumerate(dict.fromkeys(prompts))}
        encoded = self.tokenizer(list(distinct), return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        if len(distinct) == len(prompts):
            return dict(encoded), {}
        rows = torch.tensor([distinct[prompt] for prompt in prompts], device=self.device)
        batch = {name: value[rows] for name, value in encoded.items()}
        if encoded["input_ids"].shape[1] < 2:  # a one-token prompt leaves nothing to prefill before generate's step
            return batch, {}
        mask = encoded["attention_mask"]
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # left padding: as generate numbers positions
        cache = DynamicCache(config=self.model.config)
        self.model(input_ids=encoded["input_ids"][:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1],
                   cache=cache, use_cache=True)
        cache.batch_select_indices(rows)
        return batch, {"cache": cache}

    def _completion(self, ids, chosen, top, row: int, sampling: Sampling) -> Completion:
        """One row of a decoded batch; `chosen` [B, T] and `top` ([B, T, k] values, indices) are the batch's scores."""
        ids = [int(t) for t in ids[:sampling.max_new_tokens]]
        ended = self.tokenizer.eos_token_id in ids
        if ended:
            ids = ids[:ids.index(self.tokenizer.eos_token_id)]
        text, stopped = truncate_at_stop(self.tokenizer.decode(ids, skip_special_tokens=True), sampling.stop)
        if stopped:  # keep the fewest tokens whose text covers the text before the stop string
            ids = ids[:next(k for k in range(len(ids) + 1)
                            if len(self.tokenizer.decode(ids[:k], skip_special_tokens=True)) >= len(text))]
        logprobs = chosen[row, :len(ids)].tolist() if sampling.logprobs else []
        alternatives = None
        if sampling.top_logprobs:
            values, indices = top[0][row, :len(ids), :sampling.top_logprobs], top[1][row, :len(ids), :sampling.top_logprobs]
            alternatives = [{self.tokenizer.decode([int(j)]): float(v) for v, j in zip(vs, js)} for vs, js in zip(values, indices)]
        finish = "length" if len(ids) >= sampling.max_new_tokens and not (ended or stopped) else "stop"
        return Completion(text, ids, [self.tokenizer.decode([t]) for t in ids], logprobs, alternatives, finish)

    def stream(self, request: Request):
        """One sample of one request, yielded as text pieces as soon as they are decoded (for `granite chat`).

        Generation runs in a worker thread that feeds transformers' streamer; an error there ends the stream
        and is raised here, so a failed generation never leaves the reader waiting."""
        import threading

        import torch
        from transformers import TextIteratorStreamer

        s = request.sampling
        inputs = self.tokenizer(self.prompt_text(request), return_tensors="pt", add_special_tokens=False).to(self.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        failure: list[BaseException] = []

        def generate():
            try:
                with torch.no_grad():
                    self.model.generate(**inputs, streamer=streamer, max_new_tokens=s.max_new_tokens,
                                        stop_strings=list(s.stop) or None, tokenizer=self.tokenizer,
                                        eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id,
                                        **s.decoding())
            except BaseException as err:  # handed to the reader below
                failure.append(err)
                streamer.end()

        worker = threading.Thread(target=generate, daemon=True)
        worker.start()
        yield from streamer
        worker.join()
        if failure:
            raise failure[0]

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
                results[index] = (float(scores.gather(1, targets[:, None]).sum()), bool((scores.argmax(-1) == targets).all()))
        return results


def _token_scores(step_logits, new_ids, k: int):
    """Each generated token's log-probability [B, T] and, for k > 0, the k most likely alternatives at each position
    ([B, T, k] values and indices), reading one step's vocabulary at a time."""
    import torch

    chosen, values, indices = [], [], []
    for t, logits in enumerate(step_logits):
        logprobs = torch.log_softmax(logits.float(), -1)
        chosen.append(logprobs.gather(1, new_ids[:, t:t + 1]).squeeze(1))
        if k:
            top = logprobs.topk(k, dim=-1)
            values.append(top.values)
            indices.append(top.indices)
    top = (torch.stack(values, 1), torch.stack(indices, 1)) if k else None
    return torch.stack(chosen, 1), top


def _weights_digest(path: Path) -> str:
    """A cheap fingerprint of a checkpoint's weights (names, sizes and modification times)."""
    parts = [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(path.glob("*.safetensors"))]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]
