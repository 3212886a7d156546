"""Rollouts: the batch source of `granite rl`'s trainer (granite_cli/training/trainer.py's BatchSource).

One rollout step feeds `updates_per_batch` optimizer steps, so `batch(step)` makes the rollouts of step
`step // updates_per_batch` when it first asks for them, and hands out one mini-batch per optimizer step:

1. prompts: the step's `prompts_per_step` prompts from a seeded order of the pool (a new order each pass);
2. generate: G completions per prompt from the current policy, all in one batched `generate`, sampled with
   a seed derived from (seed, step): rollouts are a pure function of (seed, step, weights), so a resumed run
   draws exactly what the uninterrupted one drew; or from an external vLLM server (server.py), the policy's
   weights pushed to it first, each token with the server's log-probability for the importance correction;
3. reward: each completion checked by its prompt's verifier (rewards.py), plus DAPO's overlong shaping;
   with dynamic sampling, groups whose rewards are all equal are dropped and more prompts drawn, up to a cap;
4. advantages: group-relative (advantages.py);
5. pack: prompt + completion sequences, best-fit into rows (no padding rows), position ids restarting per
   sequence; only completion tokens have labels; truncated completions and zero-variance groups can be left
   out of the loss, and are then left out of the rows (trained_only);
6. score: the reference's log-probability of every completion token and, when several updates share the batch,
   the old policy's, with the trainer's own forward, so the first update's ratio is exactly 1; the old policy's
   entropy picks the top-entropy tokens when only those are trained.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from granite_cli.data.packing import best_fit
from granite_cli.training import IGNORE
from stages.rl.advantages import group_advantages, overlong_penalty
from stages.rl.prompts import Prompt


@dataclass
class RolloutSettings:
    samples_per_prompt: int
    prompts_per_step: int
    max_new_tokens: int
    temperature: float
    top_p: float
    updates_per_batch: int
    pack_len: int              # the row length sequences are packed into (the stage's max context)
    rows_multiple: int         # mini-batch rows are padded to a multiple of this (the number of processes)
    seed: int
    normalisation: str = "dapo"
    scale_rewards: bool = True
    overlong_buffer: int = 0
    overlong_penalty: float = 1.0
    dynamic_sampling: bool = False
    max_draws: int = 3
    mask_truncated: bool = False
    skip_zero_variance: bool = False
    top_entropy: float = 1.0
    reference: bool = True


@dataclass
class Group:
    prompt: Prompt
    completions: list        # model.generation.Completion
    rewards: list[float]     # the verifiers' rewards
    shaped: list[float]      # with the overlong penalty: what the advantages are taken from


@dataclass
class Sequence:
    ids: np.ndarray
    prompt_len: int
    advantage: float
    trained: bool
    sampler_logprobs: Optional[np.ndarray] = None  # the rollout server's, one per completion token (NaN: not given)


class Rollouts:
    def __init__(self, prompts: list[Prompt], settings: RolloutSettings, rewarder, eos_id: int, pad_id: int):
        self.prompts, self.s, self.rewarder, self.eos_id, self.pad_id = prompts, settings, rewarder, eos_id, pad_id
        self.trainer = self.engine = self.server = None
        self.tokenizer_dir: Optional[Path] = None
        self._rollout, self._minibatches = -1, []
        self._metrics: dict = {}
        self._order: dict[int, np.ndarray] = {}
        self._rolled_at, self._update_tokens = 0.0, 0

    def attach(self, trainer, engine, server=None, tokenizer_dir: Optional[Path] = None) -> None:
        """The trainer whose policy samples and scores, and the engine that generates with it; or a rollout server
        (server.py) that samples instead, pushed the policy's weights (a checkpoint with the tokenizer in
        `tokenizer_dir`) before each rollout step."""
        self.trainer, self.engine, self.server, self.tokenizer_dir = trainer, engine, server, tokenizer_dir

    # ------------------------------------------------------------------ the trainer's side
    def batch(self, step: int) -> dict:
        rollout, update = divmod(step, self.s.updates_per_batch)
        if rollout != self._rollout:
            self._minibatches, self._rollout = self.roll(rollout), rollout
        return self._minibatches[update]

    def report(self) -> dict:
        """The latest rollout step's metrics, with the time its updates took (asked for when the trainer logs)."""
        seconds = time.perf_counter() - self._rolled_at
        return {**self._metrics, "seconds_update": seconds, "training_tokens_per_second": self._update_tokens / max(seconds, 1e-9)}

    # ------------------------------------------------------------------ one rollout step
    def roll(self, step: int) -> list[dict]:
        started = time.perf_counter()
        groups, timing, draws = self.sample_groups(step)
        advantages, zero_variance = group_advantages(np.array([g.shaped for g in groups]), self.s.scale_rewards)
        sequences = [self.sequence(group, completion, advantages[g, c], bool(zero_variance[g]))
                     for g, group in enumerate(groups) for c, completion in enumerate(group.completions)]
        order = np.random.default_rng([self.s.seed, step, 2]).permutation(len(sequences))
        scored_at = time.perf_counter()
        minibatches = [self.pack(*trained_only([sequences[i] for i in part]))
                       for part in np.array_split(order, self.s.updates_per_batch)]
        self.score_old_and_reference(minibatches)
        timing["seconds_scoring"] = time.perf_counter() - scored_at
        self._metrics = self.metrics(groups, zero_variance, timing, draws, minibatches)
        self._metrics["seconds_rollout"] = time.perf_counter() - started
        self._update_tokens = sum(int(mb["input_ids"].numel()) for mb, _ in minibatches)
        self._rolled_at = time.perf_counter()
        return [mb for mb, _ in minibatches]

    def step_prompts(self, step: int) -> list[Prompt]:
        """The step's prompts: positions step*P .. step*P+P-1 of a seeded order of the pool, a new order per pass."""
        n, chosen = len(self.prompts), []
        for position in range(step * self.s.prompts_per_step, (step + 1) * self.s.prompts_per_step):
            epoch = position // n
            if epoch not in self._order:
                self._order = {epoch: np.random.default_rng([self.s.seed, epoch, 1]).permutation(n)}
            chosen.append(self.prompts[self._order[epoch][position % n]])
        return chosen

    def sample_groups(self, step: int) -> tuple[list[Group], dict, int]:
        """The step's groups, with dynamic sampling's extra draws when it is on; (groups, seconds by phase, prompts drawn)."""
        timing = {"seconds_generation": 0.0, "seconds_reward": 0.0, "generated_tokens": 0, "failures": Counter()}
        if self.server:
            timing["seconds_weight_push"] = self.server.sync(self.trainer, self.tokenizer_dir)
        groups = self.generate(self.step_prompts(step), self.sampling_seed(step, 0), timing)
        drawn = len(groups)
        if not self.s.dynamic_sampling:
            return groups, timing, drawn
        kept = [g for g in groups if len(set(g.shaped)) > 1]
        for attempt in range(1, self.s.max_draws):
            if len(kept) >= self.s.prompts_per_step:
                break
            rng = np.random.default_rng([self.s.seed, step, 3, attempt])
            extra = [self.prompts[i] for i in rng.choice(len(self.prompts), self.s.prompts_per_step,
                                                         replace=len(self.prompts) < self.s.prompts_per_step)]
            more = self.generate(extra, self.sampling_seed(step, attempt), timing)
            drawn += len(more)
            kept += [g for g in more if len(set(g.shaped)) > 1]
        # short of a full batch after the cap: train on what varies; nothing varies: the groups as drawn (KL only)
        return (kept[:self.s.prompts_per_step] or groups), timing, drawn

    def sampling_seed(self, step: int, attempt: int) -> int:
        return int(np.random.SeedSequence([self.s.seed, step, attempt]).generate_state(1)[0])

    def generate(self, prompts: list[Prompt], seed: int, timing: dict) -> list[Group]:
        from model.generation import Request, Sampling

        sampling = Sampling(max_new_tokens=self.s.max_new_tokens, temperature=self.s.temperature, top_p=self.s.top_p,
                            seed=seed, n=self.s.samples_per_prompt)
        started = time.perf_counter()
        if self.server:
            results = self.server.generate([p.ids for p in prompts], sampling)
        else:
            model = self.engine.model
            was_training = model.training
            model.eval()
            with self.trainer.autocast():
                results = self.engine.generate([Request(messages=p.messages, tools=p.tools, sampling=sampling) for p in prompts])
            model.train(was_training)
        rewarded = time.perf_counter()
        texts = [c.text for completions in results for c in completions]
        rewards, failures = self.rewarder.score([p for p, completions in zip(prompts, results) for _ in completions], texts)
        timing["seconds_generation"] += rewarded - started
        timing["seconds_reward"] += time.perf_counter() - rewarded
        timing["generated_tokens"] += sum(len(c.token_ids) for completions in results for c in completions)
        timing["failures"].update(failures)
        groups, g = [], self.s.samples_per_prompt
        for i, (prompt, completions) in enumerate(zip(prompts, results)):
            raw = rewards[i * g:(i + 1) * g]
            shaped = [r + overlong_penalty(len(c.token_ids), self.s.max_new_tokens, self.s.overlong_buffer,
                                           self.s.overlong_penalty) for r, c in zip(raw, completions)]
            groups.append(Group(prompt, completions, raw, shaped))
        return groups

    def sequence(self, group: Group, completion, advantage: float, zero_variance: bool) -> Sequence:
        """Prompt + completion ids (the end-of-text token included when the model ended the answer itself)."""
        ids = list(completion.token_ids) + ([self.eos_id] if completion.finish_reason == "stop" else [])
        trained = not (self.s.mask_truncated and completion.finish_reason == "length")
        trained = trained and not (self.s.skip_zero_variance and zero_variance)
        sampler = None
        if self.server:  # the server's log-probability of each trained token; the appended end token's may be missing
            sampler = np.full(len(ids), np.nan, dtype=np.float32)
            given = np.array(completion.logprobs[:len(ids)], dtype=np.float32)
            sampler[:len(given)] = given
        return Sequence(np.array(group.prompt.ids + ids, dtype=np.int64), len(group.prompt.ids), float(advantage), trained,
                        sampler)

    def pack(self, sequences: list[Sequence], left_out: int = 0) -> tuple[dict, list[tuple[int, int, int]]]:
        """A mini-batch of packed rows, and each sequence's (row, first, last+1) span of trained positions. `left_out`
        completions that are not packed (trained_only) are counted in the first row's `sequences`, so dr_grpo's
        denominator (completions x max new tokens) is what it would be with them packed."""
        import torch

        lengths = [len(s.ids) for s in sequences]
        rows = best_fit(lengths, self.s.pack_len, np.arange(len(sequences)))
        n_rows = math.ceil(len(rows) / self.s.rows_multiple) * self.s.rows_multiple
        width = max(sum(lengths[i] for i in row) for row in rows)  # rows as long as the fullest, not pack_len
        ids = np.full((n_rows, width), self.pad_id, dtype=np.int64)
        labels = np.full((n_rows, width), IGNORE, dtype=np.int64)
        positions = np.tile(np.arange(width, dtype=np.int64), (n_rows, 1))
        advantages = np.zeros((n_rows, width), dtype=np.float32)
        mask = np.zeros((n_rows, width), dtype=np.float32)
        count = np.zeros(n_rows, dtype=np.float32)
        sampled = np.full((n_rows, width), np.nan, dtype=np.float32) if self.server else None
        spans = []
        for r, row in enumerate(rows):
            start = 0
            for i in row:
                s, n = sequences[i], lengths[i]
                ids[r, start:start + n] = s.ids
                positions[r, start:start + n] = np.arange(n)
                first, last = start + s.prompt_len - 1, start + n - 1  # positions whose next token is the completion's
                labels[r, first:last] = s.ids[s.prompt_len:]
                advantages[r, first:last] = s.advantage
                mask[r, first:last] = float(s.trained)
                if sampled is not None:
                    sampled[r, first:last] = s.sampler_logprobs
                count[r] += 1
                spans.append((r, first, last))
                start += n
            positions[r, start:] = np.arange(width - start)
        count[0] += left_out
        batch = {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels),
                 "position_ids": torch.from_numpy(positions), "advantages": torch.from_numpy(advantages),
                 "loss_mask": torch.from_numpy(mask), "sequences": torch.from_numpy(count)}
        if sampled is not None:
            batch["rollout_logprobs"] = torch.from_numpy(sampled)
        return batch, spans

    def score_old_and_reference(self, minibatches: list[tuple[dict, list]]) -> None:
        """Old (and reference) log-probabilities; the top-entropy mask; each token's weight and the trained counts."""
        import torch

        entropies = []
        # with one update per batch the loss takes the current log-probabilities as the old ones (objective.py),
        # unless the top-entropy mask needs the old policy's entropy
        old_policy = self.s.updates_per_batch > 1 or self.s.top_entropy < 1.0
        for batch, _ in minibatches:
            core = {k: batch[k] for k in ("input_ids", "labels", "position_ids")}
            if old_policy:
                batch["old_logprobs"], entropy = self.trainer.logprobs(core, entropy=True)
                entropies.append(entropy)
            if self.s.reference:
                batch["ref_logprobs"] = self.trainer.logprobs(core, reference=True)
        if self.s.top_entropy < 1.0:
            trained = torch.cat([e[b["loss_mask"] > 0] for (b, _), e in zip(minibatches, entropies)])
            if trained.numel():
                threshold = torch.quantile(trained, 1 - self.s.top_entropy)
                for (batch, _), entropy in zip(minibatches, entropies):
                    batch["loss_mask"] = batch["loss_mask"] * (entropy >= threshold).float()
        for batch, spans in minibatches:
            weight = torch.zeros_like(batch["loss_mask"])
            trained_sequences = torch.zeros_like(batch["sequences"])
            for r, first, last in spans:
                kept = float(batch["loss_mask"][r, first:last].sum())
                if kept:
                    trained_sequences[r] += 1
                    weight[r, first:last] = 1.0 / kept if self.s.normalisation == "grpo" else 1.0
            batch["token_weight"], batch["trained_sequences"] = weight, trained_sequences

    def metrics(self, groups: list[Group], zero_variance, timing: dict, drawn: int, minibatches) -> dict:
        rewards = np.array([r for g in groups for r in g.rewards])
        lengths = np.array([len(c.token_ids) for g in groups for c in g.completions])
        truncated = np.array([c.finish_reason == "length" for g in groups for c in g.completions])
        by_domain: dict[str, list[float]] = {}
        for g in groups:
            by_domain.setdefault(g.prompt.domain, []).extend(g.rewards)
        trained = sum(float(b["loss_mask"].sum()) for b, _ in minibatches)
        return {
            "reward": float(rewards.mean()), "reward_std": float(rewards.std()),
            **{f"reward/{domain}": float(np.mean(values)) for domain, values in sorted(by_domain.items())},
            "zero_variance_share": float(np.mean(zero_variance)), "prompts_drawn": drawn, "groups": len(groups),
            "length_mean": float(lengths.mean()), "length_max": int(lengths.max()), "truncated_share": float(truncated.mean()),
            "trained_tokens_in_batch": int(trained),
            "generation_tokens_per_second": timing["generated_tokens"] / max(timing["seconds_generation"], 1e-9),
            "seconds_generation": timing["seconds_generation"], "seconds_reward": timing["seconds_reward"],
            "seconds_scoring": timing["seconds_scoring"],
            **({"seconds_weight_push": timing["seconds_weight_push"]} if "seconds_weight_push" in timing else {}),
            **({"verifier_failures": dict(timing["failures"])} if timing["failures"] else {}),
        }


def trained_only(sequences: list[Sequence]) -> tuple[list[Sequence], int]:
    """The completions the loss trains, and how many were left out. A completion out of the loss (its group's rewards
    all equal with --skip-zero-variance, cut at the budget with --mask-truncated) adds nothing to it or its gradient,
    so packing it and scoring it with the policy and the reference is wasted work: with the recipe's 16 samples a tiny
    model's groups are all-equal 60-70% of the time. One is kept when none trains, so the step runs with a zero loss."""
    trained = [s for s in sequences if s.trained] or sequences[:1]
    return trained, len(sequences) - len(trained)
