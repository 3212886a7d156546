"""Code answers: the program in a model's answer, joined with its tests and run in the sandbox.

eval's code tasks (HumanEval, MBPP and their EvalPlus forms) and rl's code verifier both come here,
so a program is extracted and run one way. The `code` verifier record holds the tests to append
(`tests`: Python source that raises on failure) and optionally a `setup` to prepend and a `timeout`.
"""

from __future__ import annotations

import re

from granite_cli.verify.sandbox import Outcome, run_python

def code_program(item: dict, completion: str) -> str:
    """HumanEval's harness: prompt + completion, then the tests, then check(entry_point)."""
    return f"{item['prompt']}{completion}\n\n{item['test']}\n\ncheck({item['entry_point']})\n"


def extract_completion(item: dict, output: str) -> str:
    """A chat model answers with a fenced block holding the whole function: keep what follows the prompt's signature."""
    block = re.search(r"```(?:python)?\n(.*?)(?:```|$)", output, re.DOTALL)
    if not block:
        return output
    code = block.group(1)
    signature = f"def {item['entry_point']}("
    if signature in code:
        body = code[code.index(signature):]
        return body[body.index("\n") + 1:] if "\n" in body else ""
    return code


def mbpp_code(output: str) -> str:
    """The program in an MBPP answer: a fenced block if there is one, without the [BEGIN]/[DONE] markers."""
    block = re.search(r"```(?:python)?\n(.*?)(?:```|$)", output, re.DOTALL)
    code = block.group(1) if block else output
    return code.replace("[BEGIN]", "").split("[DONE]")[0].strip("\n")


def run_tests(response: str, verifier: dict) -> Outcome:
    """The answer's program (a fenced block if there is one), then the record's tests, in the sandbox."""
    program = "\n".join([verifier.get("setup", ""), mbpp_code(response), verifier["tests"]])
    return run_python(program, timeout=float(verifier.get("timeout", 10.0)))
