"""The sessions the benchmark reaps and the ones it must spare.

`Fleet` holds N idle sessions of simulated Lambda applications (`lambda:app-<k>`, role
`bench_app`). They live in a separate worker process, opened with psycopg's AsyncConnection and
bounded concurrency: thousands of connection objects in the benchmark's own process would make
its garbage collector walk them during the timed pass, a cost a real reaper never pays.

`SparedSessions` holds the sessions no pass may touch: idle non-Lambda clients, a Lambda session
in the middle of a query, one idle in a transaction, and a superuser's session under a Lambda
name. `FleetChecker` proves, between measurements, that the fleet is what it should be and
that every spared session is still there in its state.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import signal
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg

from bench.errors import BenchError
from bench.server import APP_ROLE

if TYPE_CHECKING:
    from collections.abc import Iterator
    from multiprocessing.connection import Connection
    from types import TracebackType

    from bench.server import BenchServer

LAMBDA_APPLICATION_PREFIX = "lambda:app-"
# The fleet's sessions use this pattern; so do the reaper's policy and the bare statement.
LAMBDA_GLOB = "lambda:*"
DEFAULT_APPLICATIONS = 10
DEFAULT_CONCURRENCY = 64
_CONNECT_TIMEOUT_SECONDS = 60
_WORKER_STOP_SECONDS = 15
# A closed fleet's backends leave pg_stat_activity only once they have exited; with thousands
# exiting at once on two cores that takes seconds, not minutes.
_DRAIN_TIMEOUT_SECONDS = 180.0
_POLL_SECONDS = 0.05


# -- the fleet, in its own process ------------------------------------------------------------


class Fleet:
    """N idle Lambda-like sessions held by a worker process; open, let be reaped, close, repeat."""

    def __init__(
        self,
        dsn: str,
        *,
        applications: int = DEFAULT_APPLICATIONS,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        self._dsn = dsn
        self._applications = applications
        self._concurrency = concurrency
        self._process: multiprocessing.process.BaseProcess | None = None
        self._channel: Connection | None = None
        self.size = 0
        self._idle_since = 0.0

    def __enter__(self) -> Fleet:
        # spawn, not fork: a forked child would inherit this process's open libpq sockets.
        context = multiprocessing.get_context("spawn")
        parent_end, child_end = context.Pipe()
        self._process = context.Process(
            target=_worker_main,
            args=(child_end, self._dsn, self._applications, self._concurrency),
            name="bench-fleet",
            daemon=True,
        )
        self._process.start()
        child_end.close()
        self._channel = parent_end
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        process, channel = self._process, self._channel
        self._process = self._channel = None
        if process is None or channel is None:
            return
        if exc_type is None:
            with contextlib.suppress(OSError, EOFError):
                channel.send(("stop", 0))
            process.join(_WORKER_STOP_SECONDS)
        # Unwinding from an error or Ctrl-C: the worker may be busy opening thousands of
        # sessions and would finish first; SIGTERM ends it now (the kernel closes its sockets).
        if process.is_alive():
            process.terminate()
            process.join(5)
        if process.is_alive():
            process.kill()
            process.join()
        channel.close()

    def open(self, count: int) -> float:
        """Open `count` new idle sessions; returns the seconds it took.

        Raises:
            BenchError: a session could not be opened (the message says why).
        """
        seconds = self._call("open", count)
        self.size += count
        self._idle_since = time.monotonic()
        return seconds

    def close(self) -> None:
        """Close every session the worker holds (those already terminated included)."""
        self._call("close", 0)
        self.size = 0

    def wait_until_idle_for(self, seconds: float) -> None:
        """Block until the youngest session has been idle for `seconds` (plus a margin).

        Not a measurement: the sessions must be older than the policy's threshold, or the pass
        would rightly spare them.
        """
        remaining = self._idle_since + seconds + 0.1 - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)

    def _call(self, command: str, argument: int) -> float:
        if self._channel is None:
            raise BenchError("the fleet's worker process is not running")
        self._channel.send((command, argument))
        try:
            status, value = self._channel.recv()
        except (EOFError, OSError) as exc:
            raise BenchError("the fleet's worker process died") from exc
        if status != "ok":
            raise BenchError(f"the fleet's worker failed to {command}: {value}")
        return float(value)


def _worker_main(channel: Connection, dsn: str, applications: int, concurrency: int) -> None:
    """The worker's loop: ('open', n) | ('close', 0) | ('stop', 0); answers ('ok'|'error', x)."""
    # Ctrl-C reaches the whole process group; the parent handles it and stops this worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    loop = asyncio.new_event_loop()
    held: list[psycopg.AsyncConnection[Any]] = []
    try:
        while True:
            try:
                command, argument = channel.recv()
            except EOFError:
                return  # the parent is gone
            if command == "stop":
                return
            try:
                if command == "open":
                    seconds = loop.run_until_complete(
                        _open(dsn, argument, applications, concurrency, held)
                    )
                    channel.send(("ok", seconds))
                elif command == "close":
                    loop.run_until_complete(_close(held))
                    channel.send(("ok", 0.0))
                else:
                    channel.send(("error", f"unknown command {command!r}"))
            except* (psycopg.Error, OSError) as group:
                first = group.exceptions[0]
                channel.send(("error", f"{type(first).__name__}: {first}"))
    finally:
        loop.run_until_complete(_close(held))
        loop.close()


