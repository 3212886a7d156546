"""Outputs that appear whole or not at all: every stage writes through these helpers.

A file or directory is written under a hidden sibling name and renamed onto its final name only
when complete, so an interrupted run never leaves something that looks finished. A resumable stage
(tokenize, the trainers) keeps its hidden `partial_directory` across runs and `publish`es it at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator


class OutputLock:
    """Hold `final` for one run: a second run writing the same output (a Slurm job submitted twice) is refused.

    An flock on `.NAME.lock` beside the output: the kernel releases it when the holder exits, however it
    exits, so a killed run never leaves it stuck. The file keeps the holder's pid for the message."""

    def __init__(self, final: Path):
        self.final = Path(final)
        self.path = self.final.with_name(f".{self.final.name}.lock")
        self.handle = None

    def __enter__(self) -> "OutputLock":
        import fcntl

        from granite_cli.errors import BadInput

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "?"
            self.handle.close()
            raise BadInput(f"another run (pid {holder}) is writing this output now; wait for it to end, or choose "
                           f"another output", str(self.final)) from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(str(os.getpid()))
        self.handle.flush()
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()  # closing releases the flock


def partial_directory(final: Path) -> Path:
    """Where a resumable stage builds `final`: `.NAME.partial` beside it."""
    return final.with_name(f".{final.name}.partial")


def publish(staged: Path, final: Path) -> None:
    """Rename a finished directory onto `final`; an older `final` is moved aside first and removed after."""
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(staged, final)
        shutil.rmtree(old)
    else:
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, final)


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside `final`; it becomes `final` only if the block succeeds."""
    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        publish(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`, renamed onto it only if the block succeeds.

    A `final` that exists but is no regular file (/dev/null, a named pipe) is yielded as it is and
    written in place: renaming a file onto it would replace the device itself.
    """
    final = Path(final)
    if final.exists() and not final.is_file():
        yield final
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
