"""Rewards: each completion checked by its prompt's verifier (granite_cli/verify), many at once.

Checkers that run programs (code in the sandbox, SQL on the prompt's database) wait on a subprocess or sqlite,
so they overlap in threads. A checker that raises, or has not answered `timeout` seconds after it was waited
for, gives reward 0 and is counted by reason: a bad completion or a broken checker never stops the run.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from granite_cli.verify import verify


def score(texts: list[str], verifiers: list[dict], workers: int, timeout: float) -> tuple[list[float], Counter]:
    """(reward in [0, 1] per completion, {failure reason: count})."""
    failures: Counter = Counter()
    rewards: list[float] = []
    pool = ThreadPoolExecutor(max(1, workers))
    try:
        futures = [pool.submit(verify, text, verifier) for text, verifier in zip(texts, verifiers)]
        for future, verifier in zip(futures, verifiers):
            try:
                rewards.append(float(future.result(timeout=timeout).score))
            except FutureTimeout:
                failures[f"{verifier['type']}: timeout"] += 1
                rewards.append(0.0)
            except Exception as err:  # a checker's bug or a completion it cannot read: reward 0, counted
                failures[f"{verifier['type']}: {type(err).__name__}"] += 1
                rewards.append(0.0)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # a hung checker does not hold the step
    return rewards, failures
