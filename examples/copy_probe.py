"""Can a checkpoint copy from its context? The loss on a random token span shown twice, first and second showing.

A model with induction heads predicts the second showing almost perfectly; one without them pays the same loss
twice. Every stage-1 RL verifier checks something the answer must take from the prompt (a name, a number, a
word), so a model that cannot copy gets right answers only by luck, and GRPO has nothing to generalise from
(README, `granite rl`). Usage: python examples/copy_probe.py CHECKPOINT [CHECKPOINT ...]
"""

from __future__ import annotations

import argparse
import math

import torch
from transformers import AutoModelForCausalLM


def copy_losses(model, vocab_size: int, rows: int = 32, span: int = 32, seed: int = 0) -> tuple[float, float]:
    """(mean loss on the first showing, on the repeat), in nats a token; ids below 100 (special tokens) not drawn."""
    generator = torch.Generator().manual_seed(seed)
    first = torch.randint(100, vocab_size, (rows, span), generator=generator)
    ids = torch.cat([first, first], 1)
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits.float(), -1)
    nll = -logprobs[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]  # nll[:, t] is the loss of token t + 1
    return nll[:, : span - 1].mean().item(), nll[:, span - 1:].mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    args = parser.parse_args()
    for path in args.checkpoints:
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
        vocab = model.config.vocab_size
        first, repeat = copy_losses(model, vocab)
        print(f"{path}: first showing {first:.2f}, repeat {repeat:.2f} nats a token (uniform guess {math.log(vocab):.2f})")


if __name__ == "__main__":
    main()
