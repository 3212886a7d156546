"""Can a checkpoint copy from its context? The loss on a random token span shown twice, first and second showing.

A model with induction heads predicts the second showing almost perfectly; one without them pays the same loss
twice. Every stage-1 RL verifier checks something the answer must take from the prompt (a name, a number, a
word), so a model that cannot copy gets right answers only by luck, and GRPO has nothing to generalise from
(README, `granite rl`). Usage: python examples/copy_probe.py CHECKPOINT [CHECKPOINT ...]
"""

from __future__ import annotations

import argparse
import math
import sys

import torch

from granite_cli.errors import BadInput
from granite_cli.training.logprobs import TokenLogprobs
from model.checkpoint import load_model


def copy_losses(lm, rows: int = 32, span: int = 32, seed: int = 0) -> tuple[float, float]:
    """(mean loss on the first showing, on the repeat), in nats a token; ids below 100 (special tokens) not drawn.
    Scored by the trainer's TokenLogprobs, so no row's whole-vocabulary logits exist at once."""
    generator = torch.Generator().manual_seed(seed)
    first = torch.randint(100, lm.config.vocab_size, (rows, span), generator=generator)
    ids = torch.cat([first, first], 1)
    with torch.no_grad():
        logprobs, _ = TokenLogprobs(lm)(ids[:, :-1], ids[:, 1:])  # logprobs[:, t]: token t + 1
    return -logprobs[:, : span - 1].mean().item(), -logprobs[:, span - 1:].mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    args = parser.parse_args()
    for path in args.checkpoints:
        try:
            lm = load_model(path).eval()
        except BadInput as err:
            print(f"copy_probe: {err}", file=sys.stderr)
            sys.exit(err.exit_code)
        first, repeat = copy_losses(lm)
        print(f"{path}: first showing {first:.2f}, repeat {repeat:.2f} nats a token "
              f"(uniform guess {math.log(lm.config.vocab_size):.2f})")


if __name__ == "__main__":
    main()
