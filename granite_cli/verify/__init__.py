"""Verifiers: one registry of answer checkers for eval and rl, picked by a record's `verifier.type`.

    verify(response, {"type": "numeric", "answer": 42}) -> Verdict(score, reason, extracted)
    verify_batch(responses, verifiers, workers=4)        -> [Verdict, ...] in order

Every checker has the signature (response text, verifier record) -> Verdict with a score in [0, 1].
Kinds: numeric, math (math-verify's equivalence), exact, multiple_choice, constraints (the bundled
instruction tasks), json_schema, sql, identity and abstain (granite_cli/verify/answers.py); ifeval (IFEval's 25 instruction types, ifeval.py); bfcl
(function-call AST match, bfcl.py); code (a program's tests in the sandbox, code.py). A record of type
reward_model (rl's chat prompts) is scored by the stage's reward model, which needs the prompt as well as
the answer (stages/rl/rewards.py): here it is an error, never a silent zero.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from granite_cli.errors import BadInput
from granite_cli.verify.answers import CHECKERS, Verdict

def _ifeval(response: str, verifier: dict) -> Verdict:
    from granite_cli.verify import ifeval

    metrics = ifeval.score(verifier, response)
    return Verdict(metrics["prompt_level_strict"], metrics["reason"])


def _bfcl(response: str, verifier: dict) -> Verdict:
    from granite_cli.verify import bfcl

    result = bfcl.score(verifier, response)
    return Verdict(result["accuracy"], result["reason"])


def _code(response: str, verifier: dict) -> Verdict:
    from granite_cli.verify.code import run_tests

    outcome = run_tests(response, verifier)
    return Verdict(float(outcome.passed), outcome.status + (f": {outcome.detail}" if outcome.detail else ""))


def _reward_model(response: str, verifier: dict) -> Verdict:
    raise BadInput("verifier type 'reward_model' is scored by a reward model with the prompt, not by a checker: `granite rl` "
                   "scores it with the model `granite rl reward-model` trains")


VERIFIERS: dict[str, Callable[[str, dict], Verdict]] = {
    **CHECKERS, "ifeval": _ifeval, "bfcl": _bfcl, "code": _code, "reward_model": _reward_model,
}


def verify(response: str, verifier: dict) -> Verdict:
    kind = verifier.get("type")
    if kind not in VERIFIERS:
        raise BadInput(f"no checker for verifier type {kind!r} (known: {', '.join(VERIFIERS)})")
    return VERIFIERS[kind](response, verifier)


def verify_batch(responses: list[str], verifiers: list[dict], workers: int = 4) -> list[Verdict]:
    """Verdicts in order; checkers that run programs (code, sql) overlap in threads, since each waits on a subprocess or sqlite."""
    if len(responses) != len(verifiers):
        raise ValueError("one verifier record per response")
    with ThreadPoolExecutor(max(1, workers)) as pool:
        return list(pool.map(verify, responses, verifiers))
