"""Plain values describing what the server showed at one instant: sessions and connection limits.

The engine fills these from one query; the planner and the census read them. No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datetime import datetime

CLIENT_BACKEND = "client backend"


@dataclass(frozen=True, slots=True)
class Session:
    """One row of pg_stat_activity, with what the reaper's role may do to it."""

    pid: int
    backend_start: datetime | None
    backend_type: str | None
    user: str | None
    database: str | None
    application_name: str
    client_addr: str | None
    state: str | None
    state_change: datetime | None
    is_superuser: bool
    # The last statement was LISTEN: idle, but waiting for notifications.
    is_listening: bool
    # The reaper's role holds the privilege to signal this backend (same role, pg_signal_backend,
    # and not a superuser's backend unless the reaper is one).
    may_signal: bool

    def idle_seconds(self, now: datetime) -> float | None:
        """Seconds since the last state change, for idle states only; None otherwise."""
        if self.state_change is None or self.state is None or not self.state.startswith("idle"):
            return None
        return max(0.0, (now - self.state_change).total_seconds())


@dataclass(frozen=True, slots=True)
class ConnectionPicture:
    """How full the server is: client connections against the slots ordinary roles may use."""

    client_connections: int
    max_connections: int
    superuser_reserved_connections: int
    # reserved_connections exists from PostgreSQL 16; 0 before.
    reserved_connections: int

    @property
    def usable_connections(self) -> int:
        """Slots for ordinary roles: max_connections minus both reserves (at least 1)."""
        return max(
            1,
            self.max_connections - self.superuser_reserved_connections - self.reserved_connections,
        )

    def utilization(self, client_connections: int | None = None) -> float:
        """Client connections (now, or the number given) as a fraction of the usable slots."""
        count = self.client_connections if client_connections is None else client_connections
        return count / self.usable_connections


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one pass decides from, read in a single statement."""

    taken_at: datetime
    own_pid: int
    role: str
    role_is_superuser: bool
    # False when the role lacks pg_read_all_stats (pg_monitor): other roles' sessions then show
    # NULL state and backend_type, so idle cannot be told from active.
    role_sees_all_sessions: bool
    server_version_num: int
    connections: ConnectionPicture
    sessions: tuple[Session, ...]

    @property
    def hidden_sessions(self) -> tuple[Session, ...]:
        """Sessions whose state the role is not allowed to see."""
        return tuple(s for s in self.sessions if s.backend_type is None)
