"""Repeated passes beside a busy pgbench: idle sessions go, busy ones are never touched.

pgbench's sessions run under an application name the policy matches, so only the threshold and
the re-verification at signal time keep them alive: they are never idle long enough.
"""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest
from psycopg import sql

from reaper.actions.run import run_pass
from reaper.core.result import Outcome
from tests.functional import reaping
from tests.functional.reaping import policy_for, target_for
from tests.functional.test_real_clients import PGBENCH

pytestmark = pytest.mark.skipif(PGBENCH is None, reason="pgbench is not installed")

CLIENTS = 16
SECONDS = 8
# Longer than reaping.THRESHOLD: under pgbench's load a session needs time to go idle and age.
THRESHOLD = 3 * reaping.THRESHOLD


@pytest.mark.slow
def test_passes_beside_pgbench_never_fail_a_transaction(
    pg_server, admin_conn, session_factory, role_factory
) -> None:
    # given a pgbench database and a policy matching pgbench's application name too
    app = role_factory("bench", grants=())
    admin_conn.execute(
        sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(app.name))
    )
    env = {
        **os.environ,
        "PGHOST": pg_server.host,
        "PGPORT": str(pg_server.port),
        "PGUSER": app.name,
        "PGPASSWORD": app.password,
        "PGDATABASE": "postgres",
        "PGAPPNAME": session_factory.app("pgbench"),
    }
    subprocess.run([PGBENCH, "-i", "-s", "2", "-q"], env=env, check=True, capture_output=True)
    reaper = target_for(pg_server, role_factory("reaper"))
    policy = policy_for(
        session_factory, rule={"states": {"idle": THRESHOLD}}, max_terminations=1000
    )
    # when pgbench runs with many clients while passes run again and again, and idle
    # application sessions keep arriving
    bench = subprocess.Popen(
        [PGBENCH, "-c", str(CLIENTS), "-j", "2", "-T", str(SECONDS), "-n"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    results = []
    opened = []
    try:
        while bench.poll() is None:
            for _ in range(3):
                conn = session_factory(
                    session_factory.app("lambda"), user=app.name, password=app.password
                )
                opened.append(session_factory.pid_of(conn))
            results.append(run_pass(reaper, policy))
            time.sleep(0.3)
        output = bench.communicate(timeout=60)[0]
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.communicate()
    # then pgbench saw no failure and lost no client
    assert bench.returncode == 0, output
    assert "aborted" not in output, output
    failed = re.search(r"number of failed transactions: (\d+)", output)
    assert failed is None or failed.group(1) == "0", output
    # and every termination was an idle application session, never a pgbench one
    terminated = [
        r for result in results for r in result.sessions if r.outcome is Outcome.TERMINATED
    ]
    assert terminated, "the passes should have reaped some idle sessions"
    assert {r.application_name for r in terminated} == {session_factory.app("lambda")}
    assert {r.pid for r in terminated} <= set(opened)
    assert all(r.idle_seconds is not None and r.idle_seconds >= THRESHOLD for r in terminated)
