"""One Lambda invocation over ten databases, against the slowest of them alone.

`python -m bench.fanout [--servers 10] [--sessions 20] [--rounds 5]` starts throwaway local
PostgreSQL servers, leaves idle Lambda-like sessions on each, and times the handler in-process
(as `reaper invoke` runs it): first once per server with that server as the only target, then
once with all of them as REAPER_TARGETS. Every round reopens the sessions, so each pass
terminates the same number. Prints JSON with the medians over the rounds and the ratio of the
fan-out to the slowest single target; the goal is at most 1.3. Exit code 1 when a pass failed.

Locally the servers share the machine's CPUs with the reaper, so ten passes' server work (fork,
SCRAM, terminating backends) competes for them; in AWS each database has its own. The load
average and the reaper process's own CPU time (all its threads) are printed beside the result
for that reason: the reaper's CPU is what a Lambda function's share of a vCPU must absorb.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from reaper.cli.invoke import emulated_environment, invoke_event, local_context
from reaper.local.binaries import available_binaries
from reaper.local.cluster import LocalPostgres
from reaper.local.roles import REAPER_GRANTS, create_login_role

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

GOAL_RATIO = 1.3
IDLE_SECONDS = 1.0
APPLICATION = "lambda:bench-fanout"
EVENT = {"action": "reap"}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the measurement and print it as JSON; 0 when every pass succeeded."""
    parser = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__)
    parser.add_argument("--servers", type=int, default=10)
    parser.add_argument("--sessions", type=int, default=20, help="idle sessions per server")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        dsns = [stack.enter_context(_server(args.sessions)) for _ in range(args.servers)]
        policy = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "policy.json"
        policy.write_text(
            json.dumps(
                {
                    "rules": [{"application_names": [APPLICATION], "states": {"idle": 1}}],
                    "allow_short_thresholds": True,
                    "max_terminations": args.sessions,
                }
            )
        )
        with _idle_sessions(dsns, args.sessions):
            _invoke(dsns, policy, args.sessions)  # warm-up: the handler's cold imports
        singles: list[tuple[float, float]] = []
        fanouts: list[tuple[float, float]] = []
        for _ in range(args.rounds):
            with _idle_sessions(dsns, args.sessions):
                singles.append(max(_invoke([dsn], policy, args.sessions) for dsn in dsns))
            with _idle_sessions(dsns, args.sessions):
                fanouts.append(_invoke(dsns, policy, args.sessions))
    slowest = statistics.median(wall for wall, _ in singles)
    fanout = statistics.median(wall for wall, _ in fanouts)
    print(
        json.dumps(
            {
                "servers": args.servers,
                "sessions_per_server": args.sessions,
                "rounds": args.rounds,
                "slowest_single_target_seconds": round(slowest, 4),
                "all_targets_seconds": round(fanout, 4),
                "ratio": round(fanout / slowest, 3),
                "reaper_cpu_single_target_seconds": round(
                    statistics.median(cpu for _, cpu in singles), 4
                ),
                "reaper_cpu_all_targets_seconds": round(
                    statistics.median(cpu for _, cpu in fanouts), 4
                ),
                "goal_ratio": GOAL_RATIO,
                "goal_met": fanout / slowest <= GOAL_RATIO,
                "cpus": os.cpu_count(),
                "load_average_1m": round(os.getloadavg()[0], 1),
            },
            indent=2,
        )
    )
    return 0


@contextlib.contextmanager
def _server(sessions: int) -> Iterator[str]:
    """A throwaway server with the reaper's and an application's role; the reaper's DSN."""
    binaries = available_binaries()[0]
    with LocalPostgres(binaries, settings={"max_connections": sessions + 20}) as cluster:
        password = secrets.token_urlsafe(16)
        with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
            create_login_role(admin, "reaper", password, grants=REAPER_GRANTS)
            create_login_role(admin, "app", password)
        yield cluster.dsn(user="reaper", password=password)


@contextlib.contextmanager
def _idle_sessions(dsns: Sequence[str], count: int) -> Iterator[None]:
    """`count` idle application sessions per server, past the policy's threshold."""
    held: list[psycopg.Connection[Any]] = []
    try:
        for dsn in dsns:
            app_dsn = dsn.replace("reaper:", "app:", 1)
            held.extend(
                psycopg.connect(app_dsn, application_name=APPLICATION, autocommit=True)
                for _ in range(count)
            )
        time.sleep(IDLE_SECONDS + 0.2)
        yield
    finally:
        for conn in held:
            conn.close()


def _invoke(dsns: Sequence[str], policy: Path, expected: int) -> tuple[float, float]:
    """Wall and CPU seconds of one handler invocation over `dsns`; exits if a pass went wrong."""
    targets = [{"name": f"db{index}", "dsn": dsn} for index, dsn in enumerate(dsns)]
    variables = {"REAPER_TARGETS": json.dumps(targets), "REAPER_POLICY_FILE": str(policy)}
    output = io.StringIO()
    with emulated_environment(variables), contextlib.redirect_stdout(output):
        started, cpu_started = time.perf_counter(), time.process_time()
        summary = invoke_event(EVENT, local_context())
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    terminated = [target["counts"]["terminated"] for target in summary["targets"]]
    if terminated != [expected] * len(dsns):
        sys.exit(f"bench.fanout: expected {expected} terminations per target, got {terminated}")
    return elapsed, cpu


if __name__ == "__main__":
    sys.exit(main())
