"""The Lambda handler against real PostgreSQL sessions, with SSM (moto) holding the policy.

What the handler prints is what CloudWatch would receive: the EMF blobs are parsed back and
checked (names, units, values, dimensions), the JSON log lines too.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
from botocore.stub import Stubber

from reaper.aws import _clients
from reaper.aws.fanout import MIN_PASS_SECONDS, timeouts_within
from reaper.core.policy import one_rule_policy, render_policy
from reaper.errors import (
    DeadlineExceededError,
    EventError,
    PolicyError,
    SettingsError,
    TargetsFailedError,
)
from reaper.pg.timeouts import Timeouts
from tests.fix_aws import emf_metrics, invoke, load_event, log_records, metric
from tests.functional import reaping

if TYPE_CHECKING:
    from tests.functional.conftest import Apps

UNREACHABLE_DSN = "postgresql://nobody:not-a-secret@127.0.0.1:1/postgres?connect_timeout=2"


def wait_past_threshold() -> None:
    """Sleep until sessions opened before the call are older than reaping.FUNCTION_THRESHOLD."""
    reaping.wait_past_threshold(reaping.FUNCTION_THRESHOLD)


def orders_policy(
    apps: Apps, idle_seconds: float = reaping.FUNCTION_THRESHOLD, **overrides: Any
) -> str:
    """Reap this test's 'orders' sessions idle for more than `idle_seconds` (JSON)."""
    policy = one_rule_policy(
        [apps.name("orders")],
        idle_seconds=idle_seconds,
        rule_name="orders",
        allow_short_thresholds=True,
        source="test",
        **overrides,
    )
    return render_policy(policy)


@pytest.fixture
def stale_orders(apps, policy_parameter, capsys) -> int:
    """The policy in SSM reaps this test's 'orders' sessions and one is idle past it; what
    the test printed so far is discarded. Returns the session's pid."""
    policy_parameter.put(orders_policy(apps))
    pid = apps.open("orders")
    wait_past_threshold()
    capsys.readouterr()
    return pid


@pytest.fixture
def writer_and_unreachable_reader(function_env, reaper_dsn) -> None:
    """REAPER_TARGETS: a reachable writer and a reader nobody listens for."""
    function_env.setenv(
        "REAPER_TARGETS",
        json.dumps(
            [{"name": "writer", "dsn": reaper_dsn}, {"name": "reader", "dsn": UNREACHABLE_DSN}]
        ),
    )


@pytest.mark.usefixtures("database_url")
@pytest.mark.slow
def test_scheduled_pass_with_policy_from_ssm_terminates_exactly_the_matching_idle_sessions(
    apps, policy_parameter, admin_conn, capsys
) -> None:
    # given a policy in SSM for this test's "orders" sessions, two of them idle past it, and
    # sessions it must spare: another application, an active query, a young idle session (a
    # threshold longer than the others' keeps it young on a loaded machine, where the moto
    # calls before the snapshot can take a second)
    threshold = 4 * reaping.FUNCTION_THRESHOLD
    policy_parameter.put(orders_policy(apps, idle_seconds=threshold))
    stale = [apps.open("orders") for _ in range(2)]
    other_app = apps.open("billing")
    active = apps.open("orders", state="active")
    reaping.wait_past_threshold(threshold)
    young = apps.open("orders")
    capsys.readouterr()

    # when EventBridge's scheduled event arrives
    summary = invoke(load_event("scheduled.json"))

    # then exactly the two stale sessions are gone
    assert all(apps.ended(pid) for pid in stale)
    assert all(apps.alive(pid) for pid in (other_app, active, young))
    (target,) = summary["targets"]
    assert summary["event"] == "scheduled"
    assert summary["policy_source"] == f"SSM parameter {policy_parameter.name}"
    assert target["target"] == "default"
    assert target["status"] == "ok"
    assert target["counts"]["terminated"] == 2
    assert target["terminated_by_application"] == {apps.name("orders"): 2}
    # and the EMF metrics say so, per target, with the documented units and dimensions
    out = capsys.readouterr().out
    terminated = metric(out, "SessionsTerminated", Target="default")
    assert terminated.value == 2
    assert terminated.unit == "Count"
    assert terminated.namespace == "IdleReaper"
    assert terminated.dimension_sets == [["Target", "service"]]
    assert terminated.dimensions == {"Target": "default", "service": "idle-reaper"}
    assert metric(out, "SessionsExamined", Target="default").value >= 5
    assert metric(out, "SessionsMatched", Target="default").value >= 3
    assert metric(out, "TerminationsRefused", Target="default").value == 0
    assert metric(out, "TargetErrors", Target="default").value == 0
    max_connections = int(admin_conn.execute("SHOW max_connections").fetchone()[0])
    assert metric(out, "MaxConnections", Target="default").value == max_connections
    assert metric(out, "ClientConnections", Target="default").value >= 5
    utilization = metric(out, "ConnectionUtilization", Target="default")
    assert utilization.unit == "Percent"
    assert 0 < utilization.value <= 100
    oldest = metric(out, "OldestIdleSeconds", Target="default")
    assert oldest.unit == "Seconds"
    assert oldest.value >= reaping.FUNCTION_THRESHOLD
    by_app = metric(out, "SessionsTerminatedByApplication", Target="default")
    assert by_app.value == 2
    assert by_app.dimensions == {
        "Target": "default",
        "Application": apps.name("orders"),
        "service": "idle-reaper",
    }
    policy_errors = metric(out, "PolicyErrors")
    assert policy_errors.value == 0
    assert policy_errors.dimensions == {"service": "idle-reaper"}
    # and one audit line per terminated session
    audited = [r for r in log_records(out) if r.get("audit") == "session"]
    assert sorted(r["pid"] for r in audited) == sorted(stale)
    assert {r["outcome"] for r in audited} == {"terminated"}
    assert {r["application_name"] for r in audited} == {apps.name("orders")}


