"""Plain values describing what the server showed at one instant: sessions and connection limits.

The engine fills these from one query; the planner and the census read them. No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datetime import datetime

CLIENT_BACKEND = "client backend"


@dataclass(frozen=True, slots=True)
class SessionIdentity:
    """Who a session is, as results and logs show it."""

    pid: int
    user: str | None
    database: str | None
    application_name: str
    client_addr: str | None
    state: str | None

    def identity(self) -> dict[str, Any]:
        """These fields as keyword arguments, to describe the same session elsewhere."""
        return {name: getattr(self, name) for name in _IDENTITY_FIELDS}


_IDENTITY_FIELDS = tuple(field.name for field in fields(SessionIdentity))


@dataclass(frozen=True, slots=True)
class Session(SessionIdentity):
    """One row of pg_stat_activity, with what the reaper's role may do to it."""

    backend_start: datetime | None
    backend_type: str | None
    state_change: datetime | None
    is_superuser: bool
    # The last statement was LISTEN: idle, but waiting for notifications.
    is_listening: bool
    # The reaper's role holds the privilege to signal this backend (same role, pg_signal_backend,
    # and not a superuser's backend unless the reaper is one).
    may_signal: bool
    # When the last (or the running) statement started: between two snapshots it bounds when an
    # idle session was used again (core/reuse.py). Defaulted, so builders that predate it work.
    query_start: datetime | None = None

    def idle_seconds(self, now: datetime) -> float | None:
        """Seconds since the last state change, for idle states only; None otherwise."""
        if self.state_change is None or self.state is None or not self.state.startswith("idle"):
            return None
        return max(0.0, (now - self.state_change).total_seconds())


@dataclass(frozen=True, slots=True)
class Connections:
    """How full the server is: client connections against the slots ordinary roles may use.

    `client_connections` counts client backends other than the reaper's own, as the census
    lists them. The snapshot holds the picture before a pass (`terminated` 0); a pass result
    holds the same picture with the number it terminated, so both utilizations can be told.
    `to_dict()` is the `connections` object of `reaper run --json` and of the handler's summary.
    """

    client_connections: int
    max_connections: int
    # PostgreSQL's own two settings: superusers' reserve, and (16+) the reserve of roles granted
    # pg_use_reserved_connections; 0 where the server has no such setting.
    superuser_reserved_connections: int
    reserved_connections: int
    terminated: int = 0

    @property
    def usable_connections(self) -> int:
        """Slots for ordinary roles: max_connections minus both reserves (at least 1)."""
        return max(
            1,
            self.max_connections - self.superuser_reserved_connections - self.reserved_connections,
        )

    @property
    def utilization_before(self) -> float:
        """The share of the usable slots taken at the snapshot, at most 1.

        Clients beyond the usable slots are sessions of roles that may use a reserve (a
        superuser's): the usable slots are then all taken, not more than taken.
        """
        return min(1.0, self.client_connections / self.usable_connections)

    @property
    def utilization_after(self) -> float:
        """The same after the pass's terminations."""
        return min(1.0, (self.client_connections - self.terminated) / self.usable_connections)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: the counts and both utilizations."""
        return {
            "client_connections": self.client_connections,
            "max_connections": self.max_connections,
            "superuser_reserved_connections": self.superuser_reserved_connections,
            "reserved_connections": self.reserved_connections,
            "usable_connections": self.usable_connections,
            "utilization_before": self.utilization_before,
            "utilization_after": self.utilization_after,
        }


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one pass decides from, read in a single statement."""

    taken_at: datetime
    own_pid: int
    role: str
    server_version_num: int
    connections: Connections
    sessions: tuple[Session, ...]
    # The reaper's own role is a superuser (it needs far less: docs/database-role.md).
    role_is_superuser: bool = False

    @property
    def hidden_sessions(self) -> tuple[Session, ...]:
        """Sessions whose state the role is not allowed to see."""
        return tuple(s for s in self.sessions if s.backend_type is None)

    @property
    def other_clients(self) -> tuple[Session, ...]:
        """Client backends other than the reaper's own: what a census counts."""
        return tuple(
            s for s in self.sessions if s.backend_type == CLIENT_BACKEND and s.pid != self.own_pid
        )
