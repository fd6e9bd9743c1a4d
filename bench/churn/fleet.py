"""A simulated Lambda fleet on one server, with the ground truth a real fleet never tells.

`drive` replays a traffic (bench/churn/traffic.py) against the server: each container holds one
connection; a container idle past its lifetime is discarded without closing it. Every
`pass_interval` a reaping step runs on a thread (the reaper's pass, the oracle's terminations),
told which connections belong to discarded containers. A monitor polls pg_stat_activity every
`POLL_SECONDS` for the connection count and for the moment each backend disappears; the driver
closes nothing during a run, so a backend that disappears was terminated (by a pass, or by the
server's idle_session_timeout). From that it counts, per application: requests, failures
(SQLSTATE 53300), reconnects (a warm container whose connection was terminated), terminations
of dead and of live sessions, and the slot-seconds dead sessions held.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.conninfo import make_conninfo

from bench.churn.traffic import HABITS, lifetime, requests

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from bench.churn.traffic import Request

POLL_SECONDS = 0.1
TOO_MANY_CONNECTIONS = "53300"


@dataclass
class Connection:
    """One connection a container opened, and what became of its backend."""

    pid: int
    container: Container
    opened_at: float
    # When the monitor first missed its backend; None while it is there.
    gone_at: float | None = None
    # Replaced by a reconnect: the container lived on with another connection.
    superseded: bool = False


@dataclass
class Container:
    """A Lambda environment of one application, holding at most one connection."""

    application: str
    lifetime: float
    conn: psycopg.AsyncConnection[Any] | None = None
    current: Connection | None = None
    busy: bool = True
    last_used: float = 0.0

    def discarded_at(self, now: float) -> float | None:
        """When the environment was discarded (idle past its lifetime), if it was by `now`."""
        if self.busy or self.conn is None:
            return None
        expires = self.last_used + self.lifetime
        return expires if expires < now else None


@dataclass
class Counts:
    """What happened to one application's requests."""

    requests: int = 0
    cold_starts: int = 0
    failed: int = 0
    reconnects: int = 0
    other_errors: int = 0


@dataclass
class RunOutcome:
    """The ground truth of one run."""

    duration: float
    counts: dict[str, Counts]
    connections: list[Connection]
    containers: list[Container]
    timeline: list[tuple[float, int]]
    pass_seconds: list[float] = field(default_factory=list)
    pass_cpu_seconds: list[float] = field(default_factory=list)

    def summary(self, *, track_sessions: bool) -> dict[str, Any]:
        """Per application and in total: the numbers the report compares."""
        per_app: dict[str, dict[str, float]] = {}
        for habit in HABITS:
            counts = self.counts.get(habit.application, Counts())
            per_app[habit.application] = {
                "requests": counts.requests,
                "cold_starts": counts.cold_starts,
                "failed": counts.failed,
                "reconnects": counts.reconnects,
                "other_errors": counts.other_errors,
                "terminated_dead": 0,
                "terminated_live": 0,
                "dead_slot_seconds": 0.0,
                "containers_discarded": sum(
                    1
                    for c in self.containers
                    if c.application == habit.application and c.discarded_at(self.duration)
                ),
            }
        if track_sessions:
            for connection in self.connections:
                self._account(connection, per_app[connection.container.application])
        totals = {
            name: sum(app[name] for app in per_app.values())
            for name in next(iter(per_app.values()))
        }
        return {
            "applications": per_app,
            "totals": totals,
            "peak_connections": max((count for _t, count in self.timeline), default=0),
            "passes": len(self.pass_seconds),
            "pass_median_ms": _median_ms(self.pass_seconds),
            "pass_cpu_median_ms": _median_ms(self.pass_cpu_seconds),
            "timeline": [[round(t, 2), count] for t, count in self.timeline],
        }

    def _account(self, connection: Connection, app: dict[str, float]) -> None:
        container = connection.container
        discarded = None if connection.superseded else container.discarded_at(self.duration)
        gone = connection.gone_at
        if gone is not None:
            dead = discarded is not None and gone >= discarded
            app["terminated_dead" if dead else "terminated_live"] += 1
        if discarded is not None:
            app["dead_slot_seconds"] += max(0.0, (gone or self.duration) - discarded)


def _median_ms(values: list[float]) -> float | None:
    return round(statistics.median(values) * 1000, 2) if values else None


