"""Standard output for commands whose reader may go away (`reaper report --json | head`).

When the reader of a pipe exits, the next write raises BrokenPipeError; without care that is a
traceback on stderr, from `print`, from a log line of `reaper invoke` or from the interpreter's
last flush. Every command runs inside `reader_may_leave()`: the first broken write points
stdout at /dev/null, and the command goes on to its own exit code (a pass that ran still
reports it).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from collections.abc import Iterator


class _ReaderMayLeave(io.TextIOBase):
    """A stdout that swallows the broken pipe of a reader that went away."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._reader_left()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._reader_left()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    def _reader_left(self) -> None:
        # Later writes, and the interpreter's flush at exit, then go nowhere without failing.
        with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)


@contextlib.contextmanager
def reader_may_leave() -> Iterator[None]:
    """Run a command with a stdout whose reader may go away (see the module's docstring)."""
    original = sys.stdout
    sys.stdout = _ReaderMayLeave(original)
    try:
        yield
    finally:
        with contextlib.suppress(BrokenPipeError):
            sys.stdout.flush()
        sys.stdout = original
