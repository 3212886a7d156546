"""A loopback stand-in for `vllm serve` with the shared-disk weight transfer, for tests of rl's rollout server.

/v1/completions samples from a real model, given the prompt as token ids, and answers as vLLM does with
`return_tokens_as_token_ids`: tokens as "token_id:N", each with its log-probability at the request's temperature
(vLLM's --logprobs-mode processed_logprobs, which granite's instructions start it with), the end-of-text token
included when the model ended. The four weight routes must come in vLLM's order (init once; then start, update,
finish per push); update_weights loads the checkpoint at the given path into the served model and keeps a copy of
what it loaded.
"""

from __future__ import annotations

import http.server
import json
import threading

import torch

from fake_openai import send_json


class FakeVLLM:
    def __init__(self, checkpoint):
        from model.checkpoint import load_model

        self.model = load_model(checkpoint, dtype=torch.float32).eval()
        self.eos = self.model.config.eos_token_id
        self.calls: list[str] = []
        self.completions: list[dict] = []
        self.pushed: list[dict] = []
        self.versions: list[str] = []  # finish_weight_update's weight_version, as vLLM's /weight_info would report it
        self.updating = self.loaded = False
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                send_json(self, *server.handle(self.path.strip("/"), body))

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()

    def handle(self, route: str, body: dict):
        with self.lock:
            if route == "v1/completions":
                self.completions.append(body)
                return 200, {"choices": [self.sample(body, i) for i in range(body["n"])]}
            self.calls.append(route)
            if route == "init_weight_transfer_engine":
                return 200, {}
            if route == "start_weight_update" and not self.updating and "init_weight_transfer_engine" in self.calls:
                self.updating, self.loaded = True, False
                return 200, {}
            if route == "update_weights" and self.updating and not self.loaded:
                self.load(body["update_info"]["path"])
                self.loaded = True
                return 200, {}
            if route == "finish_weight_update" and self.updating and self.loaded:
                self.updating = False
                self.versions.append(body.get("weight_version"))
                return 200, {}
            return 400, {"error": f"{route} out of order"}

    def load(self, path: str):
        from safetensors.torch import load_file

        state = load_file(f"{path}/model.safetensors")
        self.model.load_state_dict(state, strict=False)  # tied embeddings: lm_head is the embedding
        self.pushed.append(state)

    def sample(self, body: dict, index: int) -> dict:
        generator = torch.Generator().manual_seed(body["seed"] * 1000 + index)
        ids, tokens, logprobs = list(body["prompt"]), [], []
        with torch.no_grad():
            for _ in range(body["max_tokens"]):
                logits = self.model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].float()
                processed = torch.log_softmax(logits / body["temperature"], -1)
                token = int(torch.multinomial(processed.exp(), 1, generator=generator))
                tokens.append(f"token_id:{token}")
                logprobs.append(float(processed[token]))
                ids.append(token)
                if token == self.eos:
                    break
        finish = "stop" if tokens[-1] == f"token_id:{self.eos}" else "length"
        return {"index": index, "text": "", "finish_reason": finish, "logprobs": {"tokens": tokens, "token_logprobs": logprobs}}