async def _open(
    dsn: str,
    count: int,
    applications: int,
    concurrency: int,
    held: list[psycopg.AsyncConnection[Any]],
) -> float:
    started = time.monotonic()
    progress = _Progress(count, started)
    gate = asyncio.Semaphore(concurrency)

    async def open_one(index: int) -> None:
        async with gate:
            conn = await psycopg.AsyncConnection.connect(
                dsn,
                application_name=f"{LAMBDA_APPLICATION_PREFIX}{index % applications}",
                autocommit=True,
                connect_timeout=_CONNECT_TIMEOUT_SECONDS,
            )
        held.append(conn)
        progress.tick()

    # A TaskGroup cancels the other openings as soon as one fails.
    async with asyncio.TaskGroup() as group:
        for index in range(count):
            group.create_task(open_one(index))
    seconds = time.monotonic() - started
    progress.done(seconds)
    return seconds


async def _close(held: list[psycopg.AsyncConnection[Any]]) -> None:
    for conn in held:
        with contextlib.suppress(psycopg.Error, OSError):
            await conn.close()
    held.clear()


class _Progress:
    """A running line on a terminal; a line per quarter when the output is a file or pipe."""

    def __init__(self, total: int, started: float) -> None:
        self._total = total
        self._started = started
        self._count = 0
        self._tty = sys.stdout.isatty()
        self._next_print = 0.0
        self._next_quarter = 1

    def tick(self) -> None:
        self._count += 1
        now = time.monotonic()
        rate = self._count / max(now - self._started, 1e-9)
        if self._tty:
            if now >= self._next_print or self._count == self._total:
                self._next_print = now + 0.2
                print(
                    f"\r    opening sessions {self._count:,}/{self._total:,} ({rate:,.0f}/s)",
                    end="",
                    flush=True,
                )
        elif self._count * 4 >= self._next_quarter * self._total and self._total >= 1000:
            print(f"    opening sessions {self._count:,}/{self._total:,} ({rate:,.0f}/s)")
            self._next_quarter += 1

    def done(self, seconds: float) -> None:
        rate = self._total / max(seconds, 1e-9)
        end = "\r" if self._tty else ""
        print(
            f"{end}    opened {self._total:,} sessions in {seconds:.1f} s ({rate:,.0f}/s)"
            + " " * 10,
            flush=True,
        )


# -- the sessions that must survive -------------------------------------------------------------


@dataclass(frozen=True)
class SparedSession:
    """A session no pass may terminate, and the state it must keep."""

    description: str
    application_name: str
    superuser: bool
    state: str
    pid: int = 0


