"""Per-token log-probabilities of a causal LM, a chunk of positions at a time.

Every loss the trainer knows (cross-entropy for pretrain, sft and extend-context; the policy-gradient
loss of rl) is a function of log p(target token), so the model is wrapped once in `TokenLogprobs`
and the losses read its output. The full-vocabulary logits of a long sequence never exist at once:
for Granite's 100,352-entry vocabulary a 32K-token row would need 13 GB of fp32 logits. Each chunk
of positions is projected, reduced to its target log-probability (and entropy), and dropped; the
backward pass recomputes the chunk (activation checkpointing), so memory holds one chunk's logits
in both directions.

The wrapper is what DDP/FSDP wrap: the projection runs inside the wrapped forward, so the tied
embedding/LM-head weight is gathered and synchronised exactly as in the model's own forward.

`kernel="liger"` (the training stages' --loss-kernel) takes Liger's fused linear + cross-entropy instead, on a CUDA
device, for log p alone (the cross-entropy of pretrain, sft and extend-context). It is not the default: on one H200
(benchmarks/bench_gpu.py, 2026-12-04) its per-token losses, what this interface returns, took 0.60x the chunked
projection's time for 32K tokens a micro-batch and 0.67x for 16K, but 1.6x for 4K, and granite-1b's pre-training
at micro-batches of 4 x 4,096 tokens under torch.compile ran at 0.98x the chunked head's tokens/s.

With `temperature` T the log-probabilities (and entropies) are those of softmax(logits / T), the distribution a
sampler at temperature T draws from: rl's policy loss scores its rollouts under the policy that sampled them, as
TRL and verl do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from granite_cli.errors import BadInput
from granite_cli.training import IGNORE


class TokenLogprobs(torch.nn.Module):
    """forward(input_ids, labels[, position_ids]) -> (log p(label) per position, entropy per position or None).

    Positions whose label is IGNORE get log-probability 0 and entropy 0.
    `chunk_tokens` positions (over the whole micro-batch) are projected onto the vocabulary at a time; by default
    as many as keep a chunk's fp32 logits near 256 MB (8,192 for an 8K vocabulary, 668 for Granite's 100,352).
    `temperature` divides the logits (1: the model's own distribution).
    `kernel`: "chunked", or "liger" for Liger's fused linear + cross-entropy (CUDA). The fused kernel gives log p only:
    a loss that wants the entropy as well (rl's) is scored by the chunked projection whatever the setting.
    """

    def __init__(self, lm, chunk_tokens: int | None = None, kernel: str = "chunked", temperature: float = 1.0):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"the log-probabilities' temperature must be positive, not {temperature}")
        self.lm = lm
        self.chunk_tokens = chunk_tokens or default_chunk_tokens(lm.config.vocab_size)
        self.temperature = temperature
        self.fused = fused_kernel(kernel, lm.lm_head.weight.device)

    @property
    def config(self):
        return self.lm.config

    def forward(self, input_ids, labels, position_ids=None, entropy: bool = False, **attention):
        """`attention`: keyword arguments for the model's attention function (context parallelism's layout)."""
        hidden = last_hidden_state(self.lm, input_ids, position_ids, **attention)
        if self.fused is not None and not entropy:
            return fused_logprobs(self.fused, hidden, self.lm.lm_head.weight, labels, self.scale()), None
        return chunked_logprobs(hidden, self.lm.lm_head.weight, labels, self.scale(), self.chunk_tokens, entropy)

    @torch.no_grad()
    def score(self, input_ids, labels, **attention):
        """(log p(label), whether the label is the model's most likely token) at each labelled position, for
        inference (eval's log-likelihoods): only labelled positions are projected, a chunk at a time."""
        hidden = last_hidden_state(self.lm, input_ids, **attention)
        return scored_targets(hidden, self.lm.lm_head.weight, labels, self.scale(), self.chunk_tokens)

    def scale(self) -> float:
        """Granite divides its logits by `logits_scaling` (1 for models without it); a temperature divides them again."""
        return 1.0 / (float(getattr(self.lm.config, "logits_scaling", 1.0) or 1.0) * self.temperature)


def last_hidden_state(lm, input_ids, position_ids=None, **attention):
    """The backbone's output (no head): packed rows pass position ids restarting at each sequence."""
    inputs = {"input_ids": input_ids, "use_cache": False, **attention}
    if position_ids is not None:
        inputs["position_ids"] = position_ids
    return lm.model(**inputs).last_hidden_state


CHUNK_LOGITS = 1 << 26  # fp32 logits a chunk may hold (256 MB)


def default_chunk_tokens(vocab_size: int) -> int:
    return max(256, min(8192, CHUNK_LOGITS // vocab_size))


def chunked_logprobs(hidden, weight, labels, scale: float, chunk_tokens: int, entropy: bool = False):
    """log p(labels) from final hidden states [B, T, H] and the output projection [V, H], chunk by chunk.

    Only positions with a label are projected: sft's prompts and rl's prompts carry none, and for a small model the
    projection onto the vocabulary is most of the compute."""
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_labels = labels.reshape(-1)
    labelled = flat_labels != IGNORE
    count = int(labelled.sum())  # one device sync a forward
    if count == 0:  # nothing to score (a padding row): zeros that still depend on the graph
        zeros = (hidden.sum() * 0).expand(labels.shape).to(torch.float32)
        return zeros, (zeros if entropy else None)
    if count < flat_labels.numel():
        where = labelled.nonzero().squeeze(1)
        logp, ent = chunked_logprobs(flat_hidden[where][None], weight, flat_labels[where][None], scale, chunk_tokens, entropy)
        full = torch.zeros(flat_labels.shape, dtype=logp.dtype, device=logp.device).index_copy(0, where, logp[0])
        full_entropy = (torch.zeros(flat_labels.shape, dtype=ent.dtype, device=ent.device).index_copy(0, where, ent[0])
                        if entropy else None)
        return full.view(labels.shape), (full_entropy.view(labels.shape) if entropy else None)
    pieces, entropies = [], []
    several = flat_labels.numel() > chunk_tokens  # one chunk is the whole batch: nothing to save by recomputing it
    for start in range(0, flat_labels.numel(), chunk_tokens):
        part = (flat_hidden[start:start + chunk_tokens], weight, flat_labels[start:start + chunk_tokens])
        if several and torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
            logp, ent = checkpoint(_chunk, *part, scale, entropy, use_reentrant=False)
        else:
            logp, ent = _chunk(*part, scale, entropy)
        pieces.append(logp)
        entropies.append(ent)
    logprobs = torch.cat(pieces).view(labels.shape)
    return logprobs, (torch.cat(entropies).view(labels.shape) if entropy else None)


def scored_targets(hidden, weight, labels, scale: float, chunk_tokens: int):
    """(log p(labels), labels == argmax) from final hidden states [B, T, H]: what chunked_logprobs computes, without
    a graph, plus whether each label is the greedy choice. Unlabelled positions get 0 and False."""
    flat_hidden, flat_labels = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
    where = (flat_labels != IGNORE).nonzero().squeeze(1)
    logprobs = torch.zeros(flat_labels.shape, dtype=torch.float32, device=hidden.device)
    greedy = torch.zeros(flat_labels.shape, dtype=torch.bool, device=hidden.device)
    for start in range(0, where.numel(), chunk_tokens):
        index = where[start:start + chunk_tokens]
        logits = _project(flat_hidden[index], weight, scale)
        targets = flat_labels[index]
        logprobs[index] = -F.cross_entropy(logits, targets, reduction="none")
        greedy[index] = logits.argmax(-1) == targets
    return logprobs.view(labels.shape), greedy.view(labels.shape)


KERNELS = ("chunked", "liger")


def fused_kernel(kernel: str, device):
    """Liger's fused linear + cross-entropy function for kernel "liger" (on CUDA, installed: else bad input), None for
    "chunked"."""
    if kernel not in KERNELS:
        raise BadInput(f"--loss-kernel must be one of {', '.join(KERNELS)}, not {kernel!r}")
    if kernel == "chunked":
        return None
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    except ImportError as err:
        raise BadInput(f"--loss-kernel liger needs liger-kernel (pip install 'granite-recipe[gpu]'): {err}") from err
    if getattr(device, "type", device) != "cuda":
        raise BadInput(f"--loss-kernel liger runs on a CUDA device, not {device}")
    return liger_fused_linear_cross_entropy


@torch.compiler.disable  # kept out of the compiled graph: a compiled run with it inside failed (H200, 2026-12-04)
def fused_logprobs(function, hidden, weight, labels, scale: float):
    """log p(labels) from final hidden states [B, T, H] through a fused linear + cross-entropy (Liger's): each chunk's
    logits are made and reduced inside the kernel, in chunks sized for a GPU; per-token losses make it recompute them
    in the backward pass, as the chunked path does. The kernel takes both operands in the activations' dtype (the
    autocast's), and sums the weight's gradient in fp32 (its accum_dtype)."""
    dtype = torch.get_autocast_dtype(hidden.device.type) if torch.is_autocast_enabled(hidden.device.type) else hidden.dtype
    flat = hidden.reshape(-1, hidden.shape[-1]).to(dtype)
    loss = function(flat * scale if scale != 1.0 else flat, weight.to(dtype), labels.reshape(-1), ignore_index=IGNORE,
                    reduction="none", accum_dtype=torch.float32)
    return -loss.view(labels.shape)


def _project(hidden, weight, scale: float):
    """fp32 logits of hidden states [N, H]: scaling the H-wide input costs less than scaling the V-wide logits."""
    return F.linear(hidden * scale if scale != 1.0 else hidden, weight).float()


def _chunk(hidden, weight, labels, scale: float, entropy: bool):
    # every label here is a real one: chunked_logprobs passes the labelled positions only
    logits = _project(hidden, weight, scale)
    if not entropy:  # the fused cross-entropy is the fastest log-softmax-and-pick there is
        return -F.cross_entropy(logits, labels, reduction="none"), torch.zeros(0, device=logits.device)
    # with the entropy, one log-softmax serves both: cross_entropy is nll_loss of log_softmax, so the picked entries and
    # their gradients are the same bit for bit, without a second V-wide log-softmax
    log_probs = torch.log_softmax(logits, dim=-1)
    return log_probs.gather(1, labels[:, None]).squeeze(1), -(log_probs.exp() * log_probs).sum(-1)
