"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests, whose answers a test scripts.

`respond(body, attempt)` gets each request's JSON body and how many times this same body was sent
before, and returns one of: a string (the assistant's content, with per-token log-probabilities when
the request asked for them), `(status, None)` for an HTTP error, or `("sleep", seconds)` to stall
past the client's timeout.
"""

from __future__ import annotations

import http.server
import json
import math
import re
import threading
import time
from collections import Counter


def tokens_with_logprobs(text: str, lower_digit_share: float = 0.0) -> list[dict]:
    """Split text into word/punctuation tokens; a digit d > 1 leaves `lower_digit_share` of its probability to d - 1."""
    out = []
    for token in re.findall(r"\d|\w+|\s+|[^\w\s]", text):
        if token.isdigit() and token != "1" and lower_digit_share:
            alternatives = [{"token": token, "logprob": math.log(1 - lower_digit_share)},
                            {"token": str(int(token) - 1), "logprob": math.log(lower_digit_share)}]
        else:
            alternatives = [{"token": token, "logprob": 0.0}]
        out.append({"token": token, "logprob": alternatives[0]["logprob"], "top_logprobs": alternatives})
    return out


def send_json(handler: http.server.BaseHTTPRequestHandler, status: int, answer: dict) -> None:
    data = json.dumps(answer).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class FakeOpenAI:
    def __init__(self, respond, lower_digit_share: float = 0.0):
        self.respond, self.lower_digit_share = respond, lower_digit_share
        self.bodies: list[dict] = []
        self.seen: Counter = Counter()
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                key = json.dumps(body, sort_keys=True)
                with server.lock:
                    server.bodies.append(body)
                    attempt = server.seen[key]
                    server.seen[key] += 1
                answer = server.respond(body, attempt)
                if isinstance(answer, tuple) and answer[0] == "sleep":
                    time.sleep(answer[1])
                    return
                if isinstance(answer, tuple):
                    self.send_response(answer[0])
                    self.end_headers()
                    return
                self.reply(body, answer)

            def reply(self, body, content):
                choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                if body.get("logprobs"):
                    choice["logprobs"] = {"content": tokens_with_logprobs(content, server.lower_digit_share)}
                send_json(self, 200, {"choices": [choice]})

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
