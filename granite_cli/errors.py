"""Errors a stage raises, mapped to the exit statuses of docs/design.md (2: bad usage or input, 1: failure)."""

from __future__ import annotations


class GraniteError(Exception):
    """A failure while running: exit status 1."""

    exit_code = 1


class ReaderGone(Exception):
    """The reader of stdout left (`granite mix | head`): the documented end is a quiet exit 0.

    Not an OSError: Click turns a broken pipe (EPIPE) that reaches it into exit status 1."""


class BadInput(GraniteError):
    """Bad usage or bad input: exit status 2. Names the file and line where there is one."""

    exit_code = 2

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        self.path = path
        self.line = line
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)
