"""The churn benchmark's scenarios: one throwaway PostgreSQL 18 each, the same traffic, and one
way of dealing with idle sessions each.

- `nothing`: no reaping at all;
- `idle_session_timeout`: the server's own setting on the applications' role, at the threshold;
- `one_threshold`: the reaper, one rule at the threshold, a pass every `PASS_INTERVAL`;
- `pressure`: the same with keep_newest, a pressure gate and a target utilization;
- `learned`: the same rule learning per application (started from a history learned by
  `reaper observe` on another seed's traffic, and learning on);
- `oracle`: on the same schedule, terminates exactly the sessions of discarded containers;
- `pgbouncer`: PgBouncer in transaction mode in front of the server, no reaping;
- `learn` (not compared): `reaper observe` on the learning seed, on a server with room for all.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg

from bench.churn.fleet import drive
from bench.churn.pgbouncer import pgbouncer
from bench.churn.traffic import HABITS
from bench.fleet import scram_verifier
from reaper.actions.observe import observe_once
from reaper.actions.run import run_observed_pass, run_pass
from reaper.core.history_document import parse_history, render_history
from reaper.core.policy import one_rule_policy, policy_from_mapping
from reaper.core.reuse import History, forget_sessions, learned_threshold, statistics
from reaper.local.binaries import embedded_binaries
from reaper.local.cluster import LocalPostgres
from reaper.local.roles import REAPER_GRANTS, create_login_role
from reaper.pg.conninfo import ConnInfo

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from reaper.core.policy import Policy

APP_ROLE = "churn_app"
REAPER_ROLE = "churn_reaper"
# 15 minutes and 7.5 minutes of a real fleet (traffic.TIME_SCALE).
THRESHOLD_SECONDS = 10.0
PASS_INTERVAL = 5.0
# `reaper observe` while learning: a snapshot every 90 s of a real fleet.
OBSERVE_INTERVAL = 1.0
# 40 connections, 3 reserved for superusers and 3 for pg_use_reserved_connections; the monitor
# takes one of the other 34: 33 for the fleet.
SERVER_SETTINGS: dict[str, str | int] = {
    "max_connections": 40,
    "superuser_reserved_connections": 3,
    "reserved_connections": 3,
}
USABLE_SLOTS = 33
# While learning, room for every container: failures would change the traffic learned from.
LEARNING_SETTINGS: dict[str, str | int] = {"max_connections": 300}
COMPARED = (
    "nothing",
    "idle_session_timeout",
    "one_threshold",
    "pressure",
    "learned",
    "oracle",
    "pgbouncer",
)
GLOB = "lambda:*"
# The learned rule's bounds, scaled like the rest: a 90 s floor (above the longest handler
# time), an hour at most, a 3-minute margin over the 99th percentile, 20 idle periods first.
LEARNED_BOUNDS = {
    "quantile": 0.99,
    "margin_seconds": 2.0,
    "min_seconds": 1.0,
    "max_seconds": 40.0,
    "min_observations": 20,
}


@dataclass(frozen=True)
class Job:
    """One run: a scenario on a seed's traffic, for `duration` seconds."""

    scenario: str
    seed: int
    round: int
    duration: float
    # `learned`: the history document the `learn` run wrote.
    history: str | None = None


def policy_of(scenario: str) -> Policy:
    """The reaper's policy in a reaper scenario."""
    common: dict[str, Any] = {
        "idle_seconds": THRESHOLD_SECONDS,
        "source": f"churn {scenario}",
        "allow_short_thresholds": True,
        "max_terminations": 100,
    }
    if scenario == "pressure":
        return one_rule_policy(
            [GLOB], keep_newest=1, min_utilization=0.7, target_utilization=0.5, **common
        )
    policy = one_rule_policy([GLOB], **common)
    if scenario != "learned":
        return policy
    document = policy.model_dump(mode="json")
    document["rules"][0]["learned"] = LEARNED_BOUNDS
    return policy_from_mapping(document, source="churn learned")


def run_job(job: Job) -> dict[str, Any]:
    """Start the job's server, drive the traffic with its scenario's reaping; the summary."""
    settings = LEARNING_SETTINGS if job.scenario == "learn" else SERVER_SETTINGS
    with _server(settings) as (cluster, app_password, reaper_target):
        conninfo = cluster.conninfo(user=APP_ROLE, password=app_password)
        reap, interval, finish = _reaping(job, cluster, reaper_target)
        with _front(job, cluster, app_password) as front:
            if job.scenario == "idle_session_timeout":
                with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
                    admin.execute(
                        f"ALTER ROLE {APP_ROLE} SET idle_session_timeout = "
                        f"'{int(THRESHOLD_SECONDS * 1000)}ms'"
                    )
            outcome = asyncio.run(
                drive(
                    seed=job.seed,
                    duration=job.duration,
                    conninfo=front or conninfo,
                    monitor_dsn=cluster.dsn(),
                    role=APP_ROLE,
                    reap=reap,
                    pass_interval=interval,
                )
            )
        extra = finish()
    return {
        "scenario": job.scenario,
        "seed": job.seed,
        "round": job.round,
        **outcome.summary(track_sessions=job.scenario != "pgbouncer"),
        **extra,
    }


