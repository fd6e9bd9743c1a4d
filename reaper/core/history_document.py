"""A reuse history as a JSON document: the CLI's history file (`--history FILE`). Pure.

Parsed strictly, like a policy: unknown keys, a wrong version, naive timestamps or a value of the
wrong type are refused with the field named, never guessed at. The document names the target it
was learned on, so one target's history is never applied to another.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from reaper.core.reuse import History, Period, PeriodOutcome, Sighting
from reaper.core.validation import describe_validation_error
from reaper.errors import HistoryError

if TYPE_CHECKING:
    from datetime import datetime

HISTORY_VERSION = 1


class _Document(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Session(_Document):
    pid: int
    backend_start: AwareDatetime
    application: str
    state: str | None
    state_change: AwareDatetime | None


class _Group(_Document):
    application: str
    state: str
    # [seen_idle_seconds, outcome, reused_within_seconds or null], oldest first.
    periods: tuple[tuple[float, PeriodOutcome, float | None], ...]


class _HistoryDocument(_Document):
    version: Literal[1]
    target: str
    observed_at: AwareDatetime | None
    sessions: tuple[_Session, ...] = ()
    groups: tuple[_Group, ...] = ()
    sessions_seen: dict[str, int] = Field(default_factory=dict)
    terminated: tuple[tuple[int, AwareDatetime], ...] = ()


def render_history(history: History, *, target: str) -> str:
    """The history as the JSON text of a history file, naming the target it belongs to."""
    document = {
        "version": HISTORY_VERSION,
        "target": target,
        "observed_at": _time(history.observed_at),
        "sessions": [
            {
                "pid": pid,
                "backend_start": _time(backend_start),
                "application": sighting.application,
                "state": sighting.state,
                "state_change": _time(sighting.state_change),
            }
            for (pid, backend_start), sighting in history.sessions.items()
        ],
        "groups": [
            {
                "application": application,
                "state": state,
                "periods": [
                    [period.seen_idle_seconds, period.outcome.value, period.reused_within_seconds]
                    for period in periods
                ],
            }
            for (application, state), periods in history.periods.items()
        ],
        "sessions_seen": dict(history.sessions_seen),
        "terminated": [[pid, _time(started)] for pid, started in sorted(history.terminated)],
    }
    return json.dumps(document, separators=(",", ":")) + "\n"


@dataclass(frozen=True, slots=True)
class HistoryFile:
    """A history file's content: the target it was learned on, and the history."""

    target: str
    history: History


def parse_history(text: str | bytes, *, source: str, target: str | None) -> HistoryFile:
    """The history in a history file's text.

    Args:
        text: the document.
        source: how messages name the file.
        target: the printable name of the target it is used on, which must be the one the
            document names; None accepts any target's history.

    Raises:
        HistoryError: not a history document (the field at fault named), or another target's.
    """
    try:
        document = _HistoryDocument.model_validate_json(text, strict=True)
    except ValidationError as exc:
        raise HistoryError(
            f"invalid history in {source}: {describe_validation_error(exc)}; remove the file to "
            "start learning again"
        ) from exc
    if target is not None and document.target != target:
        raise HistoryError(
            f"{source} holds the history of {document.target}, not of {target}; give each "
            "target a history file of its own"
        )
    history = History(
        observed_at=document.observed_at,
        sessions={
            (s.pid, s.backend_start): Sighting(s.application, s.state, s.state_change)
            for s in document.sessions
        },
        periods={
            (group.application, group.state): tuple(
                Period(seen, outcome, within) for seen, outcome, within in group.periods
            )
            for group in document.groups
        },
        sessions_seen=dict(document.sessions_seen),
        terminated=frozenset(document.terminated),
    )
    return HistoryFile(document.target, history)


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
