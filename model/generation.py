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

    def decoding(self) -> dict:
        """transformers' generate arguments for this decoding (`stream` runs generate): greedy, or sampled by `Draw`."""
        if self.temperature > 0:
            return {"do_sample": False, "logits_processor": [Draw(self.temperature, self.top_p, self.seed)]}
        return {"do_sample": False}


class Draw:
    """Samples the next token: `sample` for the engine's own decoding loop; called as a transformers logits
    processor (for `stream`, which runs generate), it leaves only the drawn token a finite score, so generate's
    greedy step takes it.

    Why not torch.multinomial (transformers' sampling): on CPU it draws one exponential variate per vocabulary
    entry, 39 ms a step for rl's 128 rows x 8,192 tokens (60% of a rollout on 2 cores). Inverse-CDF sampling draws
    one uniform number per row (under 1 ms). The distribution is the same: softmax(logits / temperature), cut to
    the nucleus (the most likely tokens whose mass first reaches top-p, as transformers' top-p keeps),
    renormalised; no top-k cut. The generator is the sampler's own, so sampling never reseeds torch's global one."""

    def __init__(self, temperature: float, top_p: float, seed: int):
        self.temperature, self.top_p, self.seed = temperature, top_p, seed
        self.generator = None

    def sample(self, logits):
        """One token id per row of `logits` [B, V]."""
        import torch

        if self.generator is None:  # made on the first step, on the device the logits are on
            self.generator = torch.Generator(device=logits.device).manual_seed(self.seed)
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)
        order = None
        if self.top_p < 1:
            probs, order = probs.sort(dim=-1, descending=True)
            probs = probs.masked_fill(probs.cumsum(-1) - probs >= self.top_p, 0.0)  # the mass before it already reaches top-p
        cumulative = probs.cumsum(-1)
        total = cumulative[:, -1:]
        point = torch.rand(total.shape, generator=self.generator, device=logits.device) * total
        point = torch.minimum(point, torch.nextafter(total, torch.zeros_like(total)))  # below the total: a token of mass > 0
        chosen = torch.searchsorted(cumulative, point, right=True)
        return (order.gather(1, chosen) if order is not None else chosen).squeeze(1)

    def __call__(self, input_ids, scores):
        import torch

        return torch.full_like(scores, float("-inf")).scatter_(1, self.sample(scores)[:, None], 0.0)


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
        self.scorer = None  # made on the first log-likelihood request (_token_scorer)
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
        engine.scorer = None
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
        """One batch, decoded a token a step. A row leaves the batch as soon as it ends (the end-of-text token, a stop
        string in its text, or its own max new tokens), its cache rows with it. Why not transformers' generate: it
        decodes every row until the last one ends, and a tiny model's batch of 64 HumanEval answers, 59 ended within
        60 tokens and 5 repeating themselves to 384, then costs 64 rows for 384 steps instead of 5 for the last 320.
        Log-probabilities are read from each step's logits as they come, never kept for the whole answer."""
        import torch

        first = settings[0]
        draw = Draw(first.temperature, first.top_p, first.seed + offset) if first.temperature > 0 else None
        k = max(s.top_logprobs for s in settings)
        scored = k > 0 or any(s.logprobs for s in settings)
        ids: list[list[int]] = [[] for _ in prompts]
        logprobs: list[list[float]] = [[] for _ in prompts]
        top: list[list[tuple]] = [[] for _ in prompts]
        with torch.no_grad():
            step, mask, cache = self._prefill(prompts)
            rows = list(range(len(prompts)))  # the prompt each row of the shrinking batch belongs to
            while rows:
                logits = self.model(input_ids=step[:, None], attention_mask=mask, position_ids=mask.sum(-1, keepdim=True) - 1,
                                    cache=cache, use_cache=True).logits[:, -1].float()
                step = draw.sample(logits) if draw else logits.argmax(-1)
                if scored:
                    scores = torch.log_softmax(logits, -1)
                    chosen = scores.gather(1, step[:, None]).squeeze(1).tolist()
                    if k:
                        best = scores.topk(k, dim=-1)
                        values, indices = best.values.tolist(), best.indices.tolist()  # one conversion a step, not a row
                going = []
                for b, (row, token) in enumerate(zip(rows, step.tolist())):
                    ids[row].append(token)
                    if scored:
                        logprobs[row].append(chosen[b])
                        if k:
                            top[row].append((values[b], indices[b]))
                    if not self._ended(ids[row], settings[row]):
                        going.append(b)
                if not going:
                    break
                if len(going) < len(rows):
                    kept = torch.tensor(going, device=self.device, dtype=torch.long)
                    cache.batch_select_indices(kept)
                    step, mask, rows = step[kept], mask[kept], [rows[b] for b in going]
                mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
        return [self._completion(ids[row], logprobs[row], top[row], settings[row]) for row in range(len(prompts))]

    def _ended(self, ids: list[int], sampling: Sampling) -> bool:
        """Whether a row is done: the end-of-text token, its max new tokens, or a stop string in its text (looked
        for in the last few tokens' text, then confirmed in the whole answer's, so a step costs no whole decode)."""
        if ids[-1] == self.tokenizer.eos_token_id or len(ids) >= sampling.max_new_tokens:
            return True
        if not sampling.stop:
            return False
        tail = self.tokenizer.decode(ids[-(max(map(len, sampling.stop)) + 8):], skip_special_tokens=True)
        return any(s in tail for s in sampling.stop) and truncate_at_stop(
            self.tokenizer.decode(ids, skip_special_tokens=True), sampling.stop)[1]

    def _prefill(self, prompts: list[str]):
        """(each row's last prompt token [B], the attention mask over the prompt [B, L], a KV cache of the prompts
        but their last token). A repeated prompt (the n samples of a request, rl's group of G) is prefilled once and
        its cache copied to its rows, so prefill costs the distinct prompts, not every sample. Prompts are padded
        on the left, so every row's next token goes in the same column."""
        import torch
        from transformers import DynamicCache

        distinct, rows = self._distinct(prompts)
        encoded = self.tokenizer(distinct, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        tokens, mask = encoded["input_ids"], encoded["attention_mask"]
        cache = DynamicCache(config=self.model.config)
        if tokens.shape[1] > 1:
            positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
            self.model(input_ids=tokens[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1],
                       cache=cache, use_cache=True, logits_to_keep=1)  # the cache is what is wanted, not [B, L, V] logits
        index = torch.tensor(rows, device=self.device)
        if len(distinct) < len(prompts):
            cache.batch_select_indices(index)
        return tokens[index, -1], mask[index], cache

    @staticmethod
    def _distinct(prompts: list[str]) -> tuple[list[str], list[int]]:
        """The distinct prompts, and for each prompt the index of its distinct copy."""
        first = {prompt: i for i, prompt in enumerate(dict.fromkeys(prompts))}
        return list(first), [first[prompt] for prompt in prompts]

    def _completion(self, ids: list[int], logprobs: list[float], top: list[tuple], sampling: Sampling) -> Completion:
        """One row's answer: `ids` as decoded (the end-of-text token last when it ended the answer), each token's
        log-probability and (values, indices) of its most likely alternatives when they were asked for."""
        ended = self.tokenizer.eos_token_id in ids
        if ended:
            ids = ids[:ids.index(self.tokenizer.eos_token_id)]
        text, stopped = truncate_at_stop(self.tokenizer.decode(ids, skip_special_tokens=True), sampling.stop)
        if stopped:  # keep the fewest tokens whose text covers the text before the stop string
            ids = ids[:next(k for k in range(len(ids) + 1)
                            if len(self.tokenizer.decode(ids[:k], skip_special_tokens=True)) >= len(text))]
        alternatives = None
        if sampling.top_logprobs:
            alternatives = [{self.tokenizer.decode([j]): v for v, j in zip(values[:sampling.top_logprobs], indices[:sampling.top_logprobs])}
                            for values, indices in top[:len(ids)]]
        finish = "length" if len(ids) >= sampling.max_new_tokens and not (ended or stopped) else "stop"
        return Completion(text, ids, [self.tokenizer.decode([t]) for t in ids],
                          logprobs[:len(ids)] if sampling.logprobs else [], alternatives, finish)

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
        """Sum of log-probabilities of each continuation given its context, and whether it is the greedy one.

        Only the continuations' positions are projected onto the vocabulary, a chunk of them at a time
        (granite_cli/training/logprobs.py): a batch never holds its [B, L, V] logits, which for Granite's 100,352-entry
        vocabulary and 16 references of 4K tokens would be 26 GB."""
        import torch

        from granite_cli.training import IGNORE

        scorer = self._token_scorer()
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
            labels = torch.full_like(ids, IGNORE)  # at position p, the continuation token p + 1 is scored
            for r, (index, row) in enumerate(zip(chunk, rows)):
                n_cont = min(len(encoded[index][1]), len(row) - 1)
                ids[r, :len(row)] = torch.tensor(row)
                mask[r, :len(row)] = 1
                labels[r, len(row) - n_cont - 1:len(row) - 1] = ids[r, len(row) - n_cont:len(row)]
            logprobs, greedy = scorer.score(ids.to(self.device), labels.to(self.device), attention_mask=mask.to(self.device))
            logprobs, greedy, scored = logprobs.cpu(), greedy.cpu(), labels != IGNORE
            for r, index in enumerate(chunk):
                results[index] = (float(logprobs[r][scored[r]].sum()), bool(greedy[r][scored[r]].all()))
        return results

    def _token_scorer(self):
        """The model wrapped to score given tokens (granite_cli/training/logprobs.py: the output embedding, divided by
        Granite's logits_scaling), checked once against the model's own logits, so that a model whose head does more
        is refused rather than scored wrong."""
        import torch

        from granite_cli.training import IGNORE
        from granite_cli.training.logprobs import TokenLogprobs

        if self.scorer is not None:
            return self.scorer
        scorer = TokenLogprobs(self.model)
        probe = torch.arange(min(8, self.model.config.vocab_size), device=self.device)[None]
        with torch.no_grad():
            own = torch.log_softmax(self.model(input_ids=probe).logits.float(), -1)[0, :-1].gather(1, probe[0, 1:, None])
        labels = torch.cat([probe[:, 1:], probe.new_full((1, 1), IGNORE)], dim=1)
        mine = scorer.score(probe, labels)[0][0, :-1, None]
        tolerance = 1e-3 if self.model.dtype == torch.float32 else 5e-2  # bf16 rounds the two orders differently
        if not torch.allclose(own, mine, rtol=tolerance, atol=tolerance):
            raise BadInput(f"log-likelihood scoring supports causal LMs whose logits are lm_head(h) / logits_scaling; "
                           f"this model's ({type(self.model).__name__}) are not", self.name)
        self.scorer = scorer
        return scorer


def _weights_digest(path: Path) -> str:
    """A cheap fingerprint of a checkpoint's weights (names, sizes and modification times)."""
    parts = [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(path.glob("*.safetensors"))]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]
