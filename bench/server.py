"""A throwaway PostgreSQL prepared for the benchmark: room for the sessions and three roles.

- the bootstrap superuser (`postgres`): administers, and owns one spared session;
- `bench_reaper`: the reaper's least-privilege role (docs/database-role.md: pg_monitor and
  pg_signal_backend), used by the reaper *and* by the bare statement, so both do the same job
  with the same rights;
- `bench_app`: the simulated Lambda applications.

Logins of `bench_app` are made cheap on purpose: its SCRAM verifier uses 1 PBKDF2 iteration
instead of 4,096. SCRAM's key stretching costs both client and server a few milliseconds per
login, and the benchmark opens tens of thousands of these sessions on two cores (measured here:
212 logins/s with 4,096 iterations, 710/s with 1). Nothing measured logs in as `bench_app`: the
reaper and the bare statement connect as `bench_reaper`, whose password is hashed the normal way.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import psycopg

from reaper.local.cluster import LocalPostgres
from reaper.local.roles import REAPER_GRANTS, create_login_role

if TYPE_CHECKING:
    from collections.abc import Iterator

    from reaper.local.cluster import PostgresBinaries

REAPER_ROLE = "bench_reaper"
APP_ROLE = "bench_app"
# The privileges docs/database-role.md gives the reaper's role.
# Slots beyond the largest fleet: spared sessions, the admin, the reaper, psql, autovacuum.
HEADROOM_CONNECTIONS = 300
# PBKDF2 iterations in bench_app's SCRAM verifier (PostgreSQL's default is 4,096); see above.
_APP_SCRAM_ITERATIONS = 1


@dataclass(frozen=True)
class BenchServer:
    """A started server with the benchmark's roles; DSNs carry passwords, never print them."""

    server: LocalPostgres
    max_connections: int
    server_version: str
    reaper_password: str = field(repr=False)
    app_password: str = field(repr=False)

    @property
    def major(self) -> int:
        """The server's major version."""
        return self.server.major

    @property
    def label(self) -> str:
        """E.g. 'embedded PostgreSQL 18'."""
        return self.server.binaries.label

    @property
    def admin_dsn(self) -> str:
        """The superuser's DSN."""
        return self.server.dsn()

    @property
    def reaper_dsn(self) -> str:
        """The least-privilege reaper role's DSN (used by the reaper and the bare statement)."""
        return self.server.dsn(user=REAPER_ROLE, password=self.reaper_password)

    @property
    def app_dsn(self) -> str:
        """The simulated applications' DSN."""
        return self.server.dsn(user=APP_ROLE, password=self.app_password)


@contextlib.contextmanager
def bench_server(binaries: PostgresBinaries, *, max_connections: int) -> Iterator[BenchServer]:
    """Start a throwaway cluster with `max_connections` and the benchmark's roles; stop it after.

    Raises:
        LocalPostgresError: the server did not start.
    """
    settings: dict[str, str | int] = {"max_connections": max_connections}
    with LocalPostgres(binaries, settings=settings) as server:
        reaper_password = secrets.token_urlsafe(18)
        app_password = secrets.token_urlsafe(18)
        with psycopg.connect(server.dsn(), autocommit=True) as admin:
            create_login_role(admin, REAPER_ROLE, reaper_password, grants=REAPER_GRANTS)
            create_login_role(admin, APP_ROLE, scram_verifier(app_password, _APP_SCRAM_ITERATIONS))
            row = admin.execute("SELECT version()").fetchone()
        yield BenchServer(
            server=server,
            max_connections=max_connections,
            server_version=row[0] if row else "",
            reaper_password=reaper_password,
            app_password=app_password,
        )


def scram_verifier(password: str, iterations: int) -> str:
    """A SCRAM-SHA-256 verifier PostgreSQL accepts in `CREATE ROLE ... PASSWORD`, as is.

    PostgreSQL stores a password that already looks like a verifier without hashing it again,
    and the client follows the iteration count the server announces; this works on every
    supported major (`scram_iterations` only exists from PostgreSQL 16).
    """
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored_key = hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    return f"SCRAM-SHA-256${iterations}:{_b64(salt)}${_b64(stored_key)}:{_b64(server_key)}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
