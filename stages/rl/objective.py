"""The policy loss: GRPO's clipped importance ratio with DAPO's decoupled clip bounds, a k3 KL to the reference,
an optional entropy bonus, and three ways to normalise (the trainer's pluggable-loss protocol, losses.py).

Per trained token t of completion i with advantage A_i, ratio r = exp(log pi(t) - log pi_old(t)):

    pg   = -min(r A_i, clip(r, 1 - eps_low, 1 + eps_high) A_i)
    kl   = exp(ref - logp) - (ref - logp) - 1            (Schulman's k3: unbiased, always >= 0)
    loss = pg + beta kl - entropy_coef H(t)

and the batch's loss is the weighted sum over trained tokens divided by the normaliser:

    dapo     sum over all trained tokens of the batch / number of trained tokens   (token-level: long answers
             weigh by their length; DAPO's default and the recipe's)
    grpo     sum over sequences of (mean over the sequence's tokens) / number of sequences   (the GRPO paper)
    dr_grpo  sum over all trained tokens / (number of sequences x max new tokens)   (Dr. GRPO: a constant, no
             length bias)

With rollouts from an external server (server.py), the batch also carries `rollout_logprobs`, the server's
log-probability of each sampled token, and the pg term of each token is weighted by truncated importance sampling,
min(exp(log pi_old(t) - log pi_server(t)), C): the trainer's probability of what the server sampled over the
server's, capped (a token whose server log-probability is missing, NaN, keeps weight 1).

The batch carries, per position, `advantages`, `old_logprobs` (when several updates share a rollout batch),
`ref_logprobs` (when beta > 0), `loss_mask`
(1 where the token is trained) and `token_weight` (1, or 1 / the sequence's trained tokens for grpo), and per
row `sequences` (completions in the row) and `trained_sequences` (those with a trained token).
"""

from __future__ import annotations

import torch

NORMALISATIONS = ("dapo", "grpo", "dr_grpo")


class PolicyLoss:
    wants_entropy = True  # entropy is logged every step (entropy collapse is the failure users meet most)

    def __init__(self, normalisation: str, epsilon_low: float, epsilon_high: float, beta: float,
                 entropy_coef: float = 0.0, max_new_tokens: int = 1, tis_cap: float = 2.0):
        if normalisation not in NORMALISATIONS:
            raise ValueError(f"loss normalisation must be one of {', '.join(NORMALISATIONS)}")
        self.normalisation, self.epsilon_low, self.epsilon_high = normalisation, epsilon_low, epsilon_high
        self.beta, self.entropy_coef, self.max_new_tokens, self.tis_cap = beta, entropy_coef, max_new_tokens, tis_cap
        self._metric_scale = 1.0

    def denominator(self, batch: dict) -> float:
        tokens = float(batch["loss_mask"].sum())
        if self.normalisation == "dapo":
            value = tokens
        elif self.normalisation == "grpo":
            value = float(batch["trained_sequences"].sum())
        else:
            value = float(batch["sequences"].sum()) * self.max_new_tokens
        value = max(value, 1.0)  # nothing trained (every group zero-variance and left out): a zero loss, not a crash
        # the trainer divides metrics by this denominator too; scaling them makes every logged metric a token mean
        self._metric_scale = value / max(tokens, 1.0)
        return value

    def __call__(self, logprobs, entropy, micro: dict):
        mask = micro["loss_mask"]
        weight = mask * micro["token_weight"]
        advantages = micro["advantages"]
        # one update per rollout batch: the old policy is the current one, and the ratio is exp(logp - logp.detach())
        # (1, with the gradient of logp), so rollouts skip a forward pass over the batch
        old = micro["old_logprobs"] if "old_logprobs" in micro else logprobs.detach()
        ratio = torch.exp(logprobs - old)
        clipped = ratio.clamp(1 - self.epsilon_low, 1 + self.epsilon_high)
        per_token = -torch.minimum(ratio * advantages, clipped * advantages)
        metrics = {}
        if "rollout_logprobs" in micro:
            sampler = micro["rollout_logprobs"]
            gap = old.detach() - sampler  # log(pi_trainer / pi_server); NaN where the server gave none
            tis = torch.where(torch.isnan(gap), 1.0, torch.exp(gap.nan_to_num()).clamp(max=self.tis_cap))
            per_token = per_token * tis
            with torch.no_grad():
                metrics["tis_weight"] = (tis * mask).sum()
                metrics["tis_capped"] = ((tis >= self.tis_cap).float() * mask).sum()
                metrics["sampler_gap"] = (gap.abs().nan_to_num() * mask).sum()
        metrics["pg_loss"] = (per_token * mask).sum()
        if self.beta:
            delta = micro["ref_logprobs"] - logprobs
            kl = torch.exp(delta) - delta - 1
            per_token = per_token + self.beta * kl
            metrics["kl"] = (kl * mask).sum()
        if self.entropy_coef:
            per_token = per_token - self.entropy_coef * entropy
        with torch.no_grad():
            metrics["entropy"] = (entropy * mask).sum()
            metrics["clip_low"] = (((ratio < 1 - self.epsilon_low) & (advantages < 0)).float() * mask).sum()
            metrics["clip_high"] = (((ratio > 1 + self.epsilon_high) & (advantages > 0)).float() * mask).sum()
            metrics["ratio"] = (ratio * mask).sum()
        return (per_token * weight).sum(), {name: value.detach() * self._metric_scale for name, value in metrics.items()}