class _Fleet:
    """The containers of one run, routing requests to them as Lambda would."""

    def __init__(self, seed: int, conninfo: Mapping[str, str], started: float) -> None:
        self._seed = seed
        self._conninfo = make_conninfo("", **conninfo)
        self._started = started
        self.containers: dict[str, list[Container]] = defaultdict(list)
        self.connections: list[Connection] = []
        self.counts: dict[str, Counts] = defaultdict(Counts)

    def now(self) -> float:
        return time.monotonic() - self._started

    async def handle(self, request: Request) -> None:
        counts = self.counts[request.application]
        counts.requests += 1
        container = self._warm(request.application)
        if container is None:
            container = await self._cold_start(request.application)
            if container is None:
                counts.failed += 1
                return
        else:
            container.busy = True
            assert container.conn is not None  # _warm
            try:
                await container.conn.execute("SELECT 1")
            except psycopg.OperationalError:
                # Its connection was terminated while it was frozen: the function reconnects.
                counts.reconnects += 1
                if not await self._connect(container):
                    counts.failed += 1
                    container.busy = False
                    return
        await asyncio.sleep(request.hold)
        container.busy = False
        container.last_used = self.now()

    def dead_pids(self) -> list[int]:
        """The backends of discarded containers' connections: what an oracle terminates."""
        now = self.now()
        return [
            c.current.pid
            for containers in self.containers.values()
            for c in containers
            if c.current is not None and c.current.gone_at is None and c.discarded_at(now)
        ]

    def _warm(self, application: str) -> Container | None:
        now = self.now()
        warm = [
            c
            for c in self.containers[application]
            if not c.busy and c.conn is not None and now - c.last_used <= c.lifetime
        ]
        return max(warm, key=lambda c: c.last_used, default=None)

    async def _cold_start(self, application: str) -> Container | None:
        habit = next(h for h in HABITS if h.application == application)
        index = len(self.containers[application])
        container = Container(application, lifetime(self._seed, habit, index))
        self.containers[application].append(container)
        self.counts[application].cold_starts += 1
        if not await self._connect(container):
            container.busy = False
            return None
        assert container.conn is not None
        await container.conn.execute("SELECT 1")
        return container

    async def _connect(self, container: Container) -> bool:
        if container.current is not None:
            container.current.superseded = True
        if container.conn is not None:
            await container.conn.close()
            container.conn = None
        try:
            conn = await psycopg.AsyncConnection.connect(
                self._conninfo,
                application_name=container.application,
                autocommit=True,
                # Under transaction pooling (PgBouncer) prepared statements fail; off for all.
                prepare_threshold=None,
                connect_timeout=30,
            )
        except psycopg.OperationalError as exc:
            if exc.sqlstate != TOO_MANY_CONNECTIONS:
                self.counts[container.application].other_errors += 1
            return False
        container.conn = conn
        container.current = Connection(conn.info.backend_pid, container, self.now())
        self.connections.append(container.current)
        return True

    async def close(self) -> None:
        for containers in self.containers.values():
            for container in containers:
                if container.conn is not None:
                    await container.conn.close()


async def drive(
    *,
    seed: int,
    duration: float,
    conninfo: Mapping[str, str],
    monitor_dsn: str,
    role: str,
    reap: Callable[[list[int]], None] | None,
    pass_interval: float,
) -> RunOutcome:
    """Replay `duration` seconds of the seed's traffic, reaping every `pass_interval`.

    Args:
        conninfo: where the containers connect (the server, or a pooler in front of it).
        monitor_dsn: a superuser's DSN on the server, for the monitor.
        role: the applications' role, whose backends the monitor follows.
        reap: the reaping step (None: nothing reaps but the server's own settings).
    """
    traffic = requests(seed, duration)
    started = time.monotonic()
    fleet = _Fleet(seed, conninfo, started)
    timeline: list[tuple[float, int]] = []
    pass_seconds: list[float] = []
    pass_cpu: list[float] = []
    stop = asyncio.Event()

    async def monitor() -> None:
        async with await psycopg.AsyncConnection.connect(monitor_dsn, autocommit=True) as conn:
            while True:
                polled_at = fleet.now()
                cursor = await conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE usename = %s", [role]
                )
                pids = {pid for (pid,) in await cursor.fetchall()}
                timeline.append((polled_at, len(pids)))
                for connection in fleet.connections:
                    if (
                        connection.gone_at is None
                        and connection.opened_at < polled_at
                        and connection.pid not in pids
                    ):
                        connection.gone_at = polled_at
                if stop.is_set():
                    return
                await asyncio.sleep(POLL_SECONDS)

    def timed(step: Callable[[list[int]], None], dead: list[int]) -> None:
        wall, cpu = time.perf_counter(), time.thread_time()
        step(dead)
        pass_cpu.append(time.thread_time() - cpu)
        pass_seconds.append(time.perf_counter() - wall)

    async def passes() -> None:
        if reap is None:
            return
        next_at = pass_interval
        while next_at < duration:
            await asyncio.sleep(max(0.0, next_at - fleet.now()))
            await asyncio.to_thread(timed, reap, fleet.dead_pids())
            next_at += pass_interval

    watcher = asyncio.create_task(monitor())
    reaper = asyncio.create_task(passes())
    handlers = []
    for request in traffic:
        await asyncio.sleep(max(0.0, request.at - fleet.now()))
        handlers.append(asyncio.create_task(fleet.handle(request)))
    await asyncio.gather(*handlers)
    await asyncio.sleep(max(0.0, duration - fleet.now()))
    await reaper
    stop.set()
    await watcher
    outcome = RunOutcome(
        duration=fleet.now(),
        counts=dict(fleet.counts),
        connections=fleet.connections,
        containers=[c for containers in fleet.containers.values() for c in containers],
        timeline=timeline,
        pass_seconds=pass_seconds,
        pass_cpu_seconds=pass_cpu,
    )
    await fleet.close()
    return outcome
