"""`reaper invoke EVENT_FILE`: every event in events/ through the local Lambda emulation,
against a real PostgreSQL, with the policy in a file and the login in REAPER_DATABASE_URL.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from reaper.cli.invoke import invoke_main, local_context
from reaper.errors import EventError
from tests.fix_aws import EVENTS_DIR, emf_metrics, json_lines, log_records, metric
from tests.fix_db import dsn_for
from tests.functional.reaping import FUNCTION_THRESHOLD as THRESHOLD
from tests.functional.reaping import policy_document

EVENT_FILES = sorted(EVENTS_DIR.glob("*.json"))

# What each event does to a session idle past the policy's threshold (dry_run off).
REAPS = {
    "scheduled.json": True,
    "scheduler.json": True,
    "alarm.json": True,
    "alarm-ok.json": False,  # the alarm is back to OK: no pass
    "manual-dry-run.json": False,  # forced dry run: reported only
    "manual-target.json": True,
    "doctor.json": False,  # checks the setup, terminates nothing
}


@pytest.fixture
def local_function(pg_server, role_factory, session_factory, function_env, tmp_path) -> None:
    """The settings a developer gives `reaper invoke`: a DSN and a policy file."""
    reaper = role_factory("reaper")
    function_env.setenv("REAPER_DATABASE_URL", dsn_for(pg_server, reaper.name, reaper.password))
    policy = tmp_path / "policy.json"
    policy.write_text(policy_document([session_factory.app("orders")], THRESHOLD))
    function_env.setenv("REAPER_POLICY_FILE", str(policy))
    for name in ("AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_EXECUTION_ENV"):
        function_env.delenv(name, raising=False)


def response_of(out: str) -> dict[str, Any]:
    """The response document: the last line `reaper invoke` prints."""
    return json.loads(out.strip().splitlines()[-1])


def test_every_event_file_has_an_expected_outcome() -> None:
    assert sorted(path.name for path in EVENT_FILES) == sorted(REAPS)


@pytest.mark.parametrize("event_file", EVENT_FILES, ids=lambda path: path.stem)
def test_every_event_runs_through_reaper_invoke_and_prints_emf_metrics(
    event_file, local_function, apps, capsys
) -> None:
    # given a session idle past the policy's threshold
    pid = apps.open_stale("orders", threshold=THRESHOLD)
    capsys.readouterr()

    # when the event file is invoked locally
    exit_code = invoke_main(event_file)

    # then it succeeds, prints EMF metrics and the response, and did what the event asks
    out = capsys.readouterr().out
    assert exit_code == 0
    assert metric(out, "PolicyErrors").value == 0
    response = response_of(out)
    reaps = REAPS[event_file.name]
    if response["action"] == "pass":
        assert metric(out, "SessionsExamined", Target="default").value >= 1
        assert metric(out, "SessionsTerminated", Target="default").value == int(reaps)
    else:
        assert {m.name for m in emf_metrics(out)} == {"PolicyErrors"}
    if reaps:
        assert apps.ended(pid)
    else:
        assert apps.alive(pid)


def test_invoke_runs_the_handler_in_a_lambda_environment_and_restores_the_callers(
    local_function, capsys
) -> None:
    # given a caller without any Lambda runtime variable
    assert "AWS_LAMBDA_FUNCTION_NAME" not in os.environ

    # when an event is invoked with a function name and memory size
    exit_code = invoke_main(
        EVENTS_DIR / "scheduled.json", function_name="reaper-local", memory_mb=512
    )

    # then the handler saw a Lambda context and environment, and the caller's is back
    assert exit_code == 0
    out = capsys.readouterr().out
    record = log_records(out)[0]
    assert record["function_name"] == "reaper-local"
    assert record["function_memory_size"] == 512
    assert record["function_arn"].endswith(":function:reaper-local")
    assert record["service"] == "idle-reaper"
    assert "AWS_LAMBDA_FUNCTION_NAME" not in os.environ


def test_failing_handler_prints_lambdas_error_document_and_exits_1(
    local_function, function_env, tmp_path, capsys
) -> None:
    # given a policy file that is not valid
    bad_policy = tmp_path / "bad-policy.json"
    bad_policy.write_text('{"rules": [], "dry_run": true}')
    function_env.setenv("REAPER_POLICY_FILE", str(bad_policy))

    # when an event is invoked
    exit_code = invoke_main(EVENTS_DIR / "scheduled.json")

    # then the error document names the type and the field, after the metrics
    assert exit_code == 1
    out = capsys.readouterr().out
    error = response_of(out)
    assert error["errorType"] == "PolicyError"
    assert "rules" in error["errorMessage"]
    assert error["requestId"]
    assert metric(out, "PolicyErrors").value == 1


def test_event_file_that_is_not_json_is_a_clear_error(tmp_path, function_env) -> None:
    # given a file that is not JSON
    event_file = tmp_path / "event.json"
    event_file.write_text("action: reap\n")

    # when it is invoked, then nothing runs and the error names the file
    with pytest.raises(EventError, match=r"event\.json: not valid JSON"):
        invoke_main(event_file)


def test_event_file_that_repeats_a_key_is_refused_before_the_handler_runs(
    local_function, apps, tmp_path
) -> None:
    # given a manual event that reads as a dry run to its reviewer, a live pass to the runtime
    pid = apps.open_stale("orders", threshold=THRESHOLD)
    event_file = tmp_path / "event.json"
    event_file.write_text('{"action": "reap", "dry_run": true, "dry_run": false}')

    # when it is invoked, then nothing runs and the error names the key
    with pytest.raises(EventError, match="duplicate key 'dry_run' at the top level"):
        invoke_main(event_file)
    assert apps.alive(pid)


def test_an_event_holding_a_password_fails_without_repeating_it(
    local_function, tmp_path, capsys
) -> None:
    # given a manual event with a connection string pasted into a field it does not have
    event_file = tmp_path / "event.json"
    event_file.write_text(
        json.dumps({"action": "reap", "dsn": "postgresql://ops:Pa55-8e1f@db.internal/app"})
    )

    # when it is invoked
    exit_code = invoke_main(event_file)

    # then the error line and Lambda's error document name the field, never the password
    out = capsys.readouterr().out
    assert exit_code == 1
    error = response_of(out)
    assert error["errorType"] == "EventError"
    assert "dsn: Extra inputs are not permitted" in error["errorMessage"]
    assert any(r.get("error_type") == "EventError" for r in log_records(out))
    assert "Pa55-8e1f" not in out


# Nothing is measured before the settings are known: Powertools warns that no metric was
# published, which is expected here.
@pytest.mark.filterwarnings("ignore:No application metrics to publish:UserWarning")
def test_a_misspelt_variable_stops_the_invocation_before_any_pass(
    local_function, function_env, apps, capsys
) -> None:
    # given the policy file's variable misspelt (the built-in default would apply), and a
    # session idle past the file's threshold
    function_env.setenv("REAPER_POLICY_FIEL", os.environ["REAPER_POLICY_FILE"])
    function_env.delenv("REAPER_POLICY_FILE")
    pid = apps.open_stale("orders", threshold=THRESHOLD)

    # when an event is invoked, then it fails naming the variable and the one it resembles
    exit_code = invoke_main(EVENTS_DIR / "scheduled.json")
    error = response_of(capsys.readouterr().out)
    assert exit_code == 1
    assert error["errorType"] == "SettingsError"
    assert "REAPER_POLICY_FIEL (did you mean REAPER_POLICY_FILE?)" in error["errorMessage"]
    assert apps.alive(pid)


def test_missing_event_file_is_a_clear_error(tmp_path, function_env) -> None:
    with pytest.raises(EventError, match="cannot read event file"):
        invoke_main(tmp_path / "missing.json")


def test_local_context_counts_down_from_the_timeout() -> None:
    # given a context for a 30-second function
    context = local_context(timeout_seconds=30)

    # then the time left starts at the timeout and never grows
    first = context.get_remaining_time_in_millis()
    second = context.get_remaining_time_in_millis()
    assert 0 < second <= first <= 30_000
    assert context.log_group_name == "/aws/lambda/idle-reaper"
    assert "[$LATEST]" in context.log_stream_name


def test_every_printed_line_of_an_invocation_is_json(local_function, capsys) -> None:
    # CloudWatch parses EMF and log lines only when each line is one JSON document.
    invoke_main(EVENTS_DIR / "manual-dry-run.json")
    out = capsys.readouterr().out
    assert len(json_lines(out)) == len(out.strip().splitlines())