_SPARED = (
    SparedSession("a BI tool, idle (no rule matches)", "metabase", False, "idle"),
    SparedSession("a psql user, idle (no rule matches)", "psql", False, "idle"),
    SparedSession("a pooler, idle (no rule matches)", "pgbouncer", False, "idle"),
    SparedSession("a Lambda function mid-query (pg_sleep)", "lambda:app-0", False, "active"),
    SparedSession("a Lambda function idle in a transaction", "lambda:app-1", False,
                  "idle in transaction"),
    SparedSession("a superuser's task under a Lambda name", "lambda:admin-task", True, "idle"),
)  # fmt: skip


@contextlib.contextmanager
def spared_sessions(server: BenchServer) -> Iterator[tuple[SparedSession, ...]]:
    """Open the sessions every pass must spare; close them (cancelling the query) afterwards."""
    opened: list[tuple[SparedSession, psycopg.Connection[Any]]] = []
    try:
        for spec in _SPARED:
            dsn = server.admin_dsn if spec.superuser else server.app_dsn
            conn = psycopg.connect(
                dsn,
                application_name=spec.application_name,
                autocommit=spec.state != "idle in transaction",
            )
            opened.append((spec, conn))
            if spec.state == "active":
                # Sent without waiting for the result: the backend runs it while this process
                # goes on; closing cancels it.
                conn.pgconn.send_query(b"SELECT pg_sleep(3600)")
                while conn.pgconn.flush():
                    pass
            else:
                conn.execute("SELECT 1")
        yield tuple(
            SparedSession(
                spec.description,
                spec.application_name,
                spec.superuser,
                spec.state,
                conn.info.backend_pid,
            )
            for spec, conn in opened
        )
    finally:
        for spec, conn in opened:
            if spec.state == "active":
                with contextlib.suppress(psycopg.Error):
                    conn.cancel_safe(timeout=5)
            with contextlib.suppress(psycopg.Error):
                conn.close()


class FleetChecker:
    """Checks on the server's state between measurements, over a superuser connection."""

    def __init__(self, server: BenchServer, spared: tuple[SparedSession, ...]) -> None:
        self._conn = psycopg.connect(
            server.admin_dsn, autocommit=True, application_name="bench-admin"
        )
        self._spared = spared

    def close(self) -> None:
        """Close the checker's connection."""
        self._conn.close()

    def fleet_sessions(self) -> int:
        """Idle sessions of the simulated Lambda fleet (role bench_app, idle, lambda:*)."""
        row = self._conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE usename = %(role)s AND state = 'idle' AND application_name LIKE %(prefix)s",
            {"role": APP_ROLE, "prefix": LAMBDA_APPLICATION_PREFIX + "%"},
        ).fetchone()
        return int(row[0]) if row else 0

    def expect_fleet(self, count: int) -> None:
        """Raise BenchError unless exactly `count` fleet sessions are idle on the server."""
        found = self.fleet_sessions()
        if found != count:
            raise BenchError(f"expected {count} idle fleet sessions, found {found}")

    def wait_for_drained_fleet(self) -> float:
        """Wait until every terminated fleet backend has left; returns the seconds waited.

        Raises:
            BenchError: some fleet sessions are still there after the timeout.
        """
        started = time.monotonic()
        while (left := self.fleet_sessions()) > 0:
            if time.monotonic() - started > _DRAIN_TIMEOUT_SECONDS:
                raise BenchError(f"{left} fleet sessions survived a real pass")
            time.sleep(_POLL_SECONDS)
        return time.monotonic() - started

    def check_spared(self) -> None:
        """Raise BenchError unless every spared session is alive and in its state."""
        rows = self._conn.execute(
            "SELECT pid, state FROM pg_stat_activity WHERE pid = ANY(%(pids)s)",
            {"pids": [s.pid for s in self._spared]},
        ).fetchall()
        states: dict[int, str | None] = dict(rows)
        for spared in self._spared:
            state = states.get(spared.pid)
            if state != spared.state:
                raise BenchError(
                    f"spared session {spared.description} (pid {spared.pid}) is "
                    f"{'gone' if state is None else repr(state)}, expected {spared.state!r}"
                )
