"""Rewards: each completion checked by its prompt's verifier (granite_cli/verify), or scored by the reward model.

Checkers that run programs (code in the sandbox, SQL on the prompt's database) wait on a subprocess or sqlite,
so they overlap in threads. A checker that raises, or has not answered `timeout` seconds after it was waited
for, gives reward 0 and is counted by reason: a bad completion or a broken checker never stops the run.
Prompts whose verifier is `reward_model` (chat) are scored together in batches by the stage's reward model
(model/reward_model.py): sigmoid(score - offset), in [0, 1] like every checker's reward.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Optional

from granite_cli.verify import verify


@dataclass
class Rewarder:
    workers: int = 4
    timeout: float = 30.0
    reward_model: Optional[object] = None  # model.reward_model.RewardScorer

    def score(self, prompts: list, texts: list[str]) -> tuple[list[float], Counter]:
        """(reward in [0, 1] per completion, {failure reason: count}); `prompts[i]` is the prompt `texts[i]` answers."""
        judged = [i for i, p in enumerate(prompts) if p.verifier["type"] == "reward_model"]
        if judged and self.reward_model is None:
            raise ValueError("reward-model prompts reached a stage without a reward model")
        rewards = [0.0] * len(texts)
        checked = [i for i, p in enumerate(prompts) if p.verifier["type"] != "reward_model"]
        scores, failures = self.check([texts[i] for i in checked], [prompts[i].verifier for i in checked])
        for i, value in zip(checked, scores):
            rewards[i] = value
        if judged:
            for i, value in zip(judged, self.reward_model.rewards([prompts[i].messages for i in judged], [texts[i] for i in judged])):
                rewards[i] = value
        return rewards, failures

    def check(self, texts: list[str], verifiers: list[dict]) -> tuple[list[float], Counter]:
        """The verifiers' rewards, in threads; a raising or timed-out checker gives 0, counted."""
        failures: Counter = Counter()
        rewards: list[float] = []
        pool = ThreadPoolExecutor(max(1, self.workers))
        try:
            futures = [pool.submit(verify, text, verifier) for text, verifier in zip(texts, verifiers)]
            for future, verifier in zip(futures, verifiers):
                try:
                    rewards.append(float(future.result(timeout=self.timeout).score))
                except FutureTimeout:
                    failures[f"{verifier['type']}: timeout"] += 1
                    rewards.append(0.0)
                except Exception as err:  # a checker's bug or a completion it cannot read: reward 0, counted
                    failures[f"{verifier['type']}: {type(err).__name__}"] += 1
                    rewards.append(0.0)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)  # a hung checker does not hold the step
        return rewards, failures
