"""Context parallelism: each row's positions split across N ranks, for rows longer than one device holds.

This is the all-gather form Llama 3 trained its 128K context with. Under torchrun, ranks form groups of N
consecutive ranks; the groups split the batch's rows between them (data parallelism) and the N ranks of a group
split every row along its length. A rank runs the whole model on its 1/N of the positions; in every attention
layer the group all-gathers the keys and values, so each query sees every earlier key of its own document. Only
keys and values exist N-fold (Granite 4.1 8B and 30B have 8 key-value heads to 32 query heads, so each is a
quarter of the queries' size); the other activations, the MLPs and the loss stay at 1/N. Backward sums the
gathered keys' and values' gradients back to their ranks.

Load balance: a causal row's late positions attend to more keys, so the row is cut into 2N chunks and rank r
takes chunks r and 2N-1-r ("zigzag"). Attention is masked by the tokens' positions in the whole row and by their
document (a new document starts where the position ids restart, as extend-context packs them), so a packed row
gives the same result as on one device. The mask is dense (T/N x T booleans a row, as transformers' own mask of a
packed row is T x T); a block-sparse mask (FlexAttention's) is what the longest rows want next.

Why not torch's `context_parallel` (torch.distributed.tensor.experimental): its ring attention masks a plain
causal row only, not packed documents, and in torch 2.13 it has no CPU path at all (the CPU SDPA kernel has no
sharding strategy), so none of it could be tested here. This module needs only an all-gather, which gloo has as
NCCL does; it is tested on gloo.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ATTENTION = "context_parallel"


@dataclass
class Layout:
    """What the attention of one context-parallel forward needs about the split rows (built once, read by every layer)."""

    group: object  # the rank's context-parallel process group
    allowed: torch.Tensor  # [B, 1, T / N, T] which gathered keys each of this rank's queries may attend to


@dataclass
class ContextParallel:
    """A rank's place in the context-parallel groups of a run."""

    size: int  # N: ranks a row is split across
    rank: int  # this rank's place in its group
    group: object
    replica: int  # which group: the groups split the batch's rows between them
    replicas: int

    @classmethod
    def create(cls, dist, size: int) -> "ContextParallel":
        from granite_cli.errors import BadInput

        if size < 1 or dist.world % size:
            raise BadInput(f"--context-parallel {size} must divide the number of processes ({dist.world})")
        group = None
        for first in range(0, dist.world, size):  # every rank takes part in creating every group
            ranks = list(range(first, first + size))
            made = torch.distributed.new_group(ranks) if size > 1 else None
            if dist.rank in ranks:
                group = made
        return cls(size, dist.rank % size, group, dist.rank // size, dist.world // size)

    def split(self, micro: dict) -> tuple[dict, Layout]:
        """This rank's positions of every [B, T] tensor of a micro-batch, and the layout attention needs."""
        length = micro["input_ids"].shape[1]
        if length % (2 * self.size):
            from granite_cli.errors import BadInput

            raise BadInput(f"rows of {length} tokens do not split into 2 x {self.size} equal chunks for context parallelism")
        device = micro["input_ids"].device
        positions = micro.get("position_ids")
        if positions is None:
            positions = torch.arange(length, device=device).expand_as(micro["input_ids"])
        documents = torch.cumsum((positions == 0).long(), dim=1)  # a document starts where the positions restart
        mine = zigzag(length, self.size, self.rank).to(device)
        every = gather_order(length, self.size).to(device)
        allowed = ((every[None, :] <= mine[:, None])[None]
                   & (documents[:, mine, None] == documents[:, None, every]))
        local = {k: (v[:, mine] if v.dim() >= 2 and v.shape[1] == length else v) for k, v in micro.items()}
        local["position_ids"] = positions[:, mine]
        return local, Layout(self.group, allowed[:, None])


def gather_order(length: int, size: int) -> torch.Tensor:
    """The position in the whole row of each key or value the group all-gathers: rank 0's positions, then rank 1's..."""
    return torch.cat([zigzag(length, size, rank) for rank in range(size)])


def zigzag(length: int, size: int, rank: int) -> torch.Tensor:
    """Rank `rank`'s positions of a row of `length`: chunks rank and 2*size-1-rank of 2*size equal chunks."""
    chunk = length // (2 * size)
    first, second = rank, 2 * size - 1 - rank
    return torch.cat([torch.arange(first * chunk, (first + 1) * chunk), torch.arange(second * chunk, (second + 1) * chunk)])


def attention_forward(module, query, key, value, attention_mask, context_parallel: Layout | None = None, **kwargs):
    """transformers' attention interface: with a layout, the group's keys and values gathered and masked by position
    and document; without one (validation, generation: a whole row on one rank), transformers' SDPA as it is."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if context_parallel is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    from torch.distributed._functional_collectives import all_gather_single_autograd

    layout = context_parallel
    keys = all_gather_single_autograd(key.contiguous(), 2, layout.group)  # [B, heads, T, D] in gather order
    values = all_gather_single_autograd(value.contiguous(), 2, layout.group)
    kwargs.pop("is_causal", None)
    return sdpa_attention_forward(module, query, keys, values, layout.allowed, is_causal=False, **kwargs)


def register() -> str:
    """Make the context-parallel attention known to transformers (idempotent) and return its name; its mask is
    transformers' SDPA mask, used when a forward runs without a layout."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, attention_forward)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)
    return ATTENTION