@pytest.mark.usefixtures("database_url")
@pytest.mark.slow
def test_policy_change_in_ssm_applies_on_the_next_invocation_once_the_cache_expires(
    apps, policy_parameter, function_env
) -> None:
    # given a dry-run policy in SSM, read without caching
    function_env.setenv("REAPER_POLICY_CACHE_SECONDS", "0")
    policy_parameter.put(orders_policy(apps, dry_run=True))
    pid = apps.open("orders")
    wait_past_threshold()
    first = invoke(load_event("scheduled.json"))
    assert first["targets"][0]["dry_run"] is True
    assert apps.alive(pid)

    # when an operator switches dry run off with put-parameter --overwrite
    policy_parameter.put(orders_policy(apps, dry_run=False))
    second = invoke(load_event("scheduled.json"))

    # then the next invocation applies it
    assert second["targets"][0]["dry_run"] is False
    assert second["targets"][0]["counts"]["terminated"] == 1
    assert apps.ended(pid)


@pytest.mark.usefixtures("database_url", "function_env")
@pytest.mark.slow
def test_policy_is_cached_across_warm_invocations_for_the_cache_time(
    apps, policy_parameter
) -> None:
    # given a dry-run policy read with the default 60-second cache
    policy_parameter.put(orders_policy(apps, dry_run=True))
    pid = apps.open("orders")
    wait_past_threshold()
    invoke(load_event("scheduled.json"))

    # when the parameter changes and the function is invoked again at once
    policy_parameter.put(orders_policy(apps, dry_run=False))
    second = invoke(load_event("scheduled.json"))

    # then the cached document still governs
    assert second["targets"][0]["dry_run"] is True
    assert apps.alive(pid)


BAD_POLICIES = [
    pytest.param(None, "ParameterNotFound", id="parameter-missing"),
    pytest.param('{"rules": [', "not valid JSON", id="not-json"),
    pytest.param(
        {"rules": [{"application_names": ["lambda:*"]}], "max_terminatons": 5},
        "max_terminatons",
        id="unknown-field",
    ),
    pytest.param(
        {"rules": [{"application_names": ["lambda:*"], "states": {"idle": 5}}]},
        "rules[0].states",
        id="invalid-value",
    ),
    pytest.param(
        '{"rules": [{"application_names": ["lambda:*"]}], "dry_run": true, "dry_run": false}',
        "duplicate key 'dry_run'",
        id="duplicate-key",
    ),
    pytest.param(
        {"rules": [{"application_names": ["lambda:*"]}], "dry_run": "false"},
        "dry_run: Input should be a valid boolean",
        id="string-for-boolean",
    ),
]


