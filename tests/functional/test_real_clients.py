"""Clients the project did not write: psql sessions and a pgbench run beside `reaper run`.

psql holds idle, idle-in-transaction, active and superuser sessions under several application
names; pgbench runs a workload at the same time. The reaper must terminate exactly the idle
sessions its flags select, and pgbench must see no failed transaction.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from psycopg import sql

from tests.fix_db import dsn_for, wait_until
from tests.functional.reaping import alive, ended, wait_past_threshold


def client_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    return None


PSQL = client_binary("psql")
PGBENCH = client_binary("pgbench")

pytestmark = pytest.mark.skipif(
    PSQL is None or PGBENCH is None, reason="psql and pgbench client binaries are not installed"
)


class PsqlSessions:
    """psql processes kept open on a pipe; each sends its statements and then waits."""

    def __init__(self, pg_server) -> None:
        self.pg_server = pg_server
        self.processes: list[subprocess.Popen[str]] = []

    def open(self, application_name: str, statements: str, *, user=None, password=None):
        env = {
            **os.environ,
            "PGAPPNAME": application_name,
            "PGHOST": self.pg_server.host,
            "PGPORT": str(self.pg_server.port),
            "PGUSER": user or self.pg_server.admin_user,
            "PGPASSWORD": password or self.pg_server.admin_password,
            "PGDATABASE": "postgres",
        }
        process = subprocess.Popen(
            [PSQL, "-X", "-q"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        assert process.stdin is not None
        process.stdin.write(statements + "\n")
        process.stdin.flush()
        self.processes.append(process)
        return process

    def close(self) -> None:
        for process in self.processes:
            process.kill()
            process.wait(timeout=10)
            if process.stdin is not None:
                process.stdin.close()


@pytest.fixture
def psql_sessions(pg_server):
    sessions = PsqlSessions(pg_server)
    try:
        yield sessions
    finally:
        sessions.close()


def reaper_run(dsn: str, application_name: str, *extra: str) -> subprocess.CompletedProcess:
    """`reaper run` as a separate process, selecting one application idle past 0.5 s."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "reaper",
            "run",
            "--dsn",
            dsn,
            *extra,
            "--application-name",
            application_name,
            "--idle-seconds",
            "0.5",
            "--allow-short-thresholds",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def pids_of(admin_conn, application_name: str, state: str) -> list[int]:
    rows = admin_conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND state = %s",
        [application_name, state],
    ).fetchall()
    return sorted(row[0] for row in rows)


@pytest.mark.slow
def test_reaper_terminates_exactly_the_selected_psql_sessions_while_pgbench_runs(
    pg_server, admin_conn, session_factory, role_factory, psql_sessions
) -> None:
    prefix = session_factory.prefix
    app = role_factory("app", grants=())
    # pgbench creates its tables in public, which PostgreSQL 15+ closes to ordinary roles
    admin_conn.execute(
        sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(app.name))
    )
    as_app = {"user": app.name, "password": app.password}
    # given psql sessions: idle ones to reap, and everything that must survive
    for _ in range(3):
        psql_sessions.open(f"{prefix}-api", "SELECT 1;", **as_app)
    psql_sessions.open(f"{prefix}-api", "BEGIN; SELECT 1;", **as_app)
    psql_sessions.open(f"{prefix}-api", "SELECT pg_sleep(120);", **as_app)
    psql_sessions.open(f"{prefix}-api", "SELECT 1;")  # a superuser's psql
    psql_sessions.open(f"{prefix}-worker", "SELECT 1;", **as_app)
    wait_until(
        lambda: (
            len(pids_of(admin_conn, f"{prefix}-api", "idle")) == 4
            and pids_of(admin_conn, f"{prefix}-api", "active")
            and pids_of(admin_conn, f"{prefix}-api", "idle in transaction")
            and pids_of(admin_conn, f"{prefix}-worker", "idle")
        ),
        message="psql sessions in place",
    )
    superuser_pids = [
        row[0]
        for row in admin_conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND usename = %s",
            [f"{prefix}-api", pg_server.admin_user],
        ).fetchall()
    ]
    app_idle = sorted(set(pids_of(admin_conn, f"{prefix}-api", "idle")) - set(superuser_pids))
    survivors = (
        superuser_pids
        + pids_of(admin_conn, f"{prefix}-api", "active")
        + pids_of(admin_conn, f"{prefix}-api", "idle in transaction")
        + pids_of(admin_conn, f"{prefix}-worker", "idle")
    )
    pgbench_env = {
        **os.environ,
        "PGHOST": pg_server.host,
        "PGPORT": str(pg_server.port),
        "PGUSER": app.name,
        "PGPASSWORD": app.password,
        "PGDATABASE": "postgres",
        "PGAPPNAME": f"{prefix}-pgbench",
    }
    subprocess.run(
        [PGBENCH, "-i", "-s", "1", "-q"], env=pgbench_env, check=True, capture_output=True
    )
    wait_past_threshold()
    reaper = role_factory("reaper")
    dsn = dsn_for(pg_server, reaper.name, reaper.password)
    # when pgbench runs and the reaper passes beside it, also reaping idle sessions of pgbench's
    # database role: only its application name tells them apart
    bench = subprocess.Popen(
        [PGBENCH, "-c", "4", "-j", "2", "-T", "4", "-n"],
        env=pgbench_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        dry = reaper_run(dsn, f"{prefix}-api", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert all(alive(session_factory, pid) for pid in app_idle)
        done = reaper_run(dsn, f"{prefix}-api", "--json")
    finally:
        output, _ = bench.communicate(timeout=60)
    # then exactly the app role's idle psql sessions are gone, everything else lives
    assert done.returncode == 0, done.stderr
    assert all(ended(session_factory, pid) for pid in app_idle)
    assert all(alive(session_factory, pid) for pid in survivors)
    # and pgbench completed with no failed transaction
    assert bench.returncode == 0, output
    failed = re.search(r"number of failed transactions: (\d+)", output)
    assert failed is None or failed.group(1) == "0", output
    assert re.search(r"number of transactions actually processed: [1-9]", output), output
