"""Pass results become EMF metrics (one dimension set per blob) and audit log lines."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from typing import Any

import pytest

from reaper.aws import observability
from reaper.core.planning import Reason
from reaper.core.result import Counts, Outcome, PassResult, SessionRecord
from reaper.core.snapshot import Connections
from reaper.errors import DatabaseFullError, DeadlineExceededError, PassLockSquattedError
from tests.fix_aws import emf_blobs, emf_metrics, log_records, metric


def session(pid: int, outcome: Outcome, application_name: str = "lambda:orders") -> SessionRecord:
    return SessionRecord(
        pid=pid,
        user="app",
        database="orders",
        application_name=application_name,
        client_addr="10.0.3.17",
        state="idle",
        idle_seconds=1234.56,
        rule="lambda",
        reason=(
            Reason.NOT_SIGNALLABLE
            if outcome in (Outcome.REFUSED, Outcome.WOULD_REFUSE)
            else Reason.IDLE_TOO_LONG
        ),
        outcome=outcome,
    )


RESULT = PassResult(
    target="writer",
    dry_run=False,
    skipped=False,
    duration_seconds=0.0421,
    gate_open=True,
    server_version_num=180000,
    connections=Connections(
        client_connections=90,
        max_connections=100,
        superuser_reserved_connections=3,
        reserved_connections=0,
        terminated=3,
    ),
    oldest_idle_seconds=1234.56,
    counts=Counts(examined=95, matched=6, planned=4, terminated=3, refused=1),
    sessions=(
        session(101, Outcome.TERMINATED),
        session(102, Outcome.TERMINATED),
        session(103, Outcome.TERMINATED, application_name=""),
        session(104, Outcome.REFUSED),
        session(105, Outcome.SPARED),
    ),
)


# A pass on "writer" that examined nothing; the tests give it what they look at.
EMPTY = PassResult(target="writer", dry_run=False, skipped=False, duration_seconds=0.01)


def audited(result: PassResult, capsys) -> dict[str, list[dict[str, Any]]]:
    """Audit `result`: the log lines it gave, by their `audit` kind."""
    observability.audit(observability.logger, result)
    lines = defaultdict(list)
    for record in log_records(capsys.readouterr().out):
        lines[record.get("audit")].append(record)
    return lines


def test_a_pass_result_becomes_one_blob_of_target_metrics(capsys) -> None:
    # when a result is recorded
    observability.record_result(RESULT)

    # then the target's metrics share one blob with dimensions Target and service
    out = capsys.readouterr().out
    expected = {
        "SessionsExamined": (95, "Count"),
        "SessionsMatched": (6, "Count"),
        "SessionsTerminated": (3, "Count"),
        "TerminationsRefused": (1, "Count"),
        "ClientConnections": (90, "Count"),
        "MaxConnections": (100, "Count"),
        "ConnectionUtilization": (89.69, "Percent"),
        "OldestIdleSeconds": (1234.56, "Seconds"),
        "TargetErrors": (0, "Count"),
    }
    target_blob = emf_blobs(out)[0]
    assert target_blob["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["Target", "service"]]
    for name, (value, unit) in expected.items():
        found = metric(out, name, Target="writer")
        assert (found.value, found.unit, found.namespace) == (value, unit, "IdleReaper")


def test_terminations_are_counted_per_application_in_blobs_of_their_own(capsys) -> None:
    observability.record_result(RESULT)
    out = capsys.readouterr().out
    by_app = [m for m in emf_metrics(out) if m.name == "SessionsTerminatedByApplication"]
    assert {m.dimensions["Application"]: m.value for m in by_app} == {
        "lambda:orders": 2,
        "(none)": 1,  # CloudWatch refuses an empty dimension value
    }
    assert {tuple(map(tuple, m.dimension_sets)) for m in by_app} == {
        (("Target", "Application", "service"),)
    }


def test_a_skipped_pass_reports_no_session_metrics_and_pass_skipped_1(capsys) -> None:
    skipped = replace(EMPTY, skipped=True)
    observability.record_result(skipped)
    out = capsys.readouterr().out
    assert [m.name for m in emf_metrics(out)] == ["TargetErrors", "PassSkipped"]
    assert metric(out, "TargetErrors", Target="writer").value == 0
    assert metric(out, "PassSkipped", Target="writer").value == 1


def test_a_pass_that_ran_reports_pass_skipped_0_so_the_skip_alarm_has_data(capsys) -> None:
    observability.record_result(RESULT)
    assert metric(capsys.readouterr().out, "PassSkipped", Target="writer").value == 0


def test_a_failed_target_reports_target_errors_1(capsys) -> None:
    observability.record_target_error("reader")
    out = capsys.readouterr().out
    found = metric(out, "TargetErrors", Target="reader")
    assert (found.value, found.dimensions) == (1, {"Target": "reader", "service": "idle-reaper"})
    assert [m.name for m in emf_metrics(out)] == ["TargetErrors"]


@pytest.mark.parametrize(
    ("error", "metric_name"),
    [
        (PassLockSquattedError("held", holder_pids=(4242,)), "PassLockSquatted"),
        (DeadlineExceededError("late"), "DeadlineExceeded"),
        (DatabaseFullError("full", cause="server"), "ConnectionSlotsExhausted"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_an_error_with_a_metric_of_its_own_emits_it_beside_target_errors(
    error, metric_name, capsys
) -> None:
    observability.record_target_error("reader", error)
    out = capsys.readouterr().out
    assert [m.name for m in emf_metrics(out)] == ["TargetErrors", metric_name]
    assert metric(out, metric_name, Target="reader").value == 1


def test_a_squatted_pass_lock_has_an_error_line_of_its_own_naming_the_holder(capsys) -> None:
    error = PassLockSquattedError("the pass lock is held by pid 4242", holder_pids=(4242,))
    observability.log_target_error(observability.logger, "writer", error)
    (line,) = log_records(capsys.readouterr().out)
    assert (line["level"], line["audit"], line["holder_pids"]) == (
        "ERROR",
        "pass_lock_squatted",
        [4242],
    )
    assert line["error_type"] == "PassLockSquattedError"


def test_policy_errors_are_invocation_metrics_without_a_target(capsys) -> None:
    observability.record_policy_outcome(observability.metrics, failed=True)
    observability.metrics.flush_metrics()
    out = capsys.readouterr().out
    found = metric(out, "PolicyErrors")
    assert (found.value, found.dimensions) == (1, {"service": "idle-reaper"})


def test_audit_logs_each_terminated_and_refused_session_then_a_summary(capsys) -> None:
    # when a result is audited
    lines = audited(RESULT, capsys)

    # then each terminated or refused session has its line, the spared one none
    sessions = lines["session"]
    assert [(r["pid"], r["outcome"], r["level"]) for r in sessions] == [
        (101, "terminated", "INFO"),
        (102, "terminated", "INFO"),
        (103, "terminated", "INFO"),
        (104, "refused", "WARNING"),
    ]
    first = sessions[0]
    assert {k: first[k] for k in ("user", "database", "application_name", "client_addr")} == {
        "user": "app",
        "database": "orders",
        "application_name": "lambda:orders",
        "client_addr": "10.0.3.17",
    }
    assert (first["state"], first["idle_seconds"], first["target"]) == ("idle", 1234.6, "writer")
    # and one summary line for the target, with the utilization before and after
    (summary,) = lines["summary"]
    assert summary["counts"]["terminated"] == 3
    assert summary["utilization_before_percent"] == 92.78
    assert summary["utilization_after_percent"] == 89.69
    assert summary["duration_seconds"] == 0.042


@pytest.mark.parametrize(
    ("outcome", "level"),
    [(Outcome.WOULD_TERMINATE, "INFO"), (Outcome.WOULD_REFUSE, "WARNING")],
    ids=lambda value: getattr(value, "value", value),
)
def test_dry_run_sessions_are_audited_as_would_terminate_or_would_refuse(
    outcome, level, capsys
) -> None:
    # a dry run never reports a session refused: what a real pass would refuse has its own name
    dry = replace(EMPTY, dry_run=True, sessions=(session(201, outcome),))
    (line,) = audited(dry, capsys)["session"]
    assert (line["outcome"], line["level"], line["dry_run"]) == (outcome.value, level, True)


def test_a_pass_stopped_mid_terminate_audits_every_session_it_may_have_ended(capsys) -> None:
    # given a pass whose terminate statement failed part way
    stopped = replace(
        EMPTY,
        duration_seconds=3.2,
        counts=Counts(examined=3, planned=2, unconfirmed=2),
        sessions=(
            session(301, Outcome.UNCONFIRMED),
            session(302, Outcome.UNCONFIRMED),
            session(303, Outcome.SPARED),
        ),
        stopped_before_terminating="the terminate statement failed part way: timeout",
    )
    # when it is audited
    lines = audited(stopped, capsys)
    # then each planned session has a WARNING line, and the summary says why it stopped
    assert [(r["pid"], r["outcome"], r["level"]) for r in lines["session"]] == [
        (301, "unconfirmed", "WARNING"),
        (302, "unconfirmed", "WARNING"),
    ]
    (summary,) = lines["summary"]
    assert summary["status"] == "stopped"
    assert summary["stopped_before_terminating"].endswith("part way: timeout")


def test_a_superuser_reaper_is_warned_about_at_every_pass(capsys) -> None:
    warned = replace(EMPTY, warnings=("postgres is a superuser: it needs only pg_monitor",))
    (line,) = audited(warned, capsys)["warning"]
    assert (line["level"], line["target"]) == ("WARNING", "writer")
    assert line["warning"].startswith("postgres is a superuser")