@pytest.mark.parametrize(("document", "named"), BAD_POLICIES)
@pytest.mark.usefixtures("database_url")
@pytest.mark.slow
def test_bad_policy_in_ssm_terminates_nothing_and_fails_visibly(
    apps, policy_parameter, capsys, document, named
) -> None:
    # given an idle session any policy would reap, and a bad (or missing) policy parameter
    if document is not None:
        policy_parameter.put(document)
    pid = apps.open("orders")
    wait_past_threshold()
    capsys.readouterr()

    # when the scheduled event arrives, then the invocation fails
    with pytest.raises(PolicyError) as raised:
        invoke(load_event("scheduled.json"))

    # and nothing was terminated, PolicyErrors is 1 and the error line names the problem
    assert named in str(raised.value)
    assert policy_parameter.name in str(raised.value)
    assert apps.alive(pid)
    out = capsys.readouterr().out
    assert metric(out, "PolicyErrors").value == 1
    assert not [m for m in emf_metrics(out) if m.name == "SessionsTerminated"]
    errors = [r for r in log_records(out) if r["level"] == "ERROR"]
    assert len(errors) == 1
    assert named in errors[0]["message"]
    assert errors[0]["error_type"] == "PolicyError"


@pytest.mark.usefixtures("database_url")
@pytest.mark.slow
def test_policy_parameter_denied_by_iam_terminates_nothing_and_fails_visibly(
    stale_orders, apps, policy_parameter, capsys
) -> None:
    # given a valid policy the function's role is not allowed to read
    with Stubber(_clients.ssm_provider().client) as denied:
        denied.add_client_error(
            "get_parameter",
            service_error_code="AccessDeniedException",
            service_message="User: arn:aws:sts::123456789012:assumed-role/reaper/fn is not "
            "authorized to perform: ssm:GetParameter",
            http_status_code=400,
        )

        # when the scheduled event arrives, then the invocation fails
        with pytest.raises(PolicyError, match="AccessDeniedException"):
            invoke(load_event("scheduled.json"))

    # and nothing was terminated, PolicyErrors is 1 and the error line names the parameter
    assert apps.alive(stale_orders)
    out = capsys.readouterr().out
    assert metric(out, "PolicyErrors").value == 1
    (error,) = [r for r in log_records(out) if r["level"] == "ERROR"]
    assert policy_parameter.name in error["message"]


@pytest.mark.usefixtures("database_url", "function_env")
def test_without_any_policy_source_the_conservative_default_applies(apps) -> None:
    # given no REAPER_POLICY_PARAMETER nor REAPER_POLICY_FILE, and a young lambda:* session
    pid = apps.open("orders")

    # when a pass runs
    summary = invoke(load_event("scheduled.json"))

    # then the built-in default (lambda:*, idle 15 minutes) spares it
    assert summary["policy_source"] == "built-in default policy"
    assert summary["targets"][0]["status"] == "ok"
    assert apps.alive(pid)


@pytest.mark.usefixtures("database_url")
@pytest.mark.slow
def test_event_with_an_unknown_field_is_refused_and_nothing_is_terminated(
    stale_orders, apps, capsys
) -> None:
    # given a stale session and a manual event with a misspelt field

    # when it is invoked, then the invocation fails naming the field
    with pytest.raises(EventError, match="dry_runn"):
        invoke({"action": "reap", "dry_runn": True})

    # and nothing was terminated
    assert apps.alive(stale_orders)
    out = capsys.readouterr().out
    assert not [m for m in emf_metrics(out) if m.name == "SessionsTerminated"]
    (error,) = [r for r in log_records(out) if r["level"] == "ERROR"]
    assert "dry_runn" in error["message"]


@pytest.mark.usefixtures("database_url")
@pytest.mark.slow
def test_alarm_going_to_alarm_runs_a_pass_at_once(stale_orders, apps) -> None:
    # given a stale session

    # when the DatabaseConnections alarm goes into ALARM
    summary = invoke(load_event("alarm.json"))

    # then a pass runs
    assert summary["event"] == "alarm"
    assert summary["action"] == "pass"
    assert apps.ended(stale_orders)


@pytest.mark.usefixtures("database_url")
@pytest.mark.slow
def test_alarm_returning_to_ok_runs_no_pass(stale_orders, apps, capsys) -> None:
    # given a stale session

    # when the alarm goes back to OK
    summary = invoke(load_event("alarm-ok.json"))

    # then nothing runs: no target, no target metric
    assert summary["action"] == "none"
    assert summary["targets"] == []
    assert apps.alive(stale_orders)
    out = capsys.readouterr().out
    assert {m.name for m in emf_metrics(out)} == {"PolicyErrors"}


