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
    MAX_LIST_ITEMS,
    MAX_NAME_BYTES,
    MAX_POLICY_BYTES,
    MAX_RULES,
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


@pytest.mark.parametrize(
    ("text", "named"),
    [
        pytest.param(
            '{"rules": [{"application_names": ["a"]}], "dry_run": true, "dry_run": false}',
            "duplicate key 'dry_run' at the top level",
            id="top-level",
        ),
        pytest.param(
            '{"rules": [{"application_names": ["a"], "states": {"idle": 900, "idle": 60}}]}',
            "duplicate key 'idle' in rules[0].states",
            id="nested",
        ),
        pytest.param(
            '{"rules": [{"application_names": ["a"]}], "exclude": {"users": ["etl"], "users": []}}',
            "duplicate key 'users' in exclude",
            id="exclusions",
        ),
    ],
)
def test_a_duplicated_key_is_refused_naming_the_key_and_its_path(text, named) -> None:
    # given a document whose reviewer and reaper could read different values
    # when it is parsed, then it is refused, naming the key and where it is
    with pytest.raises(PolicyError) as refused:
        parse_policy(text, source="ssm:/reaper/policy")
    assert named in str(refused.value)
    assert str(refused.value).startswith("invalid policy in ssm:/reaper/policy: ")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("dry_run", "yes"),
        ("dry_run", 1),
        ("dry_run", "true"),
        ("terminate_superuser_sessions", "false"),
        ("spare_listeners", 0),
        ("max_terminations", True),
        ("max_terminations", "20"),
        ("max_terminations", 20.0),
        ("min_utilization", "0.5"),
        ("min_utilization", True),
        ("allow_short_thresholds", "no"),
        ("version", True),
        ("version", "1"),
    ],
)
def test_a_value_of_another_type_is_refused_not_coerced(field, value) -> None:
    text = json.dumps({**MINIMAL, field: value})
    with pytest.raises(PolicyError, match=rf"{field}: .*\(got {re.escape(repr(value))}\)"):
        parse_policy(text, source="policy.json")


@pytest.mark.parametrize(
    ("rule_field", "value", "named"),
    [
        ("states", {"idle": "900"}, "rules[0].states.idle"),
        ("states", {"idle": True}, "rules[0].states.idle"),
        ("keep_newest", "2", "rules[0].keep_newest"),
        ("keep_newest", False, "rules[0].keep_newest"),
        ("client_addresses", [167772160], "rules[0].client_addresses"),
        ("users", [1], "rules[0].users[0]"),
        ("application_names", "lambda:*", "rules[0].application_names"),
        ("name", 7, "rules[0].name"),
    ],
)
def test_a_rule_field_of_another_type_is_refused(rule_field, value, named) -> None:
    document = {"rules": [{"application_names": ["lambda:*"], rule_field: value}]}
    with pytest.raises(PolicyError, match=re.escape(named)):
        parse_policy(json.dumps(document), source="policy.json")


def test_integers_are_taken_where_seconds_or_a_fraction_are_asked_for() -> None:
    document = {
        "rules": [{"application_names": ["a"], "states": {"idle": 900}}],
        "min_utilization": 0,
        "target_utilization": 1,
    }
    policy = parse_policy(json.dumps(document), source="t")
    assert policy.rules[0].states["idle"] == 900.0
    assert (policy.min_utilization, policy.target_utilization) == (0.0, 1.0)


def _with_pattern(path: str, pattern: str) -> dict[str, object]:
    """MINIMAL with `pattern` as the one item of the list at `path`: rules[0].<list>[0] (in place
    of the rule's own application pattern when <list> is application_names) or
    exclude.<list>[0]."""
    place, field = path.removesuffix("[0]").split(".")
    if place == "exclude":
        return {**MINIMAL, "exclude": {field: [pattern]}}
    return {"rules": [{**MINIMAL["rules"][0], field: [pattern]}]}


LONG_NAME = "lambda:orders-service-production-eu-west-1-handler-v2-blue-green"


@pytest.mark.parametrize(
    ("path", "pattern", "reason"),
    [
        pytest.param(
            "exclude.application_names[0]",
            LONG_NAME,
            "cuts names to 63 bytes",
            id="exclusion-copied-from-a-64-byte-name",
        ),
        pytest.param(
            "rules[0].application_names[0]",
            "lambda:café-*",
            "outside printable ASCII",
            id="non-ascii-application",
        ),
        pytest.param(
            "exclude.application_names[0]", "lambda:café-*", "'é'", id="non-ascii-exclusion"
        ),
        pytest.param(
            "rules[0].application_names[0]",
            "lambda:\tjobs",
            "'\\t'",
            id="control-character-application",
        ),
        pytest.param("rules[0].users[0]", "é" * 32, "64 bytes", id="user-64-bytes"),
        pytest.param("rules[0].databases[0]", "d" * 64, "64 bytes", id="database-64-bytes"),
        pytest.param("exclude.users[0]", "u" * 70, "70 bytes", id="excluded-user"),
    ],
)
def test_a_pattern_postgresql_can_never_show_is_refused_with_the_reason(
    path, pattern, reason
) -> None:
    # given a pattern that pg_stat_activity can never show (cut to 63 bytes, or rewritten)
    # when it is validated, then it is refused: the session it was meant for would be missed
    with pytest.raises(PolicyError) as refused:
        parse_policy(json.dumps(_with_pattern(path, pattern)), source="policy.json")
    message = str(refused.value)
    assert f"{path}: " in message
    assert reason in message
    # one problem, one clause: no "too short" echo of the list that held it
    assert "at least 1 item" not in message


def test_names_up_to_63_bytes_are_taken_and_non_ascii_only_for_users_and_databases() -> None:
    # Role and database names are kept as created (only application_name is rewritten), so
    # non-ASCII patterns on them can match.
    document = {
        "rules": [
            {
                "application_names": [LONG_NAME[:MAX_NAME_BYTES]],
                "users": ["é" * 31],
                "databases": ["données*"],
            }
        ]
    }
    rule = parse_policy(json.dumps(document), source="t").rules[0]
    assert rule.application_names == (LONG_NAME[:63],)
    assert rule.users == ("é" * 31,)
    assert rule.databases == ("données*",)


@pytest.mark.parametrize(
    ("document", "named"),
    [
        pytest.param(
            {"rules": [{"application_names": [f"a{i}"]} for i in range(MAX_RULES + 1)]},
            ["rules: ", f"at most {MAX_RULES} items", f"not {MAX_RULES + 1}"],
            id="rules",
        ),
        pytest.param(
            {"rules": [{"application_names": [f"a{i}" for i in range(MAX_LIST_ITEMS + 1)]}]},
            ["rules[0].application_names: ", f"at most {MAX_LIST_ITEMS} items"],
            id="application-names",
        ),
        pytest.param(
            {**MINIMAL, "exclude": {"users": [f"u{i}" for i in range(MAX_LIST_ITEMS + 1)]}},
            ["exclude.users: ", f"at most {MAX_LIST_ITEMS} items"],
            id="excluded-users",
        ),
        pytest.param(
            {
                "rules": [
                    {
                        "application_names": ["a"],
                        "client_addresses": [f"10.0.{i}.0/24" for i in range(MAX_LIST_ITEMS + 1)],
                    }
                ]
            },
            ["rules[0].client_addresses: ", f"at most {MAX_LIST_ITEMS} items"],
            id="client-addresses",
        ),
    ],
)
def test_lists_beyond_their_limit_are_refused_naming_the_limit(document, named) -> None:
    with pytest.raises(PolicyError) as refused:
        parse_policy(json.dumps(document), source="policy.json")
    for text in named:
        assert text in str(refused.value)


def test_a_document_beyond_the_size_limit_is_refused_before_it_is_read() -> None:
    # given a valid document padded with whitespace to exactly the limit, and one byte more
    text = json.dumps(MINIMAL)
    at_limit = text + " " * (MAX_POLICY_BYTES - len(text))
    assert parse_policy(at_limit, source="t") == policy_from_mapping(MINIMAL, source="t")
    # when the longer one is parsed, then it is refused, naming its size and the limit
    with pytest.raises(PolicyError, match=f"65,537 bytes, over the limit of {MAX_POLICY_BYTES:,}"):
        parse_policy(at_limit + " ", source="t")


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('{"rules": [{"application_names": ["a"]}], "min_utilization": NaN}', "NaN"),
        ('{"rules": [{"application_names": ["a"]}], "max_terminations": Infinity}', "Infinity"),
        ("[" * 50_000, "nested too deeply"),
        (b'{"rules": "\xff"}', "not UTF-8"),
    ],
)
def test_what_is_not_plain_json_is_refused(text, named) -> None:
    with pytest.raises(PolicyError, match=named):
        parse_policy(text, source="t")


def test_a_message_names_the_first_problems_and_counts_the_rest() -> None:
    # given a document with 500 unknown keys, each with a long name
    document = {**MINIMAL, **{f"unknown_{i:03}_{'x' * 200}": i for i in range(500)}}
    # when it is validated, then the message is one short line naming the first ten
    with pytest.raises(PolicyError) as refused:
        policy_from_mapping(document, source="t")
    message = str(refused.value)
    assert "unknown_000_" in message
    assert "unknown_010_" not in message
    assert "and 490 more problem(s)" in message
    assert len(message) < 3_000


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


def test_schema_states_the_types_and_limits_the_validation_enforces() -> None:
    schema = policy_schema()
    properties, rule = schema["properties"], schema["$defs"]["Rule"]["properties"]
    assert properties["dry_run"]["type"] == "boolean"
    assert properties["max_terminations"]["type"] == "integer"
    assert properties["version"]["const"] == 1
    assert properties["rules"]["maxItems"] == MAX_RULES
    applications = rule["application_names"]
    assert applications["maxItems"] == MAX_LIST_ITEMS
    assert applications["items"] == {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_NAME_BYTES,
        "pattern": "^[ -~]+$",
    }
    users = rule["users"]["anyOf"][0]
    assert users["items"]["maxLength"] == MAX_NAME_BYTES
    assert "pattern" not in users["items"]


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
