"""Rollouts from an external vLLM server, and the weight push that keeps it on the current policy.

    VLLM_SERVER_DEV_MODE=1 vllm serve CKPT --weight-transfer-config '{"backend": "disk"}' --logprobs-mode processed_logprobs
    granite rl --stage 1 --init-from CKPT --rollout-server http://HOST:8000 --weight-dir /shared/granite-weights

Sampling: POST /v1/completions with the prompt as token ids (rendered by granite's chat template, so the server
samples after exactly the tokens the trainer scores), n = G, the step's seed, `logprobs: 0` and vLLM's
`return_tokens_as_token_ids`, so every sampled token comes back as its id ("token_id:N") with the server's
log-probability. The completion's text is decoded here, by the policy's tokenizer, for the verifiers.

Weight push: vLLM's weight-transfer routes (served under VLLM_SERVER_DEV_MODE) with its shared-disk backend. The
trainer writes the policy as a checkpoint into --weight-dir, a directory the server can read, then POSTs
/start_weight_update, /update_weights {"update_info": {"path": DIR}} and /finish_weight_update {"weight_version":
"step-N"} (/init_weight_transfer_engine {"init_info": {}} once, first). The shared-disk backend is in recent vLLM
releases only. It pushes before every rollout step whose weights
the server does not have, the first step of a process included: a resumed run's weights are not the checkpoint
the server started from. vLLM's NCCL and CUDA-IPC backends move weights without the disk; they need a
communicator on the trainer's GPU and are not built here.

The server's sampler and the trainer's forward compute slightly different probabilities (other kernels, other
precision), so the samples are a little off-policy: truncated importance sampling (Yao et al., 2025, "Your
efficient RL framework secretly brings you off-policy RL training") weights each token's policy-gradient term by
min(pi_trainer(t) / pi_server(t), C) with C = --tis-cap (objective.py). Both sides' log-probabilities must be of the
distribution sampled from, after the temperature: the trainer scores at the rollouts' temperature, and the server
needs --logprobs-mode processed_logprobs (vLLM's default, raw_logprobs, is before it; with it, every token's
weight is off by the temperature's reshaping and `sampler_gap` in the step log shows it). Processed log-probabilities
also renormalise over the top-p nucleus, which the trainer does not: keep top-p at 1 or read the gap.

A run resumed with --resume asks the server for the same (seed, step) samples; it ends bitwise equal to an
uninterrupted run only where the server's seeded sampling is itself reproducible, which vLLM does not promise
across batch compositions (in-process rollouts are reproducible, and tested so).
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from granite_cli.errors import BadInput, GraniteError
from model.endpoint import post_json
from model.generation import Completion, Sampling

TOKEN_ID_PREFIX = "token_id:"


def check_url(url: str) -> str:
    """The server's root URL (a trailing /v1 dropped), or exit 2."""
    if not url.startswith(("http://", "https://")):
        raise BadInput(f"--rollout-server is the server's http(s) root, such as http://127.0.0.1:8000, not {url!r}")
    return url.rstrip("/").removesuffix("/v1")


class RolloutServer:
    def __init__(self, url: str, weight_dir: Path, tokenizer, model_name: str, concurrency: int = 16,
                 timeout: float = 600.0, retries: int = 3):
        self.url, self.weight_dir, self.tokenizer = check_url(url), Path(weight_dir).resolve(), tokenizer
        self.model_name, self.concurrency, self.timeout, self.retries = model_name, concurrency, timeout, retries
        self.pushed_version = None  # the trainer step whose weights the server holds (None: not known)

    # ------------------------------------------------------------------ weights
    def connect(self) -> "RolloutServer":
        """Open the server's weight transfer (once a process, before anything else runs, so a server started
        without it stops the run at once)."""
        self.post("init_weight_transfer_engine", {"init_info": {}})
        return self

    def sync(self, trainer, tokenizer_dir: Path) -> float:
        """Push the policy's weights unless the server already has this step's; returns the seconds it took."""
        from model.checkpoint import save_checkpoint

        if self.pushed_version == trainer.step:
            return 0.0
        started = time.perf_counter()
        save_checkpoint(self.weight_dir, trainer.model_state(), trainer.model.config, tokenizer_dir, lineage=[])
        self.post("start_weight_update", {})
        self.post("update_weights", {"update_info": {"path": str(self.weight_dir)}})
        self.post("finish_weight_update", {"weight_version": f"step-{trainer.step}"})  # vLLM's /weight_info names it
        self.pushed_version = trainer.step
        return time.perf_counter() - started

    def post(self, route: str, body: dict) -> dict:
        try:
            return post_json(f"{self.url}/{route}", body, {}, self.timeout, self.retries)
        except GraniteError as err:
            raise GraniteError(f"the rollout server refused the weight push ({err}); start it with "
                               f"VLLM_SERVER_DEV_MODE=1, --weight-transfer-config '{{\"backend\": \"disk\"}}' and --logprobs-mode "
                               f"processed_logprobs, "
                               f"and give a --weight-dir it can read") from err

    # ------------------------------------------------------------------ samples
    def generate(self, prompt_ids: list[list[int]], sampling: Sampling) -> list[list[Completion]]:
        """sampling.n completions of each prompt, each with its token ids and the server's log-probabilities."""
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(lambda ids: self.one(ids, sampling), prompt_ids))

    def one(self, ids: list[int], s: Sampling) -> list[Completion]:
        body = {"model": self.model_name, "prompt": ids, "n": s.n, "max_tokens": s.max_new_tokens,
                "temperature": s.temperature, "top_p": s.top_p, "seed": s.seed, "logprobs": 0,
                "return_tokens_as_token_ids": True, "skip_special_tokens": False}
        answer = post_json(f"{self.url}/v1/completions", body, {}, self.timeout, self.retries)
        try:
            return [self.completion(choice) for choice in sorted(answer["choices"], key=lambda c: c.get("index", 0))]
        except (KeyError, TypeError, ValueError) as err:
            raise GraniteError(f"{self.url}/v1/completions: an answer without token ids and log-probabilities "
                               f"({type(err).__name__}: {err}; {str(answer)[:200]}); a vLLM server gives them") from err

    def completion(self, choice: dict) -> Completion:
        logprobs = choice["logprobs"]
        ids = [int(token.removeprefix(TOKEN_ID_PREFIX)) for token in logprobs["tokens"]]
        values = [math.nan if v is None else float(v) for v in logprobs["token_logprobs"]]  # NaN: importance weight 1
        if len(ids) != len(values):
            raise ValueError(f"{len(ids)} tokens but {len(values)} log-probabilities")
        eos = self.tokenizer.eos_token_id
        ended = eos in ids
        if ended:  # the end-of-text token is the sequence's (rollouts append it), not the answer's
            cut = ids.index(eos)
            ids, values = ids[:cut], values[:cut + 1]  # the end token's log-probability stays: it is trained too
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        finish = "stop" if ended or choice.get("finish_reason") == "stop" else "length"
        return Completion(text, ids, [], values, None, finish)
