"""The census behind `reaper report`: connections grouped, aged and bucketed. Pure."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from reaper.core.snapshot import CLIENT_BACKEND

if TYPE_CHECKING:
    from reaper.core.snapshot import Snapshot

# Idle-age buckets (upper bounds in seconds) for the per-application histogram: a minute, the
# usual Lambda freeze window, the 15-minute maximum function duration, an hour.
HISTOGRAM_BOUNDS: tuple[tuple[str, float], ...] = (
    ("<1m", 60.0),
    ("1-5m", 300.0),
    ("5-15m", 900.0),
    ("15-60m", 3600.0),
    (">1h", float("inf")),
)


@dataclass(frozen=True, slots=True)
class Group:
    """Client sessions sharing application, user, database and state."""

    application_name: str
    user: str | None
    database: str | None
    state: str | None
    count: int
    oldest_idle_seconds: float | None


@dataclass(frozen=True, slots=True)
class Census:
    """Who holds the server's connections, and for how long they have been idle."""

    client_connections: int
    max_connections: int
    usable_connections: int
    utilization: float
    other_backends: int
    groups: tuple[Group, ...]
    idle_histogram: dict[str, dict[str, int]]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def take_census(snapshot: Snapshot) -> Census:
    """Group the snapshot's client sessions; the reaper's own backend is left out."""
    now = snapshot.taken_at
    clients = snapshot.other_clients
    grouped: dict[tuple[str, str | None, str | None, str | None], list[float | None]] = {}
    histogram: dict[str, dict[str, int]] = {}
    for session in clients:
        key = (session.application_name, session.user, session.database, session.state)
        age = session.idle_seconds(now)
        grouped.setdefault(key, []).append(age)
        if age is not None:
            buckets = histogram.setdefault(
                session.application_name, dict.fromkeys((label for label, _ in HISTOGRAM_BOUNDS), 0)
            )
            label = next(label for label, bound in HISTOGRAM_BOUNDS if age < bound)
            buckets[label] += 1
    groups = tuple(
        Group(
            application_name=application,
            user=user,
            database=database,
            state=state,
            count=len(ages),
            oldest_idle_seconds=max((a for a in ages if a is not None), default=None),
        )
        for (application, user, database, state), ages in sorted(
            grouped.items(), key=lambda item: (-len(item[1]), str(item[0]))
        )
    )
    picture = snapshot.connections
    return Census(
        client_connections=picture.client_connections,
        max_connections=picture.max_connections,
        usable_connections=picture.usable_connections,
        utilization=picture.utilization_before,
        other_backends=sum(1 for s in snapshot.sessions if s.backend_type != CLIENT_BACKEND),
        groups=groups,
        idle_histogram=dict(sorted(histogram.items())),
    )
