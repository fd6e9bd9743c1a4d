"""Watching a target without acting on it (`reaper observe`), and the history file that keeps
what was learned between runs of the command line (`--history FILE`).

A history file names the target it was learned on; it is replaced atomically after every
snapshot, so an interrupted command leaves the last complete history behind. A missing file is
an empty history: losing it costs learning time (static thresholds apply meanwhile), never
safety.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from reaper.actions.files import read_text
from reaper.actions.report import read_snapshot
from reaper.core.history_document import parse_history, render_history
from reaper.core.reuse import History, observe
from reaper.errors import HistoryError
from reaper.pg.timeouts import DEFAULT_TIMEOUTS

if TYPE_CHECKING:
    from collections.abc import Callable

    from reaper.core.history_document import HistoryFile
    from reaper.core.reuse import Observation
    from reaper.pg.conninfo import ConnInfo
    from reaper.pg.timeouts import Timeouts


def history_source_name(path: Path) -> str:
    """How messages name a history read from `path`."""
    return f"history file {path}"


def read_history_file(path: Path, *, target: str) -> History:
    """The history of `target` in `path`; an empty one if the file does not exist.

    Raises:
        HistoryError: the file cannot be read, is not a history, or is another target's.
    """
    if not path.exists():
        return History()
    return _parse(path, target=target).history


def read_any_history_file(path: Path) -> HistoryFile:
    """The history in `path` and the target it names, whichever that is (`reaper advise`).

    Raises:
        HistoryError: there is no such file, or it cannot be read or is not a history.
    """
    if not path.exists():
        raise HistoryError(f"there is no {history_source_name(path)}")
    return _parse(path, target=None)


def _parse(path: Path, *, target: str | None) -> HistoryFile:
    source = history_source_name(path)
    text = read_text(path, described_as=source, error=HistoryError)
    return parse_history(text, source=source, target=target)


def write_history_file(path: Path, history: History, *, target: str) -> None:
    """Replace `path` with `history`, atomically: a reader sees the old file or the new one.

    Raises:
        HistoryError: the file cannot be written.
    """
    text = render_history(history, target=target)
    try:
        descriptor, scratch = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
        )
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
        Path(scratch).replace(path)
    except OSError as exc:
        raise HistoryError(
            f"cannot write {history_source_name(path)}: {exc.strerror or exc}"
        ) from exc


def observe_once(
    target: ConnInfo, history: History, *, timeouts: Timeouts = DEFAULT_TIMEOUTS
) -> Observation:
    """Take one snapshot of the target and learn from it; nothing is terminated.

    Raises:
        TargetUnreachableError: the database cannot be reached or refused the login.
        VisibilityError: the role cannot see other roles' sessions, so nothing can be learned.
        PassAbortedError: the database failed while the snapshot was read.
    """
    return observe(history, read_snapshot(target, timeouts=timeouts))


def observe_for(
    target: ConnInfo,
    history: History,
    *,
    interval_seconds: float,
    duration_seconds: float,
    on_snapshot: Callable[[Observation], None],
    timeouts: Timeouts = DEFAULT_TIMEOUTS,
) -> History:
    """Observe the target every `interval_seconds` for `duration_seconds` (at least once).

    Args:
        on_snapshot: told each observation as it is made (to save and print it).

    Returns:
        The history after the last snapshot.

    Raises:
        as `observe_once`; the history of the snapshots before the failure was handed to
        `on_snapshot` already.
    """
    started = time.monotonic()
    while True:
        observation = observe_once(target, history, timeouts=timeouts)
        history = observation.history
        on_snapshot(observation)
        next_at = started + interval_seconds * _snapshots_so_far(started, interval_seconds)
        if next_at > started + duration_seconds:
            return history
        time.sleep(max(0.0, next_at - time.monotonic()))


def _snapshots_so_far(started: float, interval_seconds: float) -> int:
    # On a fixed grid from the start, so a slow snapshot does not shift every later one.
    return int((time.monotonic() - started) // interval_seconds) + 1
