"""The events the handler accepts: each shape is recognised, anything unknown or malformed is an
EventError naming the field."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from reaper.aws.events import Invocation, parse_event, select_targets
from reaper.errors import EventError
from tests.fix_aws import EVENTS_DIR, load_event


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("scheduled.json", Invocation("scheduled", "pass")),
        ("scheduler.json", Invocation("scheduled", "pass")),
        ("alarm.json", Invocation("alarm", "pass")),
        ("alarm-ok.json", Invocation("alarm", "none")),
        ("manual-dry-run.json", Invocation("manual", "pass", force_dry_run=True)),
        ("manual-target.json", Invocation("manual", "pass", targets=("default",))),
        ("doctor.json", Invocation("manual", "doctor")),
    ],
)
def test_every_shipped_event_is_recognised(name, expected) -> None:
    invocation = parse_event(load_event(name))
    assert (
        invocation.kind,
        invocation.action,
        invocation.force_dry_run,
        invocation.targets,
    ) == (expected.kind, expected.action, expected.force_dry_run, expected.targets)


def test_every_file_in_events_is_covered_here() -> None:
    covered = {
        "scheduled.json",
        "scheduler.json",
        "alarm.json",
        "alarm-ok.json",
        "manual-dry-run.json",
        "manual-target.json",
        "doctor.json",
    }
    assert {path.name for path in EVENTS_DIR.glob("*.json")} == covered


def test_doctor_event_may_name_its_targets_and_never_runs_a_pass() -> None:
    invocation = parse_event({"action": "doctor", "targets": ["writer"]})
    assert (invocation.action, invocation.targets) == ("doctor", ("writer",))


def test_scheduler_input_with_placeholders_filled_in_is_a_scheduled_event() -> None:
    # EventBridge Scheduler fills <aws.scheduler.*> in the template's Input, and may send the
    # detail as the string "{}".
    scheduled = load_event("scheduler.json")
    scheduled["detail"] = "{}"
    assert parse_event(scheduled).kind == "scheduled"


def test_alarm_description_names_the_alarm_and_its_state() -> None:
    assert parse_event(load_event("alarm.json")).description == (
        "alarm orders-db-connections-high is ALARM"
    )


def test_insufficient_data_alarm_runs_no_pass() -> None:
    alarm = load_event("alarm.json")
    alarm["detail"]["state"]["value"] = "INSUFFICIENT_DATA"
    assert parse_event(alarm).action == "none"


def test_alarm_detail_tolerates_fields_aws_adds() -> None:
    # AWS owns the detail object: a new key there must not turn into a missed pass.
    alarm = load_event("alarm.json")
    alarm["detail"]["state"]["actionsSuppressedBy"] = "WaitPeriod"
    alarm["detail"]["alarmType"] = "MetricAlarm"
    assert parse_event(alarm).action == "pass"


def _with(name: str, path: tuple[str, ...], value: Any) -> dict[str, Any]:
    document = copy.deepcopy(load_event(name))
    node = document
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return document


REFUSED = [
    pytest.param(_with("scheduled.json", ("detial",), {}), "detial", id="envelope-typo"),
    pytest.param(
        _with("scheduled.json", ("detail", "dry_run"), True), "detail.dry_run", id="sched"
    ),
    pytest.param(_with("scheduled.json", ("source",), "my.app"), "source", id="sched-source"),
    pytest.param(_with("scheduled.json", ("time",), "yesterday"), "time", id="sched-time"),
    pytest.param(
        _with("alarm.json", ("detail", "state", "value"), "FIRING"),
        "detail.state.value",
        id="alarm-state",
    ),
    pytest.param(_with("alarm.json", ("source",), "aws.events"), "source", id="alarm-source"),
    pytest.param(
        _with("scheduled.json", ("detail-type",), "Object Created"),
        "detail-type",
        id="other-detail-type",
    ),
    pytest.param({"action": "reap", "dry_runn": True}, "dry_runn", id="manual-typo"),
    pytest.param({"action": "terminate-all"}, "action", id="manual-action"),
    pytest.param({"action": "reap", "dry_run": "yes"}, "dry_run", id="manual-dry-run-string"),
    pytest.param({"action": "reap", "targets": "writer"}, "targets", id="manual-targets-string"),
    pytest.param({"action": "reap", "targets": []}, "targets", id="manual-targets-empty"),
    pytest.param({"action": "reap", "targets": [" writer"]}, "targets[0]", id="manual-bad-name"),
    pytest.param({"dry_run": True}, "keys: dry_run", id="no-shape"),
    pytest.param([{"action": "reap"}], "JSON object", id="not-an-object"),
]


@pytest.mark.parametrize(("document", "named"), REFUSED)
def test_unknown_or_malformed_field_is_an_event_error_naming_it(document, named) -> None:
    with pytest.raises(EventError) as raised:
        parse_event(document)
    assert named in str(raised.value)


def test_manual_dry_run_false_leaves_the_policy_in_charge() -> None:
    assert parse_event({"action": "reap", "dry_run": False}).force_dry_run is False


@pytest.mark.parametrize(
    ("wanted", "expected"),
    [
        (None, ("writer", "reader")),
        (("reader",), ("reader",)),
        (("reader", "writer"), ("writer", "reader")),
    ],
)
def test_targets_are_selected_by_name_in_configuration_order(wanted, expected) -> None:
    assert select_targets(("writer", "reader"), wanted) == expected


def test_selecting_an_unconfigured_target_names_it_and_the_configured_ones() -> None:
    with pytest.raises(EventError, match=r"'replica' not configured; configured targets: writer"):
        select_targets(("writer",), ("replica",))


SECRET = "s3cret-Pa55"
DSN_WITH_PASSWORD = f"postgresql://reaper:{SECRET}@db.internal/postgres"


@pytest.mark.parametrize(
    ("document", "named"),
    [
        pytest.param({"action": "reap", "dsn": DSN_WITH_PASSWORD}, "dsn", id="unknown-field"),
        pytest.param({"action": "reap", "dry_run": DSN_WITH_PASSWORD}, "dry_run", id="bad-type"),
        pytest.param({"action": "reap", "targets": [DSN_WITH_PASSWORD]}, "targets[0]", id="name"),
        pytest.param({"action": DSN_WITH_PASSWORD}, "action", id="action"),
        pytest.param(
            _with("scheduled.json", ("detail", "password"), SECRET), "detail.password", id="detail"
        ),
    ],
)
def test_an_event_error_names_the_field_but_never_repeats_its_value(document, named) -> None:
    # given an event with a password in a field it should not have, or in the wrong shape
    # when it is parsed, then the error names the field, and the password is nowhere in it
    with pytest.raises(EventError) as raised:
        parse_event(document)
    assert named in str(raised.value)
    assert SECRET not in str(raised.value)


@pytest.mark.parametrize(
    "extra",
    [pytest.param({}, id="no-shape"), pytest.param({"action": "reap"}, id="manual")],
)
def test_an_event_with_200_000_unknown_keys_gives_a_short_message(extra) -> None:
    # given an event with 200,000 unknown keys, each 100 characters long
    document = {f"{i:06}{'k' * 94}": i for i in range(200_000)} | extra
    # when it is parsed, then the message names the first ten and counts the rest
    with pytest.raises(EventError) as raised:
        parse_event(document)
    message = str(raised.value)
    assert "000000kkk" in message
    assert "000010kkk" not in message
    assert "199,990 more" in message
    assert len(message) < 1_500
