"""Run untrusted model-written Python in a subprocess with limits: the code tasks of eval and the RL
code verifier share it.

Limits: wall time (the whole process group is killed), address space (RLIMIT_AS), CPU seconds,
file size, no core dumps, a fresh scratch directory as cwd that is deleted afterwards, a minimal
environment, and no network when `unshare --net` is available (it is, for root, on Linux). A fork
bomb is contained by the process-group kill at the deadline and by RLIMIT_NPROC where the user is
not root (root is exempt from it).
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

_UNSHARE = shutil.which("unshare")


@dataclass
class Outcome:
    passed: bool
    status: str  # "passed", "failed", "timeout", "error"
    detail: str = ""


def _limits(memory_mb: int, cpu_seconds: int, max_processes: int):
    def apply():
        os.setsid()
        memory = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024 * 1024, 16 * 1024 * 1024))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NPROC, (max_processes, max_processes))

    return apply


def network_isolated() -> bool:
    """Whether `unshare --net` works here (then sandboxed code has no network at all)."""
    if not _UNSHARE:
        return False
    return subprocess.run([_UNSHARE, "--net", "true"], capture_output=True).returncode == 0


_ISOLATE = None


def run_python(program: str, timeout: float = 10.0, memory_mb: int = 1024, max_processes: int = 64) -> Outcome:
    """Run `program` with `python -I`; it passes when it exits 0 within the limits."""
    global _ISOLATE
    if _ISOLATE is None:
        _ISOLATE = network_isolated()
    scratch = tempfile.mkdtemp(prefix="granite-sandbox-")
    command = [sys.executable, "-I", "-c", program]
    if _ISOLATE:
        command = [_UNSHARE, "--net", *command]
    env = {"PATH": "/usr/bin:/bin", "HOME": scratch, "TMPDIR": scratch, "PYTHONHASHSEED": "0", "LANG": "C.UTF-8"}
    try:
        proc = subprocess.Popen(command, cwd=scratch, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, preexec_fn=_limits(memory_mb, int(timeout) + 1, max_processes))
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.communicate()
            return Outcome(False, "timeout", f"no result within {timeout:g}s")
        _kill_group(proc)  # leftovers a program forked and left running
        if proc.returncode == 0:
            return Outcome(True, "passed")
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        return Outcome(False, "failed", tail[0][:500])
    except OSError as err:
        return Outcome(False, "error", str(err))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _kill_group(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
