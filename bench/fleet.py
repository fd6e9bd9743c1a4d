"""What no benchmarking tool does: a server full of idle Lambda sessions, and proof of every reap.

- `bench_server`: a throwaway cluster with the benchmark's roles: `bench_reaper` (the reaper's
  least-privilege role, used by the reaper *and* the bare statement) and `bench_app` (the
  simulated applications, with a cheap 1-iteration SCRAM verifier: SCRAM's key stretching made
  logins CPU-bound, 212/s against 710/s here, and nothing timed logs in as `bench_app`).
- `Fleet`: N idle sessions (`lambda:app-0..9`) held by a worker process that opens them with
  psycopg's AsyncConnection, 64 at a time, so that thousands of connection objects never sit in
  the process that times the pass (its garbage collector would walk them).
- `Checker`: between runs, proves the fleet is exactly N idle sessions, waits for terminated
  backends to leave, and proves the sessions every pass must spare are still there as they were.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import multiprocessing
import os
import secrets
import signal
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg

from reaper.local.cluster import LocalPostgres
from reaper.local.roles import REAPER_GRANTS, create_login_role
from reaper.local.sessions import open_sessions

if TYPE_CHECKING:
    from collections.abc import Iterator
    from multiprocessing.connection import Connection

    from reaper.local.binaries import PostgresBinaries
    from reaper.local.sessions import SessionState

APP_ROLE = "bench_app"
REAPER_ROLE = "bench_reaper"
LAMBDA_PREFIX = "lambda:app-"
# Slots beyond the largest fleet: spared sessions, the admin, the reaper, psql, autovacuum.
HEADROOM_CONNECTIONS = 300
_APPLICATIONS = 10
_DRAIN_TIMEOUT_SECONDS = 180.0

# (application_name, superuser, state): the sessions no pass may terminate.
SPARED: tuple[tuple[str, bool, SessionState], ...] = (
    ("metabase", False, "idle"),  # no rule matches
    ("psql", False, "idle"),
    ("pgbouncer", False, "idle"),
    ("lambda:app-0", False, "active"),  # a Lambda function mid-query
    ("lambda:app-1", False, "idle in transaction"),
    ("lambda:admin-task", True, "idle"),  # a superuser's task under a Lambda name
)


class BenchError(Exception):
    """A measurement would be wrong: the server or its sessions are not as set up."""


@dataclass(frozen=True)
class BenchServer:
    """A started server with the benchmark's roles; DSNs carry passwords, never print them."""

    cluster: LocalPostgres
    server_version: str
    # The reaper's role, used by the reaper and by the bare statement alike.
    reaper_dsn: str = field(repr=False)
    app_dsn: str = field(repr=False)


@contextlib.contextmanager
def bench_server(binaries: PostgresBinaries, max_connections: int) -> Iterator[BenchServer]:
    """Start a throwaway cluster with the benchmark's roles; stop it (and delete it) after."""
    with LocalPostgres(binaries, settings={"max_connections": max_connections}) as cluster:
        reaper_password, app_password = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
        with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
            create_login_role(admin, REAPER_ROLE, reaper_password, grants=REAPER_GRANTS)
            create_login_role(admin, APP_ROLE, scram_verifier(app_password, iterations=1))
            row = admin.execute("SELECT version()").fetchone()
        yield BenchServer(
            cluster,
            row[0] if row else "",
            reaper_dsn=cluster.dsn(user=REAPER_ROLE, password=reaper_password),
            app_dsn=cluster.dsn(user=APP_ROLE, password=app_password),
        )


