"""Learning reuse on a real server: a pass that remembers, `reaper observe`, `reaper advise`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from reaper.actions.doctor import run_doctor
from reaper.actions.observe import observe_once
from reaper.actions.run import run_observed_pass
from reaper.core.checks import Status
from reaper.core.planning import Reason
from reaper.core.result import Outcome
from reaper.core.reuse import History, PeriodOutcome
from tests.fix_db import dsn_for
from tests.functional.reaping import (
    ended,
    policy_for,
    target_for,
    wait_past_threshold,
)
from tests.functional.test_cli import reaper_cli

if TYPE_CHECKING:
    from pathlib import Path

    from reaper.pg.conninfo import ConnInfo

# Trust one idle period; an application never reused gets 0.5 s, a reused one its gap + 300 s.
LEARNED = {
    "quantile": 1.0,
    "margin_seconds": 300,
    "min_seconds": 0.5,
    "max_seconds": 900,
    "min_observations": 1,
}


@pytest.fixture
def reaper_login(pg_server, role_factory) -> tuple[ConnInfo, str]:
    """The reaper's least-privilege role: its target and its DSN."""
    role = role_factory("reaper")
    return target_for(pg_server, role), dsn_for(pg_server, role.name, role.password)


def test_a_pass_that_remembers_holds_each_application_to_what_it_learned(
    session_factory, apps, reaper_login
) -> None:
    reaper, _dsn = reaper_login
    # given an API session and a cron session, both idle, seen by a first snapshot
    api = apps.connect("api")
    cron = apps.open("cron")
    history = observe_once(reaper, History()).history
    # and, after a while, the API session used again, the cron one not
    wait_past_threshold()
    api.execute("SELECT 1")
    # when a pass under a 600 s rule that learns runs with that history
    policy = policy_for(session_factory, rule={"states": {"idle": 600}, "learned": LEARNED})
    observed = run_observed_pass(reaper, policy, history)
    # then the cron session, never reused, is held to 0.5 s and terminated, the API's spared
    records = {r.application_name: r for r in observed.result.sessions}
    cron_record, api_record = records[apps.name("cron")], records[apps.name("api")]
    assert cron_record.outcome is Outcome.TERMINATED
    assert (cron_record.threshold_seconds, cron_record.threshold_source) == (0.5, "learned")
    assert cron_record.learned.never_reused
    assert ended(session_factory, cron)
    assert api_record.reason is Reason.YOUNGER_THAN_THRESHOLD
    assert api_record.threshold_source == "learned"
    assert api_record.learned.reuses == 1
    assert api_record.threshold_seconds == pytest.approx(300, abs=5)
    # and the next snapshot knows the reaper terminated the cron session: not "ended"
    after = observe_once(reaper, observed.history).history
    [cron_period] = after.periods[(apps.name("cron"), "idle")]
    assert cron_period.outcome is PeriodOutcome.TERMINATED
    [api_period] = after.periods[(apps.name("api"), "idle")]
    assert api_period.outcome is PeriodOutcome.REUSED
    assert api_period.seen_idle_seconds <= api_period.reused_within_seconds


def test_doctor_shows_the_thresholds_a_history_teaches_and_acts_on_nothing(
    session_factory, apps, reaper_login
) -> None:
    reaper, _dsn = reaper_login
    # given a cron session seen idle by a snapshot, and idle a while longer
    cron = apps.open("cron")
    history = observe_once(reaper, History()).history
    wait_past_threshold()
    policy = policy_for(session_factory, rule={"states": {"idle": 600}, "learned": LEARNED})
    # when the doctor checks the learning policy without a history, then with it
    without = {check.name: check for check in run_doctor(reaper, policy).checks}
    checks = {check.name: check for check in run_doctor(reaper, policy, history=history).checks}
    # then without one it warns that the static thresholds hold
    assert without["learned thresholds"].status is Status.WARN
    assert "would terminate 0" in without["policy"].summary
    # and with one it names the learned threshold and what a pass would do with it
    learned = checks["learned thresholds"]
    assert learned.status is Status.OK
    assert f"{apps.name('cron')} idle: 0.5s (learned: none of 1 idle periods reused)" in (
        learned.summary
    )
    assert "would terminate 1 of" in checks["policy"].summary
    assert apps.alive(cron)


def test_observe_builds_a_history_and_advise_reads_it_against_a_policy(
    tmp_path: Path, session_factory, apps, reaper_login
) -> None:
    _target, dsn = reaper_login
    history = str(tmp_path / "history.json")
    observe = ["observe", "--dsn", dsn, "--history", history, "--duration", "0.1"]
    # given two snapshots by `reaper observe`, an API session used again in between
    api = apps.connect("api")
    cron = apps.open("cron")
    first = reaper_cli(*observe)
    assert first.returncode == 0, first.stderr
    assert "client sessions; since the last snapshot" in first.stdout
    api.execute("SELECT 1")
    second = reaper_cli(*observe, "--json")
    assert second.returncode == 0, second.stderr
    # then the history has the reuse, and the cron session idle still; nothing was terminated
    seen = {a["application"]: a for a in json.loads(second.stdout)["applications"]}
    assert seen[apps.name("api")]["reuses"] == 1
    assert seen[apps.name("api")]["gap_before_reuse"]["max"] >= 0
    assert seen[apps.name("cron")]["idle_now"] == 1
    assert apps.alive(cron)

    # when `reaper advise` compares it with a 600 s rule
    selection = ["--application-name", f"{session_factory.prefix}*", "--idle-seconds", "600"]
    advised = reaper_cli("advise", "--history", history, *selection, "--json")
    assert advised.returncode == 0, advised.stderr
    advice = {a["application"]: a for a in json.loads(advised.stdout)["applications"]}
    api_advice = advice[apps.name("api")]
    assert (api_advice["rule"], api_advice["current_threshold_seconds"]) == ("cli", 600)
    assert api_advice["current_threshold_source"] == "static"
    assert api_advice["reused_after_termination_at_current"] == 0
    # too little seen for the default bounds (20 idle periods): no recommendation yet
    assert api_advice["recommended"]["seconds"] is None
    assert "of 20 idle periods observed" in api_advice["recommended"]["why"]
    text = reaper_cli("advise", "--history", history)
    assert text.returncode == 0, text.stderr
    assert apps.name("api") in text.stdout
    assert "idle age last seen before a reuse" in text.stdout


def test_a_history_file_of_another_target_is_refused(
    tmp_path: Path, pg_server, reaper_login
) -> None:
    _target, dsn = reaper_login
    history = str(tmp_path / "history.json")
    assert reaper_cli("observe", "--dsn", dsn, "--history", history, "--duration", "0.1")
    # the same server as another role: another target, whose history this is not
    other = reaper_cli(
        "run", "--dsn", pg_server.admin_dsn, "--history", history, "--application-name", "x*",
        "--dry-run",
    )  # fmt: skip
    assert other.returncode == 2
    assert "holds the history of" in other.stderr
    assert pg_server.admin_password not in other.stderr
