"""Which discovered instances become targets, with what login and policy, and which are skipped;
and the discovery settings. Pure: instances are values, nothing asks AWS."""

from __future__ import annotations

from typing import Any

import pytest

from reaper.aws.discovery import RdsInstance
from reaper.aws.targets import plan_discovered
from reaper.errors import SettingsError
from reaper.settings import DiscoveryTag, LambdaSettings, TargetSpec, load_lambda_settings

TAG = DiscoveryTag(key="idle-reaper", value="enabled")
VPC = "vpc-0123456789abcdef0"


def instance(identifier: str, **fields: Any) -> RdsInstance:
    """An available, tagged RDS PostgreSQL instance in VPC, unless `fields` say otherwise."""
    values: dict[str, Any] = {
        "identifier": identifier,
        "engine": "postgres",
        "status": "available",
        "instance_class": "db.t4g.medium",
        "host": f"{identifier}.abc.eu-west-1.rds.amazonaws.com",
        "port": 5432,
        "vpc_id": VPC,
        "tags": {"idle-reaper": "enabled"},
    }
    values.update(fields)
    return RdsInstance(**values)


def plan(*instances: RdsInstance, vpc_id: str | None = None, taken: set[str] | None = None):
    return plan_discovered(instances, TAG, vpc_id=vpc_id, taken=taken or set())


def test_each_tagged_instance_is_one_target_named_by_its_identifier_at_its_endpoint() -> None:
    (target,) = plan(instance("orders-db", port=6543))

    assert target.action == "pass"
    assert target.origin == "discovered"
    assert target.spec == TargetSpec(
        name="orders-db", host="orders-db.abc.eu-west-1.rds.amazonaws.com", port=6543
    )


@pytest.mark.parametrize(
    "tags",
    [{}, {"idle-reaper": "disabled"}, {"Idle-Reaper": "enabled"}, {"other": "enabled"}],
    ids=["untagged", "other-value", "key-case", "other-key"],
)
def test_an_instance_without_the_exact_tag_is_not_a_target(tags) -> None:
    assert plan(instance("legacy-db", tags=tags)) == []


@pytest.mark.parametrize("status", ["stopped", "stopping", "starting", "creating", "modifying"])
def test_an_instance_that_is_not_available_is_skipped_with_its_status(status) -> None:
    (target,) = plan(instance("archive-db", status=status))

    assert target.action == "skip"
    assert target.spec is None
    assert f"status is {status!r}" in (target.skip_reason or "")


def test_an_instance_that_may_be_auto_paused_is_skipped_although_it_reports_available() -> None:
    (target,) = plan(instance("reports-1", instance_class="db.serverless", auto_pause=True))

    assert target.action == "skip"
    assert "auto-pause" in (target.skip_reason or "")


def test_only_instances_of_the_given_vpc_are_targets() -> None:
    targets = plan(
        instance("here-db"), instance("elsewhere-db", vpc_id="vpc-0fedcba9876543210"), vpc_id=VPC
    )

    assert [t.name for t in targets] == ["here-db"]


def test_a_listed_target_keeps_its_name_and_the_instance_of_that_name_is_skipped() -> None:
    (target,) = plan(instance("orders-db"), taken={"orders-db"})

    assert "REAPER_TARGETS" in (target.skip_reason or "")


def test_tags_give_a_target_its_own_secret_and_policy() -> None:
    tags = {
        "idle-reaper": "enabled",
        "idle-reaper:secret-arn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:db-AbCdEf",
        "idle-reaper:policy-parameter": "/idle-reaper/orders/policy",
    }
    (target,) = plan(instance("orders-db", tags=tags))

    assert target.spec is not None
    assert target.spec.secret_id == tags["idle-reaper:secret-arn"]
    assert target.spec.iam_user is None
    assert target.spec.policy_parameter == "/idle-reaper/orders/policy"


def test_a_tag_naming_an_iam_user_makes_the_target_log_in_with_iam() -> None:
    (target,) = plan(
        instance("orders-db", tags={"idle-reaper": "enabled", "idle-reaper:iam-user": "reaper"})
    )

    assert target.spec is not None
    assert target.spec.iam_user == "reaper"


def test_an_instance_tagged_with_two_logins_is_a_problem_of_its_own_target() -> None:
    tags = {
        "idle-reaper": "enabled",
        "idle-reaper:secret-arn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:x",
        "idle-reaper:iam-user": "reaper",
    }
    problem, fine = plan(instance("a-db", tags=tags), instance("b-db"))

    assert problem.action == "error"
    assert "idle-reaper:secret-arn" in (problem.reason or "")
    assert "idle-reaper:iam-user" in (problem.reason or "")
    assert fine.action == "pass"


def test_discovered_targets_come_sorted_by_name() -> None:
    names = [t.name for t in plan(instance("c-db"), instance("a-db"), instance("b-db"))]
    assert names == ["a-db", "b-db", "c-db"]


# -- settings ---------------------------------------------------------------------------------


def settings(function_env: pytest.MonkeyPatch, **variables: str) -> LambdaSettings:
    for name, value in variables.items():
        function_env.setenv(f"REAPER_{name.upper()}", value)
    return load_lambda_settings()


def test_discovery_tag_is_key_equals_value(function_env) -> None:
    loaded = settings(function_env, discovery_tag="team:idle-reaper=on=yes")

    assert loaded.discovery_tag == DiscoveryTag(key="team:idle-reaper", value="on=yes")


@pytest.mark.parametrize("text", ["idle-reaper", "=enabled"])
def test_a_discovery_tag_without_key_and_value_is_refused(function_env, text) -> None:
    with pytest.raises(SettingsError, match="REAPER_DISCOVERY_TAG: expected key=value"):
        settings(function_env, discovery_tag=text)


def test_discovery_alone_is_a_complete_configuration_without_a_default_target(
    function_env,
) -> None:
    loaded = settings(function_env, discovery_tag="idle-reaper=enabled")

    assert loaded.target_entries() == ()


def test_discovery_with_iam_needs_no_db_host(function_env) -> None:
    loaded = settings(
        function_env, discovery_tag="idle-reaper=enabled", iam_auth="true", db_user="reaper"
    )

    assert loaded.db_host is None


def test_a_listed_target_may_have_its_own_login_and_policy_without_a_stack_login(
    function_env,
) -> None:
    loaded = settings(
        function_env,
        targets='[{"name": "w", "secret_id": "db/w", "policy_parameter": "/p/w"},'
        ' {"name": "r", "iam_user": "reaper", "host": "r.internal"}]',
    )

    writer, reader = loaded.target_entries()
    assert (writer.secret_id, writer.policy_parameter) == ("db/w", "/p/w")
    assert (reader.iam_user, reader.host) == ("reaper", "r.internal")


@pytest.mark.parametrize(
    ("targets", "named"),
    [
        ('[{"name": "w", "secret_id": "db/w", "iam_user": "u"}]', "give one login"),
        ('[{"name": "w", "iam_user": "u"}]', "missing for: w"),
    ],
    ids=["two-logins", "iam-user-without-host"],
)
def test_a_listed_target_with_an_impossible_login_is_refused(function_env, targets, named):
    with pytest.raises(SettingsError, match=named):
        settings(function_env, targets=targets)


def test_discovery_vpc_id_must_look_like_a_vpc_id(function_env) -> None:
    with pytest.raises(SettingsError, match="REAPER_DISCOVERY_VPC_ID"):
        settings(function_env, discovery_tag="idle-reaper=enabled", discovery_vpc_id="my-vpc")