@pytest.mark.usefixtures("database_url")
@pytest.mark.slow
def test_manual_dry_run_event_terminates_nothing_even_if_the_policy_would(
    stale_orders, apps, capsys
) -> None:
    # given a policy that terminates, and a stale session

    # when an operator sends the dry-run event
    summary = invoke(load_event("manual-dry-run.json"))

    # then the session is only reported
    assert summary["force_dry_run"] is True
    assert summary["targets"][0]["dry_run"] is True
    assert summary["targets"][0]["counts"]["would_terminate"] == 1
    assert apps.alive(stale_orders)
    out = capsys.readouterr().out
    assert metric(out, "SessionsTerminated", Target="default").value == 0
    (line,) = [r for r in log_records(out) if r.get("audit") == "session"]
    assert line["outcome"] == "would_terminate"
    assert line["pid"] == stale_orders


@pytest.mark.slow
def test_one_unreachable_target_does_not_stop_the_others_but_fails_the_invocation(
    stale_orders, apps, writer_and_unreachable_reader, capsys
) -> None:
    # given two targets, the reader unreachable, and a stale session on the writer's server

    # when the scheduled pass runs, then the invocation fails naming the reader
    with pytest.raises(TargetsFailedError, match="reader"):
        invoke(load_event("scheduled.json"))

    # and the writer was still reaped, each target reporting in a blob of its own
    assert apps.ended(stale_orders)
    out = capsys.readouterr().out
    assert metric(out, "SessionsTerminated", Target="writer").value == 1
    assert metric(out, "TargetErrors", Target="writer").value == 0
    reader_errors = metric(out, "TargetErrors", Target="reader")
    assert reader_errors.value == 1
    assert reader_errors.dimensions == {"Target": "reader", "service": "idle-reaper"}
    target_errors = [r for r in log_records(out) if r.get("audit") == "target_error"]
    assert [(r["target"], r["error_type"]) for r in target_errors] == [
        ("reader", "TargetUnreachableError")
    ]
    assert "not-a-secret" not in out


@pytest.mark.slow
def test_manual_event_naming_one_target_leaves_the_others_alone(
    stale_orders, apps, writer_and_unreachable_reader, capsys
) -> None:
    # given two targets, the reader unreachable

    # when an operator asks for the writer only
    summary = invoke({"action": "reap", "targets": ["writer"]})

    # then only the writer is visited
    assert [t["target"] for t in summary["targets"]] == ["writer"]
    assert apps.ended(stale_orders)
    out = capsys.readouterr().out
    assert not [m for m in emf_metrics(out) if m.dimensions.get("Target") == "reader"]


@pytest.mark.usefixtures("database_url")
@pytest.mark.slow
def test_manual_event_naming_an_unknown_target_is_refused(stale_orders, apps) -> None:
    # given one target ("default") and a stale session

    # when an operator names a target that does not exist, then the event is refused
    with pytest.raises(EventError, match="'writer' not configured"):
        invoke({"action": "reap", "targets": ["writer"]})
    assert apps.alive(stale_orders)


@pytest.mark.usefixtures("database_url")
@pytest.mark.slow
def test_no_pass_starts_when_the_deadline_leaves_no_time(
    stale_orders, apps, function_env, capsys
) -> None:
    # given a stale session and an invocation with less time left than the safety margin
    function_env.setenv("REAPER_DEADLINE_MARGIN_SECONDS", "5")

    # when it runs, then the target is reported as out of time and the invocation fails
    with pytest.raises(TargetsFailedError):
        invoke(load_event("scheduled.json"), timeout_seconds=4)
    assert apps.alive(stale_orders)
    out = capsys.readouterr().out
    assert metric(out, "TargetErrors", Target="default").value == 1
    (line,) = [r for r in log_records(out) if r.get("audit") == "target_error"]
    assert line["error_type"] == "DeadlineExceededError"


