"""Faults during a pass: a clear error, a non-zero exit, nothing wrongly terminated."""

from __future__ import annotations

import threading

import psycopg
import pytest

from reaper.cli.main import exit_code_for
from reaper.errors import ExitCode, PassAbortedError
from reaper.pg import gateway
from reaper.pg.conninfo import ConnInfo
from tests.fix_db import wait_until
from tests.functional.reaping import alive, target_for
from tests.harness.binaries import available_binaries
from tests.harness.cluster import CrashablePostgres

# A pass that fails must fail closed on every major.
pytestmark = pytest.mark.safety

# Long enough that only the event under test can end a blocked snapshot.
PATIENT = gateway.Timeouts(statement_ms=60_000, lock_ms=60_000)


def waiting_on_a_lock(watcher: psycopg.Connection, pid: int) -> bool:
    # pg_stat_activity itself joins pg_authid, so it would block too: ask the lock manager.
    row = watcher.execute("SELECT cardinality(pg_blocking_pids(%s)) > 0", [pid]).fetchone()
    return bool(row and row[0])


def lock_the_role_catalog(watcher: psycopg.Connection) -> psycopg.Connection:
    """Hold ACCESS EXCLUSIVE on pg_authid in an open transaction: the snapshot (which reads
    pg_roles) blocks behind it until the returned connection is closed."""
    # Warm the watcher's catalog caches first: a cache miss would read pg_authid and block too.
    waiting_on_a_lock(watcher, 0)
    locker = psycopg.connect(watcher.info.dsn, password=watcher.info.password)
    locker.execute("LOCK TABLE pg_catalog.pg_authid IN ACCESS EXCLUSIVE MODE")
    return locker


def snapshot_in_background(conn: psycopg.Connection, failures: list[BaseException]):
    def snapshot() -> None:
        try:
            gateway.take_snapshot(conn)
        except BaseException as exc:  # inspected by the test
            failures.append(exc)

    worker = threading.Thread(target=snapshot)
    worker.start()
    return worker


def test_statement_timeout_aborts_the_pass_with_a_clear_error(
    pg_server, admin_conn, role_factory
) -> None:
    # given a reaper connected with a short statement_timeout (and a long lock_timeout)
    reaper = target_for(pg_server, role_factory("reaper"))
    with gateway.connect(reaper, gateway.Timeouts(statement_ms=300, lock_ms=60_000)) as conn:
        locker = lock_the_role_catalog(admin_conn)
        try:
            # when its snapshot cannot finish in time
            with pytest.raises(PassAbortedError, match="statement_timeout") as caught:
                gateway.take_snapshot(conn)
        finally:
            locker.close()
        # then the pass stops with the "could not run safely" exit code
        assert exit_code_for(caught.value) == ExitCode.UNSAFE
        # and the reaper's connection is left outside any transaction
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_lock_timeout_aborts_the_pass_with_a_clear_error(
    pg_server, admin_conn, role_factory
) -> None:
    reaper = target_for(pg_server, role_factory("reaper"))
    with gateway.connect(reaper, gateway.Timeouts(lock_ms=300)) as conn:
        locker = lock_the_role_catalog(admin_conn)
        try:
            with pytest.raises(PassAbortedError, match="lock_timeout"):
                gateway.take_snapshot(conn)
        finally:
            locker.close()


def test_reaper_connection_killed_mid_pass_is_reported(pg_server, admin_conn, role_factory) -> None:
    reaper = target_for(pg_server, role_factory("reaper"))
    failures: list[BaseException] = []
    with gateway.connect(reaper, PATIENT) as conn:
        pid = conn.info.backend_pid
        locker = lock_the_role_catalog(admin_conn)
        try:
            worker = snapshot_in_background(conn, failures)
            wait_until(lambda: waiting_on_a_lock(admin_conn, pid), message="snapshot blocked")
            # from the lock holder: on PostgreSQL 15 the privilege check reads pg_authid
            locker.execute("SELECT pg_terminate_backend(%s)", [pid])
            worker.join(timeout=30)
        finally:
            locker.close()
    [failure] = failures
    assert isinstance(failure, PassAbortedError)
    assert "lost the connection" in str(failure)


@pytest.mark.parametrize("binaries", available_binaries(), ids=lambda b: f"pg{b.major}")
def test_server_shut_down_in_the_middle_of_a_pass(binaries) -> None:
    # given a private server (it is shut down) and a pass blocked inside its snapshot
    with CrashablePostgres(binaries, settings={"max_connections": 30}) as server:
        watcher = psycopg.connect(server.dsn(), autocommit=True)
        reaper = ConnInfo.from_dsn(server.dsn(), name="doomed")
        failures: list[BaseException] = []
        locker = None
        try:
            with gateway.connect(reaper, PATIENT) as conn:
                pid = conn.info.backend_pid
                locker = lock_the_role_catalog(watcher)
                worker = snapshot_in_background(conn, failures)
                wait_until(lambda: waiting_on_a_lock(watcher, pid), message="snapshot blocked")
                # when the server goes down while the pass waits
                server.shutdown_now()
                worker.join(timeout=30)
        finally:
            for conn in (watcher, *([locker] if locker else [])):
                conn.close()
    # then the pass fails with an error that says so, without the password
    [failure] = failures
    assert isinstance(failure, PassAbortedError)
    assert "lost the connection" in str(failure)
    assert server.password not in str(failure)
    assert exit_code_for(failure) == ExitCode.UNSAFE


def test_sessions_survive_a_pass_that_fails_before_terminating(
    pg_server, admin_conn, session_factory, role_factory
) -> None:
    # given an idle session and a pass whose snapshot times out
    app = role_factory("app", grants=())
    conn = session_factory(session_factory.app("orders"), user=app.name, password=app.password)
    pid = session_factory.pid_of(conn)
    reaper = target_for(pg_server, role_factory("reaper"))
    with gateway.connect(reaper, gateway.Timeouts(statement_ms=200, lock_ms=60_000)) as rc:
        locker = lock_the_role_catalog(admin_conn)
        try:
            with pytest.raises(PassAbortedError):
                gateway.take_snapshot(rc)
        finally:
            locker.close()
    # then nothing was terminated
    assert alive(session_factory, pid)