def learned_thresholds(history: History) -> dict[str, float | None]:
    """Per application, the idle threshold the learned rule's bounds give from `history`."""
    settings = policy_of("learned").rules[0].learned
    assert settings is not None
    applications = {habit.application for habit in HABITS}
    return {
        application: learned_threshold(stats, settings).seconds
        for (application, state), stats in statistics(history).items()
        if state == "idle" and application in applications
    }


@contextlib.contextmanager
def _server(
    settings: dict[str, str | int],
) -> Iterator[tuple[LocalPostgres, str, ConnInfo]]:
    """A throwaway PostgreSQL 18 with the applications' role and the reaper's."""
    with (
        LocalPostgres(embedded_binaries(), settings=settings) as cluster,
        psycopg.connect(cluster.dsn(), autocommit=True) as admin,
    ):
        app_password = secrets.token_urlsafe(18)
        reaper_password = secrets.token_urlsafe(18)
        # SCRAM's default 4,096 iterations would make every cold start CPU-bound here.
        create_login_role(admin, APP_ROLE, scram_verifier(app_password, iterations=1))
        grants = (*REAPER_GRANTS, "pg_use_reserved_connections")
        create_login_role(admin, REAPER_ROLE, reaper_password, grants=grants)
        target = ConnInfo.from_dsn(
            cluster.dsn(user=REAPER_ROLE, password=reaper_password), name="churn"
        )
        yield cluster, app_password, target


@contextlib.contextmanager
def _front(job: Job, cluster: LocalPostgres, app_password: str) -> Iterator[dict[str, str] | None]:
    """PgBouncer in front of the server for the `pgbouncer` scenario; None otherwise."""
    if job.scenario != "pgbouncer":
        yield None
        return
    with pgbouncer(
        server_port=cluster.port, user=APP_ROLE, password=app_password, pool_size=USABLE_SLOTS - 3
    ) as conninfo:
        yield conninfo


def _reaping(
    job: Job, cluster: LocalPostgres, target: ConnInfo
) -> tuple[Callable[[list[int]], None] | None, float, Callable[[], dict[str, Any]]]:
    """The scenario's reaping step, its interval, and what it adds to the summary at the end."""
    nothing: Callable[[], dict[str, Any]] = dict
    if job.scenario in ("nothing", "idle_session_timeout", "pgbouncer"):
        return None, PASS_INTERVAL, nothing
    if job.scenario == "oracle":
        admin = psycopg.connect(cluster.dsn(), autocommit=True)

        def oracle(dead: list[int]) -> None:
            admin.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", [dead])

        def close() -> dict[str, Any]:
            admin.close()
            return {}

        return oracle, PASS_INTERVAL, close
    if job.scenario == "learn":
        learning = History()

        def observe(_dead: list[int]) -> None:
            nonlocal learning
            learning = observe_once(target, learning).history

        def learned() -> dict[str, Any]:
            return {
                "history": render_history(learning, target=target.name),
                "learned_thresholds": learned_thresholds(learning),
            }

        return observe, OBSERVE_INTERVAL, learned
    policy = policy_of(job.scenario)
    if job.scenario != "learned":

        def reaper_pass(_dead: list[int]) -> None:
            run_pass(target, policy)

        return reaper_pass, PASS_INTERVAL, nothing
    assert job.history is not None, "the learned scenario starts from a learned history"
    # Learned on another server: its sessions are not these; what was learned carries over.
    history = forget_sessions(parse_history(job.history, source="learn", target=None).history)
    started_with = learned_thresholds(history)

    def learned_pass(_dead: list[int]) -> None:
        nonlocal history
        history = run_observed_pass(target, policy, history).history

    def thresholds() -> dict[str, Any]:
        return {
            "learned_thresholds": started_with,
            "learned_thresholds_at_end": learned_thresholds(history),
        }

    return learned_pass, PASS_INTERVAL, thresholds


def load_average() -> tuple[float, float, float]:
    """The machine's load average (1, 5 and 15 minutes), saved with the results."""
    return os.getloadavg()
