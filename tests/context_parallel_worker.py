"""Run under torchrun: one packed row scored with its positions split across the processes (context parallelism)
must give the log-probabilities and the summed gradients of the same row on one process.

    torchrun --nproc-per-node N tests/context_parallel_worker.py CHECKPOINT
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from granite_cli.training import context_parallel, distributed  # noqa: E402
from granite_cli.training.logprobs import TokenLogprobs  # noqa: E402
from model.checkpoint import load_model  # noqa: E402


def scored(model, batch, **attention):
    """Summed log-probability's gradient and the per-position log-probabilities."""
    model.zero_grad(set_to_none=True)
    logprobs, _ = model(batch["input_ids"], batch["labels"], batch["position_ids"], **attention)
    logprobs.sum().backward()
    return logprobs.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def main() -> None:
    dist = distributed.setup("cpu")
    torch.manual_seed(0)
    length = 96
    ids = torch.randint(0, 200, (2, length))
    starts = [0, 40, 70]  # row 0: three documents; row 1: one
    positions = torch.stack([torch.cat([torch.arange(e - s) for s, e in zip(starts, starts[1:] + [length])]),
                             torch.arange(length)])
    batch = {"input_ids": ids, "labels": torch.roll(ids, -1, 1), "position_ids": positions}
    model = TokenLogprobs(load_model(sys.argv[1], dtype=torch.float32))
    alone, alone_grads = scored(model, batch)

    split = context_parallel.ContextParallel.create(dist, dist.world)
    model.lm.set_attn_implementation(context_parallel.register())
    local, layout = split.split(batch)
    mine, grads = scored(model, local, context_parallel=layout)
    for grad in grads.values():
        distributed.all_reduce_sum(grad, dist)
    every = [torch.zeros_like(mine) for _ in range(dist.world)]
    torch.distributed.all_gather(every, mine)
    together = torch.zeros_like(alone)
    together[:, context_parallel.gather_order(length, dist.world)] = torch.cat(every, dim=1)
    torch.testing.assert_close(together, alone, atol=2e-5, rtol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, alone_grads[name], atol=2e-5, rtol=1e-4, msg=name)
    if dist.main:
        print(f"context parallel over {dist.world}: log-probabilities and gradients equal one process's")
    distributed.teardown(dist)


if __name__ == "__main__":
    main()
