"""A whole pass against real PostgreSQL sessions: each rule and each protection."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import pytest
from psycopg.pq import TransactionStatus

from reaper.actions.run import run_pass
from reaper.core.planning import Reason, plan
from reaper.core.policy import IDLE_STATES, one_rule_policy
from reaper.core.result import Outcome
from reaper.errors import AuthenticationError, PassLockSquattedError, VisibilityError
from reaper.pg import gateway
from tests.fix_db import wait_until
from tests.functional.reaping import (
    THRESHOLD,
    alive,
    ended,
    policy_for,
    target_for,
    wait_past_threshold,
)

if TYPE_CHECKING:
    import psycopg

MATCH_NOTHING = one_rule_policy(["lambda:nothing-matches-this"], idle_seconds=900, source="test")

# Each rule and each protection of a pass is the engine's safety: proven on every major.
pytestmark = pytest.mark.safety


@pytest.fixture
def stale_orders(apps) -> int:
    """An 'orders' session of this test, idle past THRESHOLD: its pid."""
    return apps.open_stale("orders", threshold=THRESHOLD)


def outcome_of(result, pid):
    return next(r for r in result.sessions if r.pid == pid)


def test_only_idle_sessions_past_the_threshold_are_terminated(
    session_factory, apps, reaper
) -> None:
    # given idle sessions of two applications, an active query and an idle transaction
    idle = [apps.open("orders") for _ in range(3)]
    active = apps.open("orders", state="active")
    in_txn = apps.open("orders", state="idle in transaction")
    other = session_factory.pid_of(
        session_factory("metabase", user=apps.role.name, password=apps.role.password)
    )
    wait_past_threshold()
    # when a pass runs
    result = run_pass(reaper, policy_for(session_factory))
    # then exactly the idle ones are gone
    assert sorted(r.pid for r in result.sessions if r.outcome is Outcome.TERMINATED) == sorted(idle)
    assert all(ended(session_factory, pid) for pid in idle)
    assert alive(session_factory, active)
    assert alive(session_factory, in_txn)
    assert alive(session_factory, other)
    assert outcome_of(result, active).reason is Reason.STATE_NOT_COVERED
    assert result.counts.terminated == 3


def test_young_sessions_are_spared(session_factory, apps, reaper) -> None:
    pid = apps.open("orders")
    result = run_pass(reaper, policy_for(session_factory, rule={"states": {"idle": 300}}))
    assert outcome_of(result, pid).reason is Reason.YOUNGER_THAN_THRESHOLD
    assert alive(session_factory, pid)


def test_own_backend_and_background_workers_are_never_planned(pg_server, reaper) -> None:
    # given a policy that matches every application in every idle state (dry run: shared servers)
    everything = one_rule_policy(
        ["*"],
        idle_seconds=0.001,
        states=IDLE_STATES,
        source="test",
        terminate_superuser_sessions=True,
        spare_listeners=False,
        allow_short_thresholds=True,
        dry_run=True,
    )
    # when it is planned against the live server
    with gateway.connect(reaper) as conn:
        snapshot = gateway.take_snapshot(conn)
    decisions = plan(snapshot, everything)
    # then the reaper's own backend and every non-client backend are protected
    by_pid = {d.session.pid: d for d in decisions.decisions}
    assert by_pid[snapshot.own_pid].reason is Reason.OWN_BACKEND
    workers = [s for s in snapshot.sessions if s.backend_type != "client backend"]
    assert {s.backend_type for s in workers} >= {"checkpointer", "autovacuum launcher"}
    assert all(by_pid[s.pid].reason is Reason.NOT_CLIENT_BACKEND for s in workers)
    assert all(d.session.backend_type == "client backend" for d in decisions.to_terminate)


def test_superuser_session_survives_a_non_superuser_reaper(session_factory, reaper) -> None:
    # given a superuser session under a matching application name, and a policy that allows it
    su = session_factory.pid_of(session_factory(session_factory.app("admin")))
    wait_past_threshold()
    # when a non-superuser reaper passes
    result = run_pass(reaper, policy_for(session_factory, terminate_superuser_sessions=True))
    # then it is reported refused, never signalled, and still alive
    record = outcome_of(result, su)
    assert (record.reason, record.outcome) == (Reason.SUPERUSER_NOT_SIGNALLABLE, Outcome.REFUSED)
    assert result.counts.refused == 1
    assert alive(session_factory, su)


def test_superuser_session_is_spared_by_default(session_factory, reaper) -> None:
    su = session_factory.pid_of(session_factory(session_factory.app("admin")))
    wait_past_threshold()
    result = run_pass(reaper, policy_for(session_factory))
    assert outcome_of(result, su).reason is Reason.SUPERUSER
    assert alive(session_factory, su)


def test_excluded_users_and_applications_are_spared(
    session_factory, apps, role_factory, reaper
) -> None:
    etl = role_factory("etl", grants=())
    by_user = session_factory.pid_of(
        session_factory(session_factory.app("etl"), user=etl.name, password=etl.password)
    )
    by_app = apps.open("cron")
    victim = apps.open("orders")
    wait_past_threshold()
    policy = policy_for(
        session_factory,
        exclude={"users": [etl.name], "application_names": [session_factory.app("cron")]},
    )
    result = run_pass(reaper, policy)
    assert outcome_of(result, by_user).reason is Reason.EXCLUDED_USER
    assert outcome_of(result, by_app).reason is Reason.EXCLUDED_APPLICATION
    assert alive(session_factory, by_user)
    assert alive(session_factory, by_app)
    assert ended(session_factory, victim)


def test_idle_in_transaction_is_terminated_when_the_rule_covers_it(
    session_factory, apps, reaper
) -> None:
    in_txn = apps.open("orders", state="idle in transaction")
    aborted = apps.open("orders", state="idle in transaction (aborted)")
    wait_past_threshold()
    policy = policy_for(
        session_factory,
        rule={"states": {"idle in transaction": 0.5, "idle in transaction (aborted)": 0.5}},
    )
    result = run_pass(reaper, policy)
    assert result.counts.terminated == 2
    assert ended(session_factory, in_txn)
    assert ended(session_factory, aborted)


def test_listen_session_is_spared(session_factory, apps, reaper) -> None:
    conn = apps.connect("notifier")
    pid = session_factory.pid_of(conn)
    conn.execute("LISTEN orders_changed")
    wait_past_threshold()
    result = run_pass(reaper, policy_for(session_factory))
    assert outcome_of(result, pid).reason is Reason.LISTENER
    assert alive(session_factory, pid)


def test_dry_run_terminates_nothing(session_factory, apps, reaper) -> None:
    pids = [apps.open("orders") for _ in range(3)]
    wait_past_threshold()
    result = run_pass(reaper, policy_for(session_factory, dry_run=True))
    assert result.dry_run
    assert result.counts.would_terminate == 3
    assert result.counts.terminated == 0
    assert all(alive(session_factory, pid) for pid in pids)


def test_dry_run_flag_overrides_a_real_policy(session_factory, apps, reaper) -> None:
    pid = apps.open("orders")
    wait_past_threshold()
    result = run_pass(reaper, policy_for(session_factory), force_dry_run=True)
    assert outcome_of(result, pid).outcome is Outcome.WOULD_TERMINATE
    assert alive(session_factory, pid)


def test_cap_terminates_the_oldest_first(session_factory, apps, reaper) -> None:
    pids = []
    for _ in range(4):
        pids.append(apps.open("orders"))
        time.sleep(0.05)  # distinct state_change instants
    wait_past_threshold()
    result = run_pass(reaper, policy_for(session_factory, max_terminations=2))
    assert result.counts.terminated == 2
    assert result.counts.skipped_by_cap == 2
    assert all(ended(session_factory, pid) for pid in pids[:2])
    assert all(alive(session_factory, pid) for pid in pids[2:])


def test_target_utilization_terminates_just_enough(session_factory, apps, reaper) -> None:
    pids = [apps.open("orders") for _ in range(5)]
    wait_past_threshold()
    with gateway.connect(reaper) as conn:
        picture = gateway.take_snapshot(conn).connections
    # a target that allows two fewer client connections than there are now
    target = (picture.client_connections - 2) / picture.usable_connections
    result = run_pass(reaper, policy_for(session_factory, target_utilization=target))
    assert result.counts.terminated == 2
    assert result.counts.skipped_by_target == 3
    terminated = [r.pid for r in result.sessions if r.outcome is Outcome.TERMINATED]
    assert all(ended(session_factory, pid) for pid in terminated)
    assert sum(alive(session_factory, pid) for pid in pids) == 3


def test_keep_newest_leaves_the_most_recent_sessions(session_factory, apps, reaper) -> None:
    pids = []
    for _ in range(3):
        pids.append(apps.open("orders"))
        time.sleep(0.05)
    wait_past_threshold()
    result = run_pass(reaper, policy_for(session_factory, rule={"keep_newest": 1}))
    assert result.counts.kept_as_newest == 1
    assert all(ended(session_factory, pid) for pid in pids[:2])
    assert alive(session_factory, pids[2])


def test_closed_pressure_gate_terminates_nothing(session_factory, apps, reaper) -> None:
    pid = apps.open("orders")
    wait_past_threshold()
    result = run_pass(reaper, policy_for(session_factory, min_utilization=0.99))
    assert result.gate_open is False
    assert outcome_of(result, pid).reason is Reason.GATE_CLOSED
    assert alive(session_factory, pid)


def test_open_pressure_gate_terminates(session_factory, apps, reaper) -> None:
    pid = apps.open("orders")
    wait_past_threshold()
    result = run_pass(reaper, policy_for(session_factory, min_utilization=0.0))
    assert result.gate_open is True
    assert ended(session_factory, pid)


@pytest.mark.parametrize(
    ("cidr", "terminated"), [("10.0.0.0/8", False), ("127.0.0.0/8", True), ("::1/128", False)]
)
def test_client_address_cidr_selects_sessions(
    session_factory, apps, reaper, cidr, terminated
) -> None:
    pid = apps.open("orders")  # over TCP from 127.0.0.1
    wait_past_threshold()
    result = run_pass(reaper, policy_for(session_factory, rule={"client_addresses": [cidr]}))
    assert (outcome_of(result, pid).outcome is Outcome.TERMINATED) is terminated
    assert ended(session_factory, pid) if terminated else alive(session_factory, pid)


@pytest.mark.parametrize(
    ("cidr", "spared"), [("127.0.0.1/32", True), ("10.0.0.0/8", False), ("::1/128", False)]
)
def test_sessions_from_an_excluded_address_are_spared(
    session_factory, apps, reaper, cidr, spared
) -> None:
    # given a stale session over TCP from 127.0.0.1, and an exclusion of an address block
    pid = apps.open_stale("orders", threshold=THRESHOLD)
    # when a pass runs
    result = run_pass(reaper, policy_for(session_factory, exclude={"client_addresses": [cidr]}))
    # then it is spared with its reason exactly when the block holds its address
    record = outcome_of(result, pid)
    assert record.client_addr == "127.0.0.1"
    if spared:
        assert (record.reason, record.outcome) == (Reason.EXCLUDED_ADDRESS, Outcome.SPARED)
        assert alive(session_factory, pid)
    else:
        assert record.outcome is Outcome.TERMINATED
        assert ended(session_factory, pid)


def test_database_patterns_select_sessions(session_factory, apps, reaper) -> None:
    in_postgres = apps.open("orders")
    in_template1 = apps.open("orders", dbname="template1")
    wait_past_threshold()
    result = run_pass(reaper, policy_for(session_factory, rule={"databases": ["template1"]}))
    assert outcome_of(result, in_postgres).reason is Reason.NO_RULE_MATCHES
    assert alive(session_factory, in_postgres)
    assert ended(session_factory, in_template1)


def test_session_that_ran_a_query_after_the_snapshot_is_spared(
    session_factory, apps, reaper
) -> None:
    # given a planned session
    conn = apps.connect("orders")
    pid = session_factory.pid_of(conn)
    gone_conn = apps.connect("orders")
    gone = session_factory.pid_of(gone_conn)
    wait_past_threshold()
    with gateway.connect(reaper) as reaper_conn:
        snapshot = gateway.take_snapshot(reaper_conn)
        planned = plan(snapshot, policy_for(session_factory)).to_terminate
        assert {d.session.pid for d in planned} == {pid, gone}
        # when one runs a query and the other disconnects before the signal
        conn.execute("SELECT 1")
        gone_conn.close()
        # its backend exits after the close returns: wait, or it may still be there to signal
        assert ended(session_factory, gone)
        outcomes = gateway.terminate(reaper_conn, [d.session for d in planned])
    # then neither is signalled, and the active one lives on
    assert outcomes == {pid: Outcome.CHANGED, gone: Outcome.VANISHED}
    assert alive(session_factory, pid)
    assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_reused_pid_is_not_signalled(session_factory, apps, reaper) -> None:
    # given a planned session whose recorded backend_start no longer matches (pid reuse)
    pid = apps.open("orders")
    wait_past_threshold()
    with gateway.connect(reaper) as reaper_conn:
        snapshot = gateway.take_snapshot(reaper_conn)
        [decision] = plan(snapshot, policy_for(session_factory)).to_terminate
        s = decision.session
        earlier = s.backend_start.replace(microsecond=(s.backend_start.microsecond + 1) % 10**6)
        outcomes = gateway.terminate(reaper_conn, [replace(s, backend_start=earlier)])
    assert outcomes == {pid: Outcome.VANISHED}
    assert alive(session_factory, pid)


def test_second_concurrent_pass_skips(session_factory, apps, reaper) -> None:
    pid = apps.open("orders")
    wait_past_threshold()
    with gateway.connect(reaper) as holder:
        assert gateway.try_pass_lock(holder)
        result = run_pass(reaper, policy_for(session_factory))
    assert result.skipped
    assert alive(session_factory, pid)
    # and once the first pass is over, the next one acts
    assert run_pass(reaper, policy_for(session_factory)).counts.terminated == 1


def test_a_pass_lock_held_by_a_stranger_fails_the_pass_naming_the_holder(
    session_factory, apps, reaper
) -> None:
    # given a stale session, and an application session that took the reaper's advisory lock
    pid = apps.open_stale("orders", threshold=THRESHOLD)
    squatter = apps.hold_pass_lock()
    # when a pass runs, then it fails naming the holder, instead of skipping quietly
    with pytest.raises(PassLockSquattedError) as caught:
        run_pass(reaper, policy_for(session_factory))
    holder = session_factory.pid_of(squatter)
    assert (
        f"pid {holder} (role {apps.role.name}, application_name '{apps.name('squatter')}')"
        in str(caught.value)
    )
    assert caught.value.holder_pids == (holder,)
    assert alive(session_factory, pid)


def test_two_passes_at_once_terminate_each_session_once(session_factory, apps, reaper) -> None:
    pids = [apps.open("orders") for _ in range(6)]
    wait_past_threshold()
    results = []
    errors: list[BaseException] = []

    def one_pass() -> None:
        try:
            results.append(run_pass(reaper, policy_for(session_factory)))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=one_pass) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sum(r.counts.terminated for r in results) == 6
    assert all(ended(session_factory, pid) for pid in pids)


def test_role_without_pg_monitor_is_refused_and_terminates_nothing(
    pg_server, session_factory, role_factory, stale_orders
) -> None:
    # given a reaper role that may signal but cannot see other roles' session states
    blind = target_for(pg_server, role_factory("reaper", grants=("pg_signal_backend",)))
    # when it runs a pass, then the pass is refused before anything is planned
    with pytest.raises(VisibilityError, match=r"cannot see .*pg_monitor"):
        run_pass(blind, policy_for(session_factory))
    assert alive(session_factory, stale_orders)


def test_role_without_pg_signal_backend_reports_refusals(
    pg_server, session_factory, role_factory, stale_orders
) -> None:
    # given a reaper role that sees every session but may signal none of another role's
    weak = target_for(pg_server, role_factory("reaper", grants=("pg_monitor",)))
    # when it runs a pass, then the stale session is reported refused and lives on
    result = run_pass(weak, policy_for(session_factory))
    assert outcome_of(result, stale_orders).outcome is Outcome.REFUSED
    assert result.counts.refused == 1
    assert alive(session_factory, stale_orders)


def test_a_session_the_role_may_not_signal_is_refused_only_when_a_real_pass_wanted_it(
    pg_server, session_factory, role_factory, stale_orders
) -> None:
    # given a reaper role that may signal none of another role's sessions
    weak = target_for(pg_server, role_factory("reaper", grants=("pg_monitor",)))
    # when the pressure gate is closed, nothing was wanted: nothing is refused
    closed = run_pass(weak, policy_for(session_factory, min_utilization=1.0))
    assert outcome_of(closed, stale_orders).reason is Reason.GATE_CLOSED
    assert closed.counts.refused == 0
    # and a dry run says what a real pass would refuse, under its own name
    dry = run_pass(weak, policy_for(session_factory, dry_run=True))
    assert outcome_of(dry, stale_orders).outcome is Outcome.WOULD_REFUSE
    assert (dry.counts.refused, dry.counts.would_refuse) == (0, 1)
    assert alive(session_factory, stale_orders)


def test_refusal_of_one_session_does_not_stop_the_others(
    pg_server, session_factory, apps, role_factory
) -> None:
    # given a reaper without pg_signal_backend: it may signal only its own role's sessions
    role = role_factory("reaper", grants=("pg_monitor",))
    own = session_factory.pid_of(
        session_factory(session_factory.app("orders"), user=role.name, password=role.password)
    )
    foreign = apps.open("orders")
    wait_past_threshold()
    result = run_pass(target_for(pg_server, role), policy_for(session_factory))
    assert outcome_of(result, own).outcome is Outcome.TERMINATED
    assert outcome_of(result, foreign).outcome is Outcome.REFUSED
    assert ended(session_factory, own)
    assert alive(session_factory, foreign)


def outside_any_transaction(conn: psycopg.Connection, admin_conn: psycopg.Connection) -> bool:
    """The reaper's connection is idle and its backend holds no transaction, as both the client
    (libpq's transaction status) and the server (pg_stat_activity) see it."""
    state, xact_start, backend_xid = admin_conn.execute(
        "SELECT state, xact_start, backend_xid FROM pg_stat_activity WHERE pid = %s",
        [conn.info.backend_pid],
    ).fetchone()
    client_status = conn.info.transaction_status
    return (client_status, state, xact_start, backend_xid) == (
        TransactionStatus.IDLE,
        "idle",
        None,
        None,
    )


def test_every_step_of_a_pass_leaves_no_transaction_open(
    session_factory, admin_conn, reaper, stale_orders
) -> None:
    # given the reaper's connection
    with gateway.connect(reaper) as conn:
        assert outside_any_transaction(conn, admin_conn)
        # when each step of a pass runs on it, then none leaves a transaction behind
        assert gateway.try_pass_lock(conn)
        assert outside_any_transaction(conn, admin_conn)
        snapshot = gateway.take_snapshot(conn)
        assert outside_any_transaction(conn, admin_conn)
        planned = [d.session for d in plan(snapshot, policy_for(session_factory)).to_terminate]
        assert gateway.terminate(conn, planned) == {stale_orders: Outcome.TERMINATED}
        assert outside_any_transaction(conn, admin_conn)


def test_pass_closes_its_connection_so_nothing_it_held_outlives_it(
    session_factory, admin_conn, reaper
) -> None:
    # given a finished pass
    run_pass(reaper, policy_for(session_factory))

    # then its backend is gone with the connection, and with it the pass lock
    def reaper_backends() -> int:
        row = admin_conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'idle-reaper'"
        ).fetchone()
        return row[0]

    # the backend exits just after the client closes: wait for it, never for a transaction
    wait_until(lambda: reaper_backends() == 0, message="reaper backend gone")


def test_reaper_connection_sets_its_name_and_timeouts(reaper) -> None:
    with gateway.connect(reaper) as conn:
        settings = conn.execute(
            "SELECT current_setting('application_name'), current_setting('statement_timeout'),"
            " current_setting('lock_timeout'),"
            " current_setting('idle_in_transaction_session_timeout')"
        ).fetchone()
        assert conn.autocommit
    assert settings == ("idle-reaper", "30s", "1s", "10s")


@pytest.mark.usefixtures("server_checks_passwords")
def test_wrong_password_is_an_authentication_error(pg_server, role_factory) -> None:
    role = role_factory("reaper")
    wrong = replace(role, password="not-the-password")
    with pytest.raises(AuthenticationError) as caught:
        run_pass(target_for(pg_server, wrong), MATCH_NOTHING)
    assert "not-the-password" not in str(caught.value)
    assert role.name in str(caught.value)
