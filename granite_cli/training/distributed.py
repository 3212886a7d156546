"""One process or many: the same training code runs alone, under torchrun with DDP, or with FSDP2.

`setup()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); without it the run is a
single process. `wrap()` applies DDP or FSDP2 (`fully_shard` per decoder layer, then the root).
State dicts are always gathered full on every rank (torch.distributed.checkpoint.state_dict), so a
checkpoint is a plain Hugging Face directory whatever the parallelism.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from granite_cli.errors import BadInput

PARALLEL_MODES = ("ddp", "fsdp")


@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    device: object

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def launch_position() -> tuple[int, int]:
    """(rank, world size) as torchrun sets them, (0, 1) for a process run alone: readable before any process group
    exists (a stage's checks and its output lock come first)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def setup(device_name: str = "auto") -> Dist:
    import torch

    rank, world = launch_position()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(f"cuda:{local_rank}" if device_name == "cuda" else device_name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    launched = world > 1 or "TORCHELASTIC_RUN_ID" in os.environ  # torchrun, even with one rank (FSDP2 needs a group)
    if launched and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local_rank, device)


def barrier(dist: Dist) -> None:
    """Wait for every rank: call it on the way out, so no rank tears down the group while another still uses it."""
    import torch

    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def teardown(dist: Dist) -> None:
    import torch

    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def wrap(model, dist: Dist, mode: str):
    """Wrap for data parallelism; a single process gets the model back unchanged."""
    if mode not in PARALLEL_MODES:
        raise BadInput(f"--parallel must be one of {', '.join(PARALLEL_MODES)}, not {mode!r}")
    if not dist.active and mode == "ddp":
        return model
    if mode == "fsdp":
        import torch
        from torch.distributed.fsdp import fully_shard

        if not torch.distributed.is_initialized():
            raise BadInput("--parallel fsdp needs a process group: launch with torchrun (--nproc-per-node 1 for one GPU)")
        for layer in getattr(model, "lm", model).model.layers:  # the trainer wraps the model in TokenLogprobs
            fully_shard(layer)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)


def no_sync(model, sync: bool):
    """Skip the gradient all-reduce on accumulation micro-steps (DDP and FSDP2 each have their way)."""
    if sync:
        return contextlib.nullcontext()
    if hasattr(model, "no_sync"):
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):
        return _fsdp_no_sync(model)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _fsdp_no_sync(model):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def full_model_state(model) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_state(model, optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_model_state(model, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=False))


def load_optimizer_state(model, optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def all_reduce_sum(tensor, dist: Dist):
    import torch

    if dist.active:
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor
