"""The policy document: defaults, validation messages, schema and round trips."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from reaper.core.policy import (
    THRESHOLD_FLOOR_SECONDS,
    Policy,
    parse_policy,
    policy_from_mapping,
    policy_schema,
    render_policy,
)
from reaper.errors import PolicyError
from tests.unit.planning_data import policies_strategy

if TYPE_CHECKING:
    from collections.abc import Callable

MINIMAL = {"rules": [{"application_names": ["lambda:*"]}]}


def test_minimal_document_gets_safe_defaults() -> None:
    policy = policy_from_mapping(MINIMAL, source="t")
    assert policy.rules[0].name == "rule-1"
    assert dict(policy.rules[0].states) == {"idle": 900.0}
    assert policy.exclude.users == ("rdsadmin",)
    assert policy.exclude.client_addresses == ()
    assert not policy.terminate_superuser_sessions
    assert policy.spare_listeners
    assert policy.max_terminations == 50
    assert not policy.dry_run


def test_rdsadmin_stays_excluded_when_the_document_lists_other_users() -> None:
    policy = policy_from_mapping({**MINIMAL, "exclude": {"users": ["etl"]}}, source="t")
    assert policy.exclude.users == ("rdsadmin", "etl")


@pytest.mark.parametrize(
    ("document", "names"),
    [
        ({"rules": []}, ["rules", "at least one rule"]),
        ({}, ["rules", "Field required"]),
        ({**MINIMAL, "max_terminatons": 3}, ["max_terminatons", "Extra inputs", "3"]),
        ({**MINIMAL, "max_terminations": -1}, ["max_terminations", "-1"]),
        ({**MINIMAL, "min_utilization": 1.5}, ["min_utilization", "1.5"]),
        ({**MINIMAL, "target_utilization": "half"}, ["target_utilization", "half"]),
        (
            {"rules": [{"application_names": ["a"], "states": {"active": 600}}]},
            ["rules[0].states.active", "active"],
        ),
        (
            {"rules": [{"application_names": ["a"], "states": {"idle": 0}}]},
            ["rules[0].states.idle", "greater than 0"],
        ),
        (
            {"rules": [{"application_names": ["a"], "client_addresses": ["10.0.0.1/8"]}]},
            ["rules[0].client_addresses", "host bits"],
        ),
        (
            {"rules": [{"application_names": ["a"], "client_addresses": ["not-a-net"]}]},
            ["rules[0].client_addresses", "not-a-net"],
        ),
        (
            {**MINIMAL, "exclude": {"client_addresses": ["10.0.3.7/24"]}},
            ["exclude.client_addresses[0]", "host bits", "10.0.3.7/24"],
        ),
        (
            {**MINIMAL, "exclude": {"client_addresses": ["pgbouncer.internal"]}},
            ["exclude.client_addresses[0]", "pgbouncer.internal"],
        ),
        ({"rules": [{"application_names": []}]}, ["rules[0].application_names"]),
        ({"rules": [{"application_names": ["a"], "keep_newest": -2}]}, ["keep_newest", "-2"]),
        (
            {
                "rules": [
                    {"name": "x", "application_names": ["a"]},
                    {"name": "x", "application_names": ["b"]},
                ]
            },
            ["unique", "x"],
        ),
    ],
)
def test_invalid_document_error_names_the_field_and_value(document, names) -> None:
    with pytest.raises(PolicyError) as caught:
        policy_from_mapping(document, source="policy.json")
    message = str(caught.value)
    assert "policy.json" in message
    for name in names:
        assert name in message


def test_excluded_addresses_accept_single_hosts_and_blocks_of_both_families() -> None:
    blocks = ["10.0.3.7/32", "10.0.3.0/24", "fd00::/8"]
    policy = policy_from_mapping({**MINIMAL, "exclude": {"client_addresses": blocks}}, source="t")
    assert [str(block) for block in policy.exclude.client_addresses] == blocks
    assert parse_policy(render_policy(policy), source="again") == policy


def test_threshold_below_the_floor_is_refused_unless_the_policy_says_it_knows() -> None:
    short = {"rules": [{"application_names": ["a"], "states": {"idle": 5}}]}
    with pytest.raises(PolicyError, match=r"below the floor of 60 seconds.*allow_short_thresholds"):
        policy_from_mapping(short, source="t")
    accepted = policy_from_mapping({**short, "allow_short_thresholds": True}, source="t")
    assert accepted.rules[0].states["idle"] == 5
    assert THRESHOLD_FLOOR_SECONDS == 60


def test_not_json_is_a_policy_error_naming_the_source() -> None:
    with pytest.raises(PolicyError, match=r"ssm:/reaper/policy.*not valid JSON"):
        parse_policy("{rules: ", source="ssm:/reaper/policy")


def test_normalised_output_parses_back_to_the_same_policy() -> None:
    policy = policy_from_mapping(MINIMAL, source="t")
    assert parse_policy(render_policy(policy), source="again") == policy


def test_schema_describes_every_top_level_field() -> None:
    schema = policy_schema()
    assert set(schema["properties"]) == set(Policy.model_fields)
    assert schema["required"] == ["rules"]
    json.dumps(schema)


@settings(max_examples=200, deadline=None)
@given(policy=policies_strategy())
def test_random_policies_round_trip_through_json(policy: Policy) -> None:
    assert parse_policy(render_policy(policy), source="round trip") == policy


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "rules",
                    "application_names",
                    "states",
                    "idle",
                    "max_terminations",
                    "exclude",
                    "users",
                    "dry_run",
                    "keep_newest",
                    "client_addresses",
                    "x",
                ]
            ),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)


def _assert_valid_or_refused_by_name(parse: Callable[[], Policy]) -> None:
    """What every input must give: a policy that keeps the safety defaults, or a PolicyError
    that names the source and says what is wrong. Anything else (a TypeError, a pydantic error
    leaking out) propagates and fails the test."""
    try:
        policy = parse()
    except PolicyError as exc:
        message = str(exc)
        assert message.startswith("invalid policy in fuzz: ")
        assert message.removeprefix("invalid policy in fuzz: ").strip()
        event("refused")
        return
    event("valid")
    assert isinstance(policy, Policy)
    assert policy.rules
    assert all(rule.name and rule.application_names and rule.states for rule in policy.rules)
    assert "rdsadmin" in policy.exclude.users
    assert parse_policy(render_policy(policy), source="round trip") == policy


# A valid document with one field set to anything: valid results too, not only refusals.
_near_valid = st.builds(
    lambda field, value: {**MINIMAL, field: value},
    st.sampled_from(sorted(Policy.model_fields)),
    st.booleans() | st.integers(-2, 200) | st.floats(-0.5, 1.5) | _json_values,
)


@settings(max_examples=500, deadline=None)
@given(document=_json_values | _near_valid)
def test_random_documents_either_validate_or_raise_policy_error(document: object) -> None:
    _assert_valid_or_refused_by_name(lambda: policy_from_mapping(document, source="fuzz"))


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200) | st.binary(max_size=200))
def test_random_text_either_validates_or_raises_policy_error(text: str | bytes) -> None:
    _assert_valid_or_refused_by_name(lambda: parse_policy(text, source="fuzz"))


def test_the_built_in_default_policy_is_the_one_the_tuning_guide_shows() -> None:
    from reaper.aws.policy_source import DEFAULT_POLICY

    guide = (Path(__file__).resolve().parents[2] / "docs" / "tuning.md").read_text()
    section = guide.split("## The built-in default policy", 1)[1]
    shown = re.search(r"```json\n(.*?)```", section, flags=re.DOTALL)
    assert shown is not None
    assert policy_from_mapping(json.loads(shown[1]), source="docs/tuning.md") == DEFAULT_POLICY
