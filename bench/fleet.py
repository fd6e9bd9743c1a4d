"""What no benchmarking tool does: a server full of idle Lambda sessions, and proof of every reap.

`bench_server` starts a throwaway cluster with the bench's roles, the sessions every pass must
spare (`SPARED`) and a `Fleet`: N idle sessions (`lambda:app-0..9`) held by a worker process, so
that thousands of connection objects never sit in the process that times the pass (its garbage
collector would walk them), and the checks between runs: exactly N idle fleet sessions, the
terminated ones gone, the spared ones as they were.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
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
_HEADROOM_CONNECTIONS = 300
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
    """A started server with the benchmark's roles and its fleet; DSNs carry passwords, never
    print them."""

    cluster: LocalPostgres
    server_version: str
    fleet: Fleet
    # The reaper's role, used by the reaper and by the bare statement alike.
    reaper_dsn: str = field(repr=False)
    app_dsn: str = field(repr=False)


@contextlib.contextmanager
def bench_server(
    binaries: PostgresBinaries, largest_fleet: int, concurrency: int
) -> Iterator[BenchServer]:
    """A throwaway cluster with the benchmark's roles and room for `largest_fleet`, the sessions
    every pass must spare and the fleet's worker; on the way out the spared sessions are checked
    once more, the worker ended, the cluster stopped and deleted."""
    settings = {"max_connections": largest_fleet + _HEADROOM_CONNECTIONS}
    with (
        LocalPostgres(binaries, settings=settings) as cluster,
        psycopg.connect(cluster.dsn(), autocommit=True, application_name="bench-admin") as admin,
        open_sessions() as sessions,
    ):
        reaper_password, app_password = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
        create_login_role(admin, REAPER_ROLE, reaper_password, grants=REAPER_GRANTS)
        # The applications' logins: SCRAM's 4,096 iterations made them CPU-bound (212/s against
        # 710/s with 1 here), and nothing timed logs in as this role.
        create_login_role(admin, APP_ROLE, scram_verifier(app_password, iterations=1))
        app_dsn = cluster.dsn(user=APP_ROLE, password=app_password)
        spared: dict[int, str] = {}
        for application_name, superuser, state in SPARED:
            dsn = cluster.dsn() if superuser else app_dsn
            conn = sessions.open(dsn, state, application_name=application_name)
            spared[conn.info.backend_pid] = state
        with fleet_worker(app_dsn, concurrency) as channel:
            fleet = Fleet(channel, admin, spared)
            yield BenchServer(
                cluster,
                admin.info.parameter_status("server_version") or "",
                fleet,
                reaper_dsn=cluster.dsn(user=REAPER_ROLE, password=reaper_password),
                app_dsn=app_dsn,
            )
        fleet.wait_until_drained()
        fleet.check_spared()


def scram_verifier(password: str, *, iterations: int) -> str:
    """A SCRAM-SHA-256 verifier that `CREATE ROLE ... PASSWORD` stores as it is, on every major
    (`scram_iterations` only exists from 16); the client follows the server's iteration count."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored_key = hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    encoded = [base64.b64encode(part).decode() for part in (salt, stored_key, server_key)]
    return f"SCRAM-SHA-256${iterations}:{encoded[0]}${encoded[1]}:{encoded[2]}"


class Fleet:
    """The idle Lambda sessions, held by a worker process, and the server's state between runs,
    seen over a superuser's (autocommit) connection; `ready(n)` before every measured run.

    A real run terminates the whole fleet: the caller says so with `spent = True`, and the next
    `ready` replaces it (untimed).
    """

    def __init__(
        self,
        channel: Connection,
        admin: psycopg.Connection[Any],
        spared: dict[int, str],
        role: str = APP_ROLE,
    ) -> None:
        self._channel, self._admin, self._spared, self._role = channel, admin, spared, role
        self.size, self.spent = 0, False
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
        self.wait_until_drained()
        self.check_spared()
        seconds = self._call("open", size)
        self.open_seconds.setdefault(size, []).append(seconds)
        self.size, self.spent = size, False
        if (found := self.count()) != size:
            raise BenchError(f"expected {size} idle fleet sessions, found {found}")
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

    def count(self) -> int:
        """Idle sessions of the simulated Lambda fleet (its role, idle, lambda:app-*)."""
        row = self._admin.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE usename = %s AND state = 'idle' AND application_name LIKE %s",
            [self._role, LAMBDA_PREFIX + "%"],
        ).fetchone()
        return int(row[0]) if row else 0

    def wait_until_drained(self) -> None:
        """Wait until every terminated or closed fleet backend has left the server."""
        deadline = time.monotonic() + _DRAIN_TIMEOUT_SECONDS
        while (left := self.count()) > 0:
            if time.monotonic() > deadline:
                raise BenchError(f"{left} fleet sessions are still there")
            time.sleep(0.05)

    def check_spared(self) -> None:
        """Raise BenchError unless every spared session is alive and in its state."""
        rows = self._admin.execute(
            "SELECT pid, state FROM pg_stat_activity WHERE pid = ANY(%s)", [list(self._spared)]
        ).fetchall()
        found: dict[int, str | None] = dict(rows)
        for pid, state in self._spared.items():
            if found.get(pid) != state:
                raise BenchError(f"spared session {pid} ({state}) is now {found.get(pid)!r}")


@contextlib.contextmanager
def fleet_worker(app_dsn: str, concurrency: int) -> Iterator[Connection]:
    """Start the process that holds the fleet's sessions (opened with `app_dsn`), yield the
    channel a `Fleet` talks to it over; end it (and so its sessions) on the way out."""
    # spawn, not fork: a forked child would inherit this process's open libpq sockets.
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe()
    worker = context.Process(
        target=_worker_main, args=(child_end, app_dsn, concurrency), daemon=True
    )
    worker.start()
    child_end.close()
    try:
        yield parent_end
    finally:
        # SIGKILL, not a polite request: while unwinding from Ctrl-C the worker may be busy
        # opening thousands of sessions; the kernel closes its sockets.
        worker.kill()
        worker.join()
        parent_end.close()


def _worker_main(channel: Connection, dsn: str, concurrency: int) -> None:
    """The worker's loop: ('open', n) | ('close', 0); answers ('ok' | 'error', value)."""
    # Ctrl-C reaches the whole process group; the parent handles it and ends this worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # the loop gather() below puts its future on
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
                closing = asyncio.gather(*(conn.close() for conn in held), return_exceptions=True)
                loop.run_until_complete(closing)
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
    connect = functools.partial(psycopg.AsyncConnection.connect, dsn, autocommit=True)

    async def open_one(index: int) -> None:
        async with gate:
            name = f"{LAMBDA_PREFIX}{index % _APPLICATIONS}"
            held.append(await connect(application_name=name, connect_timeout=60))

    # A TaskGroup cancels the other openings as soon as one fails.
    async with asyncio.TaskGroup() as group:
        for index in range(count):
            group.create_task(open_one(index))
    return time.monotonic() - started


def require_exactly(what: str, affected: int, size: int) -> None:
    """The check of every measured run: it acted on exactly the fleet (a fast wrong answer is
    not a measurement); raises BenchError otherwise."""
    if affected != size:
        raise BenchError(f"{what} acted on {affected} sessions, expected the fleet of {size}")
