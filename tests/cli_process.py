"""Run `python -m granite_cli ARGS` as a real child process that starts with torch and transformers already imported.

A fresh interpreter spends seconds importing torch and transformers' model code before the CLI does anything, and
the suite runs the CLI well over a hundred times. Each run here is a process forked from a multiprocessing
forkserver that imported them once: it has its own pid, its own file descriptors 0/1/2 (files, not the test's),
its own working directory and environment, and ends with the CLI's exit status, so exit codes and the
stdout/stderr split are tested as users see them. Nothing that parallelises has run in the server before the
fork (importing does not start torch's thread pools). A test that kills a run mid-way uses `start` and `kill()`.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import subprocess
import sys
import tempfile
import traceback

PRELOAD = ["numpy", "tokenizers", "torch", "transformers", "transformers.models.granite.modeling_granite"]

_context = None


def run(args: list[str], input: bytes | None, cwd, env: dict) -> subprocess.CompletedProcess:
    """The CLI's exit status and its stdout and stderr bytes, as subprocess.run(capture_output=True) returns them;
    stdin holds `input` (empty when None: a test never waits on the terminal)."""
    with tempfile.TemporaryDirectory(prefix="granite-cli-") as tmp:
        paths = [os.path.join(tmp, name) for name in ("stdin", "stdout", "stderr")]
        with open(paths[0], "wb") as stdin:
            stdin.write(input or b"")
        child = start(args, cwd, env, *paths)
        child.join()
        with open(paths[1], "rb") as out, open(paths[2], "rb") as err:
            # a killed child's exitcode is minus the signal, as subprocess reports it
            return subprocess.CompletedProcess(["granite", *args], child.exitcode, out.read(), err.read())


def start(args: list[str], cwd, env: dict, stdin_path: str, stdout_path: str, stderr_path: str):
    """The CLI started in a child (a multiprocessing Process: `exitcode`, `kill()`, `join()`) on the given files."""
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    child = _context.Process(target=_main, args=(list(args), str(cwd) if cwd else None, env, stdin_path, stdout_path,
                                                 stderr_path))
    child.start()
    return child


def _main(args, cwd, env, stdin_path, stdout_path, stderr_path) -> None:
    """In the child: become `python -m granite_cli ARGS` on the given files, then exit with its status."""
    import runpy

    os.environ.clear()
    os.environ.update(env)
    if cwd:
        os.chdir(cwd)
    sys.stdout.flush()
    sys.stderr.flush()
    writing = os.O_WRONLY | os.O_CREAT
    for fd, path, flags in ((0, stdin_path, os.O_RDONLY), (1, stdout_path, writing), (2, stderr_path, writing)):
        opened = os.open(path, flags)
        os.dup2(opened, fd)
        os.close(opened)
    sys.stdin = open(0, closefd=False)  # multiprocessing pointed sys.stdin at /dev/null
    sys.argv = ["-m", *args]  # runpy puts the module's path in argv[0], as `python -m` does
    try:
        runpy.run_module("granite_cli", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as done:  # sys.exit(None | int | message), as the interpreter reports each
        if done.code is None or isinstance(done.code, int):
            code = done.code or 0
        else:
            print(done.code, file=sys.stderr)
            code = 1
    except BaseException:  # what the interpreter does with an uncaught exception
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