def scram_verifier(password: str, *, iterations: int) -> str:
    """A SCRAM-SHA-256 verifier that `CREATE ROLE ... PASSWORD` stores as it is, on every major
    (`scram_iterations` only exists from 16); the client follows the server's iteration count."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored_key = hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    encoded = [base64.b64encode(part).decode() for part in (salt, stored_key, server_key)]
    return f"SCRAM-SHA-256${iterations}:{encoded[0]}${encoded[1]}:{encoded[2]}"


@contextlib.contextmanager
def held_fleet(server: BenchServer, concurrency: int) -> Iterator[Fleet]:
    """The fleet's worker beside the sessions every pass must spare, which are checked once
    more when it ends."""
    with open_sessions() as sessions:
        spared: dict[int, str] = {}
        for application_name, superuser, state in SPARED:
            dsn = server.cluster.dsn() if superuser else server.app_dsn
            conn = sessions.open(dsn, state, application_name=application_name)
            spared[conn.info.backend_pid] = state
        checker = Checker(server.cluster.dsn(), spared)
        try:
            with fleet_worker(server.app_dsn, checker, concurrency) as fleet:
                yield fleet
            checker.wait_until_drained()
            checker.check_spared()
        finally:
            checker.close()


class Fleet:
    """The idle Lambda sessions, held by a worker process; `ready(n)` before every measured run.

    A real run terminates the whole fleet: the caller says so with `spent = True`, and the next
    `ready` replaces it (untimed).
    """

    def __init__(self, channel: Connection, checker: Checker) -> None:
        self._channel = channel
        self._checker = checker
        self.size = 0
        self.spent = False
        self.open_seconds: dict[int, list[float]] = {}

    def ready(self, size: int) -> bool:
        """Make sure exactly `size` fleet sessions are there; True when they were just opened
        (the caller then waits out the policy's threshold, which spares younger sessions).

        Raises:
            BenchError: the fleet could not be opened, or the server holds another number.
        """
        if self.size == size and not self.spent:
            return False
        self._call("close", 0)
        self._checker.wait_until_drained()
        self._checker.check_spared()
        self.size, self.spent = 0, False
        seconds = self._call("open", size)
        self.open_seconds.setdefault(size, []).append(seconds)
        self.size = size
        self._checker.expect_fleet(size)
        return True

    def _call(self, command: str, argument: int) -> float:
        self._channel.send((command, argument))
        try:
            status, value = self._channel.recv()
        except (EOFError, OSError) as exc:
            raise BenchError("the fleet's worker process died") from exc
        if status != "ok":
            raise BenchError(f"the fleet's worker failed to {command}: {value}")
        return float(value)


@contextlib.contextmanager
def fleet_worker(app_dsn: str, checker: Checker, concurrency: int) -> Iterator[Fleet]:
    """Start the process that holds the fleet's sessions (opened with `app_dsn`); end it (and so
    its sessions) on the way out."""
    # spawn, not fork: a forked child would inherit this process's open libpq sockets.
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe()
    worker = context.Process(
        target=_worker_main, args=(child_end, app_dsn, concurrency), daemon=True
    )
    worker.start()
    child_end.close()
    try:
        yield Fleet(parent_end, checker)
    finally:
        # SIGTERM, not a polite request: while unwinding from Ctrl-C the worker may be busy
        # opening thousands of sessions; the kernel closes its sockets.
        worker.terminate()
        worker.join(10)
        if worker.is_alive():
            worker.kill()
            worker.join()
        parent_end.close()


def _worker_main(channel: Connection, dsn: str, concurrency: int) -> None:
    """The worker's loop: ('open', n) | ('close', 0); answers ('ok' | 'error', value)."""
    # Ctrl-C reaches the whole process group; the parent handles it and ends this worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    loop = asyncio.new_event_loop()
    held: list[psycopg.AsyncConnection[Any]] = []
    while True:
        try:
            command, argument = channel.recv()
        except EOFError:
            return  # the parent is gone
        try:
            if command == "open":
                seconds = loop.run_until_complete(_open(dsn, argument, concurrency, held))
            else:
                for conn in held:
                    with contextlib.suppress(psycopg.Error, OSError):
                        loop.run_until_complete(conn.close())
                held.clear()
                seconds = 0.0
            channel.send(("ok", seconds))
        except* (psycopg.Error, OSError) as group:
            first = group.exceptions[0]
            channel.send(("error", f"{type(first).__name__}: {first}"))


async def _open(
    dsn: str, count: int, concurrency: int, held: list[psycopg.AsyncConnection[Any]]
) -> float:
    started = time.monotonic()
    gate = asyncio.Semaphore(concurrency)

    async def open_one(index: int) -> None:
        async with gate:
            held.append(
                await psycopg.AsyncConnection.connect(
                    dsn,
                    application_name=f"{LAMBDA_PREFIX}{index % _APPLICATIONS}",
                    autocommit=True,
                    connect_timeout=60,
                )
            )

    # A TaskGroup cancels the other openings as soon as one fails.
    async with asyncio.TaskGroup() as group:
        for index in range(count):
            group.create_task(open_one(index))
    return time.monotonic() - started


class Checker:
    """The server's state between runs, seen over a superuser connection."""

    def __init__(self, admin_dsn: str, spared: dict[int, str], app_role: str = APP_ROLE) -> None:
        self._conn = psycopg.connect(admin_dsn, autocommit=True, application_name="bench-admin")
        self._spared = spared
        self._app_role = app_role

    def close(self) -> None:
        self._conn.close()

    def fleet_sessions(self) -> int:
        """Idle sessions of the simulated Lambda fleet (its role, idle, lambda:app-*)."""
        row = self._conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE usename = %s AND state = 'idle' AND application_name LIKE %s",
            [self._app_role, LAMBDA_PREFIX + "%"],
        ).fetchone()
        return int(row[0]) if row else 0

    def expect_fleet(self, size: int) -> None:
        """Raise BenchError unless exactly `size` fleet sessions are idle on the server."""
        found = self.fleet_sessions()
        if found != size:
            raise BenchError(f"expected {size} idle fleet sessions, found {found}")

    def wait_until_drained(self) -> None:
        """Wait until every terminated or closed fleet backend has left the server."""
        deadline = time.monotonic() + _DRAIN_TIMEOUT_SECONDS
        while (left := self.fleet_sessions()) > 0:
            if time.monotonic() > deadline:
                raise BenchError(f"{left} fleet sessions are still there")
            time.sleep(0.05)

    def check_spared(self) -> None:
        """Raise BenchError unless every spared session is alive and in its state."""
        rows = self._conn.execute(
            "SELECT pid, state FROM pg_stat_activity WHERE pid = ANY(%s)", [list(self._spared)]
        ).fetchall()
        found: dict[int, str | None] = dict(rows)
        for pid, state in self._spared.items():
            if found.get(pid) != state:
                raise BenchError(f"spared session {pid} ({state}) is now {found.get(pid)!r}")


def require_exactly(what: str, affected: int, size: int) -> None:
    """The check of every measured run: it acted on exactly the fleet (a fast wrong answer is
    not a measurement); raises BenchError otherwise."""
    if affected != size:
        raise BenchError(f"{what} acted on {affected} sessions, expected the fleet of {size}")
