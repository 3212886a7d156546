"""Peak memory of scoring long references (eval's log-likelihoods: bits per byte, multiple choice): granite's engine,
which projects only the continuations' positions onto the vocabulary a chunk at a time, against the whole batch's
fp32 logits and their log-softmax, which is how lm-evaluation-harness's HF model scores a batch.

The model is the tiny-2m preset with Granite's real 100,352-entry vocabulary, where the logits dominate: four
references of 4K tokens hold 6.6 GB of fp32 logits, and their log-softmax as much again. Each configuration runs in
its own process; the figure is the kernel's peak RSS during the scoring minus the peak before it (model built, text
ready). Texts are random tokens of the tiny recipe's tokenizer (`make all` trains it), a 256-token context each.

    python benchmarks/bench_eval_memory.py [--lengths 1024,2048,4096] [--rows 4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import REPO, WORK, save  # noqa: E402

VOCAB = 100_352
CONTEXT = 256
TOKENIZER = REPO / "runs" / "tiny" / "tokenizer"
CHILD = """
import json, resource, sys, time
import torch
import torch.nn.functional as F
from transformers import GraniteForCausalLM
sys.path.insert(0, {repo!r})
from granite_cli.data.tokenizer_io import load_tokenizer
from model.generation import LocalEngine
from model.presets import build_config

length, rows, how = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
tok = load_tokenizer({tokenizer!r})
torch.manual_seed(0)
config = build_config("tiny-2m", vocab_size={vocab}, bos_id=tok.eos_token_id, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
config.max_position_embeddings = max(length + 2 * {context}, config.max_position_embeddings)
model = GraniteForCausalLM(config).eval()
ids = torch.randint(3, len(tok), (rows, {context} + length))
pairs = [(tok.decode(row[:{context}]), tok.decode(row[{context}:])) for row in ids]
encoded = [(tok(c, add_special_tokens=False)["input_ids"], tok(x, add_special_tokens=False)["input_ids"]) for c, x in pairs]
tokens = sum(len(c) + len(x) for c, x in encoded)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
if how == "granite":
    scores = LocalEngine.of_model(model, tok, torch.device("cpu"), batch_size=rows, name="bench").loglikelihood(pairs)
else:  # the whole batch's logits and log-softmax, then each continuation's picked
    width = max(len(c) + len(x) for c, x in encoded)
    batch = torch.full((rows, width), tok.pad_token_id)
    mask = torch.zeros_like(batch)
    for r, (c, x) in enumerate(encoded):
        batch[r, :len(c) + len(x)] = torch.tensor(c + x)
        mask[r, :len(c) + len(x)] = 1
    with torch.no_grad():
        logprobs = F.log_softmax(model(input_ids=batch, attention_mask=mask).logits.float(), dim=-1)
    scores = []
    for r, (c, x) in enumerate(encoded):
        picked = logprobs[r, len(c) - 1:len(c) + len(x) - 1].gather(1, torch.tensor(x)[:, None])
        scores.append(float(picked.sum()))
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
first = scores[0][0] if isinstance(scores[0], tuple) else scores[0]
print(json.dumps({{"scoring_mb": (peak - before) / 1024, "seconds": seconds, "tokens": tokens, "first_score": first}}))
"""
HOWS = ("whole logits", "granite")


def measure(length: int, rows: int, how: str) -> dict:
    WORK.mkdir(parents=True, exist_ok=True)
    script = WORK / "eval_memory_child.py"
    script.write_text(CHILD.format(repo=str(REPO), vocab=VOCAB, context=CONTEXT, tokenizer=str(TOKENIZER)))
    out = subprocess.run([sys.executable, str(script), str(length), str(rows), how], capture_output=True, text=True)
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="1024,2048,4096", help="Continuation lengths in tokens.")
    parser.add_argument("--rows", type=int, default=4, help="References scored in one batch.")
    args = parser.parse_args()
    if not (TOKENIZER / "tokenizer.json").exists():
        sys.exit(f"{TOKENIZER} is missing: run `make all` (or `granite tokenize train --recipe tiny`) first")
    rows = {}
    for length in [int(n) for n in args.lengths.split(",")]:
        rows[length] = {how: measure(length, args.rows, how) for how in HOWS}
        print(length, json.dumps(rows[length]), flush=True)
    save("eval_memory", {"vocab": VOCAB, "preset": "tiny-2m", "rows": args.rows, "context_tokens": CONTEXT, "lengths": rows,
                         "goal": "granite's memory bounded as the references grow (the ratio: whole logits' MB over granite's)",
                         "ratio": {length: row["whole logits"].get("scoring_mb", 0) / max(row["granite"].get("scoring_mb", 1), 1)
                                   for length, row in rows.items()}})


if __name__ == "__main__":
    main()
