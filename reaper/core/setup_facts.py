"""What the reaper's own connection found out about its role and the server: the doctor's input.

A plain value, read by the gateway (`gateway.read_setup_facts`) and judged by `core.checks`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from reaper.core.versions import major_of

if TYPE_CHECKING:
    from reaper.core.pass_lock import PassLock


@dataclass(frozen=True, slots=True)
class SetupFacts:
    """What the reaper's own connection found out about its role and the server."""

    role: str
    server_version_num: int
    is_superuser: bool
    # Member of RDS's rds_superuser (False where that role does not exist).
    is_rds_superuser: bool
    # pg_read_all_stats (through pg_monitor): sees other roles' session states.
    sees_all_sessions: bool
    # pg_signal_backend: may terminate other (non-superuser) roles' sessions.
    may_signal_others: bool
    # pg_use_reserved_connections; None before PostgreSQL 16, where it does not exist.
    may_use_reserved_connections: bool | None
    max_connections: int
    superuser_reserved_connections: int
    reserved_connections: int
    # The role's own CONNECTION LIMIT; -1 for none.
    role_connection_limit: int
    # statement_timeout set on the role (ALTER ROLE ... SET), None when not set.
    role_statement_timeout: str | None
    # Other login roles, neither superusers nor managed by RDS, without a CONNECTION LIMIT.
    uncapped_login_roles: tuple[str, ...]
    # The sum of the CONNECTION LIMITs of the other login roles that have one.
    capped_login_connections: int
    # The libpq sslmode of the connection, and the TLS version in use (None: no TLS).
    sslmode: str
    tls_version: str | None
    # The server as libpq names it (the host the connection went to; a directory for a Unix
    # socket): whether an unverified connection leaves the machine.
    host: str
    # Who holds the pass lock now (another pass, or a squatter); None when not read.
    pass_lock: PassLock | None = None

    @property
    def major(self) -> int:
        """The server's major version."""
        return major_of(self.server_version_num)

    @property
    def usable_connections(self) -> int:
        """Slots for roles that may not use any reserve."""
        return (
            self.max_connections - self.superuser_reserved_connections - self.reserved_connections
        )