@pytest.mark.usefixtures("server_checks_passwords")
@pytest.mark.slow
def test_database_password_never_appears_in_the_output(
    apps, reaper_role, database_url, policy_parameter, capsys
) -> None:
    # given a pass that terminates a session and one that fails on a refused login
    policy_parameter.put(orders_policy(apps))
    apps.open("orders")
    wait_past_threshold()
    invoke(load_event("scheduled.json"))

    # when the password is wrong (a failing login echoes parts of the DSN in libpq's errors)
    bad_url = database_url.replace(reaper_role.password, reaper_role.password[::-1])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REAPER_DATABASE_URL", bad_url)
        with pytest.raises(TargetsFailedError):
            invoke(load_event("scheduled.json"))

    # then neither password is ever printed
    captured = capsys.readouterr()
    for secret in (reaper_role.password, reaper_role.password[::-1], apps.role.password):
        assert secret not in captured.out
        assert secret not in captured.err


@pytest.mark.parametrize(
    ("seconds_left", "expected"),
    [
        (50.0, Timeouts(connect_seconds=5, statement_ms=30_000, lock_ms=1_000)),
        (
            3.5,
            Timeouts(
                connect_seconds=3, statement_ms=3_500, lock_ms=1_000, idle_in_transaction_ms=3_500
            ),
        ),
        (
            MIN_PASS_SECONDS,
            Timeouts(
                connect_seconds=2, statement_ms=2_000, lock_ms=1_000, idle_in_transaction_ms=2_000
            ),
        ),
    ],
)
def test_a_pass_budget_bounds_every_timeout_of_the_reaper_connection(
    seconds_left, expected
) -> None:
    assert timeouts_within(seconds_left, connect_timeout=5) == expected


def test_a_budget_below_the_minimum_starts_no_pass() -> None:
    with pytest.raises(DeadlineExceededError):
        timeouts_within(MIN_PASS_SECONDS - 0.1, connect_timeout=5)


# Nothing to measure before the settings are known: Powertools then warns that no metric was
# published, which is expected here.
@pytest.mark.filterwarnings("ignore:No application metrics to publish:UserWarning")
@pytest.mark.usefixtures("function_env")
def test_impossible_settings_fail_the_invocation_before_anything_runs(capsys) -> None:
    # given no target configured at all
    # when the scheduled event arrives, then the invocation fails naming what is missing
    with pytest.raises(SettingsError, match="no target configured"):
        invoke(load_event("scheduled.json"))
    (error,) = [r for r in log_records(capsys.readouterr().out) if r["level"] == "ERROR"]
    assert error["error_type"] == "SettingsError"


@pytest.mark.usefixtures("database_url")
@pytest.mark.slow
def test_a_warm_function_learns_between_invocations_and_reports_the_gaps(
    apps, policy_parameter, capsys
) -> None:
    # given a rule that learns (one idle period is enough; never reused: NEVER_REUSED s, else
    # the gap plus 300 s) over a 600 s static threshold, an API session and a cron session; the
    # first pass learns from its own snapshot, so NEVER_REUSED is longer than a loaded machine
    # takes from opening the sessions to that snapshot
    never_reused = 3.0
    learned = {"min_seconds": never_reused, "margin_seconds": 300, "min_observations": 1}
    policy = json.loads(orders_policy(apps, idle_seconds=600))
    policy["rules"][0].update(application_names=[apps.name("*")], learned=learned)
    policy_parameter.put(policy)
    api = apps.connect("api")
    cron = apps.open("cron")
    # when a first invocation sees them, the API session is used again, and a second one runs
    first = invoke(load_event("scheduled.json"))
    reaping.wait_past_threshold(never_reused)
    api.execute("SELECT 1")
    capsys.readouterr()
    second = invoke(load_event("scheduled.json"))
    # then the first held both; the second learned: the cron session goes
    assert first["targets"][0]["counts"]["terminated"] == 0
    assert second["targets"][0]["terminated_by_application"] == {apps.name("cron"): 1}
    assert apps.ended(cron)
    out = capsys.readouterr().out
    # and its audit line says which threshold applied and why
    (line,) = [r for r in log_records(out) if r.get("audit") == "session"]
    assert (line["threshold_seconds"], line["threshold_source"]) == (never_reused, "learned")
    # and the idle age seen before the API session's reuse is a metric of its application
    gap = metric(out, "IdleGapBeforeReuse", Target="default", Application=apps.name("api"))
    assert gap.unit == "Seconds"
    assert 0 <= gap.value < never_reused
