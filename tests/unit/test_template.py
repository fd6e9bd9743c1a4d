"""The SAM template keeps the deployment's safety rules: one pass at a time, no retries, least
privilege, a dry run first, and alarms on the metrics the handler emits.

Pure: the template is read as YAML; no AWS account, no database.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

import reaper
from reaper.core.budget import DEFAULT_NAME_TEMPLATE, NameTemplate
from reaper.core.policy import parse_policy
from reaper.pg.tls import RDS_CA_BUNDLE
from reaper.settings import METRICS_NAMESPACE
from tests.commands import cfn_lint

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = REPO_ROOT / "template.yaml"

# Values for the pseudo parameters when a test resolves a Fn::Sub string by hand.
PSEUDO_PARAMETERS = {
    "AWS::AccountId": "123456789012",
    "AWS::Partition": "aws",
    "AWS::Region": "eu-west-1",
    "AWS::StackName": "reaper-test",
}

# The actions that must always name their resource: the secrets and the database itself.
SENSITIVE_ACTION_PREFIXES = ("ssm:", "secretsmanager:", "kms:", "rds-db:")

METRIC_NAMES = (
    "SessionsExamined",
    "SessionsMatched",
    "SessionsTerminated",
    "TerminationsRefused",
    "ClientConnections",
    "MaxConnections",
    "ConnectionUtilization",
    "OldestIdleSeconds",
    "TargetErrors",
    "PolicyErrors",
    "SessionsTerminatedByApplication",
    "ConnectionBudgetUtilization",
    "PassSkipped",
    "PassLockSquatted",
    "DeadlineExceeded",
)

_RATE = re.compile(r"rate\((\d+) (minute|minutes|hour|hours|day|days)\)")
_UNIT_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}


class _CloudFormationLoader(yaml.SafeLoader):
    """SafeLoader that reads short-form intrinsics (!Ref, !Sub, !If, ...) as their long form."""


def _construct_intrinsic(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> Any:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if tag_suffix in ("Ref", "Condition"):
        return {tag_suffix: value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{tag_suffix}": value}


_CloudFormationLoader.add_multi_constructor("!", _construct_intrinsic)


def _load_template() -> dict[str, Any]:
    with TEMPLATE_PATH.open(encoding="utf-8") as stream:
        document: dict[str, Any] = yaml.load(stream, Loader=_CloudFormationLoader)
    return document


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return _load_template()


@pytest.fixture(scope="module")
def function(template: dict[str, Any]) -> dict[str, Any]:
    properties: dict[str, Any] = template["Resources"]["ReaperFunction"]["Properties"]
    return properties


def _defaults(template: dict[str, Any]) -> dict[str, str]:
    return {
        name: str(parameter["Default"])
        for name, parameter in template["Parameters"].items()
        if "Default" in parameter
    }


def _substitute(text: str, values: dict[str, str]) -> str:
    """Resolve ${Name} in a Fn::Sub string; an unknown name fails the test loudly."""
    return re.sub(r"\$\{([A-Za-z0-9:.]+)\}", lambda match: values[match.group(1)], text)


def _sub_values(template: dict[str, Any], **overrides: str) -> dict[str, str]:
    resource_names = {name: f"{name}-name" for name in template["Resources"]}
    return {**resource_names, **PSEUDO_PARAMETERS, **_defaults(template), **overrides}


def _both_branches(value: Any) -> list[Any]:
    """Every value a Fn::If may take, with AWS::NoValue left out."""
    if isinstance(value, dict) and "Fn::If" in value:
        _condition, when_true, when_false = value["Fn::If"]
        return [*_both_branches(when_true), *_both_branches(when_false)]
    if value == {"Ref": "AWS::NoValue"}:
        return []
    return [value]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _inline_statements(function: dict[str, Any]) -> list[dict[str, Any]]:
    statements: list[dict[str, Any]] = []
    for policy in function["Policies"]:
        if isinstance(policy, dict) and "Statement" in policy:
            for entry in policy["Statement"]:
                statements.extend(_both_branches(entry))
    return statements


def _schedule_period_seconds(expression: str) -> int:
    match = _RATE.fullmatch(expression)
    assert match, f"expected a rate() expression, got {expression!r}"
    amount, unit = int(match.group(1)), match.group(2).rstrip("s")
    return amount * _UNIT_SECONDS[unit]


def _alarm(template: dict[str, Any], metric_name: str) -> dict[str, Any]:
    alarms = [
        resource["Properties"]
        for resource in template["Resources"].values()
        if resource["Type"] == "AWS::CloudWatch::Alarm"
        and resource["Properties"]["MetricName"] == metric_name
    ]
    assert len(alarms) == 1, f"expected one alarm on {metric_name}, found {len(alarms)}"
    return alarms[0]


def test_function_runs_on_python_312_or_newer(function: dict[str, Any]) -> None:
    runtime = function["Runtime"]

    assert runtime.startswith("python3.")
    assert int(runtime.removeprefix("python3.")) >= 12


def test_function_architecture_defaults_to_arm64(
    template: dict[str, Any], function: dict[str, Any]
) -> None:
    assert function["Architectures"] == [{"Ref": "Architecture"}]
    assert template["Parameters"]["Architecture"]["Default"] == "arm64"
    assert set(template["Parameters"]["Architecture"]["AllowedValues"]) == {"arm64", "x86_64"}


def test_reserved_concurrency_is_opt_in_so_a_new_account_can_deploy(
    template: dict[str, Any], function: dict[str, Any]
) -> None:
    # Reserving even one execution fails where the account quota leaves under 100 unreserved
    # (new accounts have 10); the advisory lock keeps two passes from acting on one target
    # (tests/functional/test_pass.py::test_two_passes_at_once_terminate_each_session_once).
    parameter = template["Parameters"]["ReserveConcurrency"]

    assert parameter["Default"] == "false"
    assert function["ReservedConcurrentExecutions"] == {
        "Fn::If": ["ReserveOneExecution", 1, {"Ref": "AWS::NoValue"}]
    }
    assert template["Conditions"]["ReserveOneExecution"] == {
        "Fn::Equals": [{"Ref": "ReserveConcurrency"}, "true"]
    }


def test_every_schedule_period_outlasts_the_timeout_and_drives_the_missed_schedule_alarm(
    template: dict[str, Any], function: dict[str, Any]
) -> None:
    parameter = template["Parameters"]["ScheduleMinutes"]
    periods = template["Mappings"]["Schedule"]

    assert parameter["Default"] == "5"
    assert set(parameter["AllowedValues"]) == set(periods)
    for minutes, entry in periods.items():
        assert (
            _schedule_period_seconds(entry["Rate"]) == entry["PeriodSeconds"] == int(minutes) * 60
        )
        assert function["Timeout"] < entry["PeriodSeconds"]
    missed = _alarm(template, "Invocations")
    assert missed["Period"] == {
        "Fn::FindInMap": ["Schedule", {"Ref": "ScheduleMinutes"}, "PeriodSeconds"]
    }


def test_schedule_runs_the_function_on_the_schedule_parameter(function: dict[str, Any]) -> None:
    schedule = function["Events"]["Schedule"]

    assert schedule["Type"] == "ScheduleV2"
    assert schedule["Properties"]["ScheduleExpression"] == {
        "Fn::FindInMap": ["Schedule", {"Ref": "ScheduleMinutes"}, "Rate"]
    }


def test_scheduled_input_is_shaped_like_a_scheduled_event(
    template: dict[str, Any], function: dict[str, Any]
) -> None:
    raw_input = function["Events"]["Schedule"]["Properties"]["Input"]["Fn::Sub"]

    event = json.loads(_substitute(raw_input, _sub_values(template)))

    assert event["detail-type"] == "Scheduled Event"
    assert event["account"] == PSEUDO_PARAMETERS["AWS::AccountId"]
    assert event["detail"] == {}


def test_a_failed_or_stale_pass_is_never_retried(
    template: dict[str, Any], function: dict[str, Any]
) -> None:
    invoke_config = function["EventInvokeConfig"]
    schedule_retry = function["Events"]["Schedule"]["Properties"]["RetryPolicy"]
    rule_targets = template["Resources"]["ConnectionAlarmRule"]["Properties"]["Targets"]

    assert invoke_config["MaximumRetryAttempts"] == 0
    assert invoke_config["MaximumEventAgeInSeconds"] == 60
    assert schedule_retry["MaximumRetryAttempts"] == 0
    assert all(target["RetryPolicy"]["MaximumRetryAttempts"] == 0 for target in rule_targets)


def test_secrets_and_database_permissions_always_name_their_resource(
    function: dict[str, Any],
) -> None:
    sensitive = [
        statement
        for statement in _inline_statements(function)
        if any(
            action.startswith(SENSITIVE_ACTION_PREFIXES) for action in _as_list(statement["Action"])
        )
    ]

    assert {tuple(_as_list(statement["Action"])) for statement in sensitive} == {
        ("ssm:GetParameter",),
        ("secretsmanager:GetSecretValue",),
        ("kms:Decrypt",),
        ("rds-db:connect",),
    }
    for statement in sensitive:
        for entry in _as_list(statement["Resource"]):
            for resource in _both_branches(entry):
                _check_named(statement, resource)


def _check_named(statement: dict[str, Any], resource: Any) -> None:
    assert resource != "*", statement["Sid"]
    arn = resource.get("Fn::Sub") if isinstance(resource, dict) else resource
    if isinstance(arn, str) and "*" in arn:
        assert _scoped_wildcard(statement, arn), statement["Sid"]
    else:
        assert "*" not in json.dumps(resource), statement["Sid"]


def _scoped_wildcard(statement: dict[str, Any], arn: str) -> bool:
    """A wildcard only where targets need one, scoped to this account and Region: secrets
    tagged for the stack or under its name prefix, its targets' policy parameters,
    rds-db:connect on discovered instances for a named user."""
    scope = "arn:${AWS::Partition}:{service}:${AWS::Region}:${AWS::AccountId}:"
    tag_condition = statement.get("Condition", {}).get("StringEquals", {})
    if arn == scope.replace("{service}", "secretsmanager") + "secret:*":
        return tag_condition == {
            "secretsmanager:ResourceTag/idle-reaper:stack": {"Ref": "AWS::StackName"}
        }
    return arn in (
        scope.replace("{service}", "secretsmanager") + "secret:idle-reaper/${AWS::StackName}/*",
        scope.replace("{service}", "ssm") + "parameter/idle-reaper/${AWS::StackName}/targets/*",
        scope.replace("{service}", "rds-db") + "dbuser:*/${IamAuthUser}",
        scope.replace("{service}", "rds-db") + "dbuser:*/${DiscoveryIamUser}",
    )


def test_only_inline_statements_are_attached(function: dict[str, Any]) -> None:
    # SAM policy templates such as SSMParameterReadPolicy add "*" statements of their own; SAM
    # attaches the AWS managed VPC access policy for VpcConfig by itself (test_cfn checks it).
    assert all(
        isinstance(policy, dict) and set(policy) == {"Version", "Statement"}
        for policy in function["Policies"]
    )


def test_optional_permissions_exist_only_with_their_settings(function: dict[str, Any]) -> None:
    conditions = {
        entry["Fn::If"][1]["Sid"]: entry["Fn::If"][0]
        for policy in function["Policies"]
        if isinstance(policy, dict)
        for entry in policy["Statement"]
        if "Fn::If" in entry
    }

    assert conditions == {
        "ReadDatabaseSecret": "UseSecret",
        "DecryptDatabaseSecret": "HasSecretKmsKey",
        "ConnectWithIamToken": "HasDbResourceId",
        "DescribeDatabases": "UseDiscovery",
        "ConnectToDiscoveredWithIamToken": "UseDiscoveryWithIam",
        "ReadFunctionConcurrency": "UseBudget",
        "ListFunctionsAndConcurrencyMetrics": "UseBudget",
    }


def test_discovery_lists_databases_of_this_account_and_region_only(
    function: dict[str, Any],
) -> None:
    (describe,) = [s for s in _inline_statements(function) if s["Sid"] == "DescribeDatabases"]
    values = {**PSEUDO_PARAMETERS}

    assert sorted(describe["Action"]) == ["rds:DescribeDBClusters", "rds:DescribeDBInstances"]
    assert [_substitute(r["Fn::Sub"], values) for r in describe["Resource"]] == [
        "arn:aws:rds:eu-west-1:123456789012:db:*",
        "arn:aws:rds:eu-west-1:123456789012:cluster:*",
    ]


def test_the_budget_reads_only_and_needs_star_only_where_the_api_allows_nothing_narrower(
    function: dict[str, Any],
) -> None:
    budget = {
        s["Sid"]: s
        for s in _inline_statements(function)
        if s["Sid"] in ("ReadFunctionConcurrency", "ListFunctionsAndConcurrencyMetrics")
    }
    per_function = budget["ReadFunctionConcurrency"]
    unscoped = budget["ListFunctionsAndConcurrencyMetrics"]

    assert sorted(per_function["Action"]) == [
        "lambda:GetFunctionConcurrency",
        "lambda:ListProvisionedConcurrencyConfigs",
    ]
    assert _substitute(per_function["Resource"]["Fn::Sub"], PSEUDO_PARAMETERS) == (
        "arn:aws:lambda:eu-west-1:123456789012:function:*"
    )
    # These three take no resource type and no condition key: "*" is the only way to allow them.
    assert sorted(unscoped["Action"]) == [
        "cloudwatch:GetMetricData",
        "lambda:GetAccountSettings",
        "lambda:ListFunctions",
    ]
    assert unscoped["Resource"] == "*"
    # Nothing that changes a function or a metric: the budget proposes, a person applies.
    every_action = [a for s in _inline_statements(function) for a in _as_list(s["Action"])]
    writes = [
        action
        for action in every_action
        if action.startswith(("lambda:", "cloudwatch:"))
        and not action.split(":")[1].startswith(("Get", "List"))
    ]
    assert writes == []


def test_budget_alarm_fires_when_the_worst_case_exceeds_the_usable_slots(
    template: dict[str, Any], function: dict[str, Any]
) -> None:
    resource = next(
        r
        for r in template["Resources"].values()
        if r["Type"] == "AWS::CloudWatch::Alarm"
        and r["Properties"]["MetricName"] == "ConnectionBudgetUtilization"
    )
    alarm = resource["Properties"]

    assert resource["Condition"] == "UseBudget"
    assert alarm["Threshold"] == 100
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
    assert function["Environment"]["Variables"]["REAPER_BUDGET_NAME_TEMPLATE"] == {
        "Fn::If": ["UseBudget", {"Ref": "BudgetNameTemplate"}, {"Ref": "AWS::NoValue"}]
    }


def test_the_default_session_name_template_is_the_client_side_convention(
    template: dict[str, Any],
) -> None:
    default = template["Parameters"]["BudgetNameTemplate"]["Default"]

    assert default == DEFAULT_NAME_TEMPLATE
    assert str(NameTemplate(default)) == default


def test_policy_permission_names_exactly_the_policy_parameter(
    template: dict[str, Any], function: dict[str, Any]
) -> None:
    values = _sub_values(template)
    parameter_name = _substitute(
        template["Resources"]["PolicyParameter"]["Properties"]["Name"]["Fn::Sub"], values
    )
    (statement,) = [s for s in _inline_statements(function) if s["Sid"] == "ReadPolicyDocument"]

    arn = _substitute(statement["Resource"]["Fn::Sub"], values)

    assert arn == f"arn:aws:ssm:eu-west-1:123456789012:parameter{parameter_name}"
    assert function["Environment"]["Variables"]["REAPER_POLICY_PARAMETER"] == {
        "Ref": "PolicyParameter"
    }


# The policy the stack writes under PolicyManagement=ssm. CloudFormation rewrites the SSM
# parameter whenever this text changes, which would reset every deployed stack's tuned policy:
# change it only on purpose, and say so in the release notes.
PINNED_SSM_SEED = (
    '{"rules":[{"name":"lambda","application_names":["lambda:*"],"states":{"idle":900}}],'
    '"dry_run":true,"max_terminations":50}'
)


def _policy_value(template: dict[str, Any]) -> tuple[str, str, str]:
    condition, from_stack, seed = template["Resources"]["PolicyParameter"]["Properties"]["Value"][
        "Fn::If"
    ]
    return condition, from_stack["Fn::Sub"], seed


@pytest.mark.parametrize(("dry_run", "expected"), [("true", True), ("false", False)])
def test_stack_managed_policy_follows_the_dry_run_parameter(
    template: dict[str, Any], dry_run: str, expected: bool
) -> None:
    condition, raw_policy, _seed = _policy_value(template)

    text = _substitute(raw_policy, _sub_values(template, DryRun=dry_run))

    assert template["Conditions"][condition] == {
        "Fn::Equals": [{"Ref": "PolicyManagement"}, "stack"]
    }
    assert json.loads(text)["dry_run"] is expected
    assert parse_policy(text, source="template.yaml").dry_run is expected


def test_first_deploy_is_a_dry_run_with_the_documented_policy(template: dict[str, Any]) -> None:
    _condition, raw_policy, seed = _policy_value(template)
    documented = {
        "rules": [{"name": "lambda", "application_names": ["lambda:*"], "states": {"idle": 900}}],
        "dry_run": True,
        "max_terminations": 50,
    }

    assert template["Parameters"]["PolicyManagement"]["Default"] == "ssm"
    assert template["Resources"]["PolicyParameter"]["Properties"]["Type"] == "String"
    assert json.loads(seed) == documented
    assert json.loads(_substitute(raw_policy, _sub_values(template))) == documented
    assert parse_policy(seed, source="template.yaml").dry_run is True


def test_an_update_never_rewrites_a_policy_managed_in_ssm(template: dict[str, Any]) -> None:
    # Under ssm the value depends on no parameter and on no release: CloudFormation only writes
    # the parameter when its value changes, so an SSM edit survives every stack update.
    _condition, _raw_policy, seed = _policy_value(template)

    assert seed == PINNED_SSM_SEED
    assert "${" not in seed


def test_a_stack_deployed_with_default_policy_parameters_keeps_its_policy_when_upgraded(
    template: dict[str, Any],
) -> None:
    # Before PolicyManagement the value was the stack-managed text; with the default parameters
    # it is character for character the ssm seed, so CloudFormation sees no change to write.
    _condition, raw_policy, seed = _policy_value(template)

    assert _substitute(raw_policy, _sub_values(template)) == seed


def test_policy_parameters_are_refused_unless_the_stack_manages_the_policy(
    template: dict[str, Any],
) -> None:
    rule = template["Rules"]["PolicyParametersNeedStackManagement"]
    defaults = _defaults(template)

    assert rule["RuleCondition"] == {"Fn::Equals": [{"Ref": "PolicyManagement"}, "ssm"]}
    (assertion,) = rule["Assertions"]
    required = {
        equals["Fn::Equals"][0]["Ref"]: equals["Fn::Equals"][1]
        for equals in assertion["Assert"]["Fn::And"]
    }
    assert required == {
        name: defaults[name] for name in ("DryRun", "IdleSeconds", "MaxTerminations")
    }


def _evaluate(expression: Any, values: dict[str, str]) -> Any:
    """A rule's condition or assertion (Fn::And/Or/Not/Equals over Refs and strings)."""
    if not isinstance(expression, dict):
        return expression
    ((name, argument),) = expression.items()
    if name == "Ref":
        return values[argument]
    operands = [_evaluate(operand, values) for operand in argument]
    if name == "Fn::Equals":
        return operands[0] == operands[1]
    return {"Fn::And": all, "Fn::Or": any, "Fn::Not": lambda o: not o[0]}[name](operands)


def _refused_by(template: dict[str, Any], **parameters: str) -> list[str]:
    """The rules that refuse these parameters (the others at their defaults)."""
    values = {**_defaults(template), **parameters}
    return [
        name
        for name, rule in template["Rules"].items()
        if _evaluate(rule.get("RuleCondition", True), values)
        and not all(_evaluate(assertion["Assert"], values) for assertion in rule["Assertions"])
    ]


def test_the_server_is_verified_by_default_against_the_bundle_the_package_ships(
    template: dict[str, Any], function: dict[str, Any]
) -> None:
    defaults = _defaults(template)
    # Where the build installs the package: reaper/ at the root of /var/task.
    packaged = Path("/var/task") / RDS_CA_BUNDLE.relative_to(Path(reaper.__file__).parents[1])
    variables = function["Environment"]["Variables"]

    assert defaults["SslMode"] == "verify-full"
    assert defaults["SslRootCert"] == str(packaged)
    assert variables["REAPER_SSLMODE"] == {"Ref": "SslMode"}
    assert variables["REAPER_SSLROOTCERT"]["Fn::If"][:2] == [
        "HasSslRootCert",
        {"Ref": "SslRootCert"},
    ]


@pytest.mark.parametrize(
    ("ssl_mode", "ssl_root_cert", "refused"),
    [
        ("verify-full", None, False),
        ("verify-ca", None, False),
        ("verify-full", "/opt/certs/our-ca.pem", False),
        # Without a CA nothing can be verified: refused before anything is deployed.
        ("verify-full", "", True),
        ("verify-ca", "", True),
        # require verifies nothing: the explicit way back to the former behaviour.
        ("require", "", False),
        ("require", None, False),
    ],
)
def test_verifying_sslmodes_are_refused_without_a_ca(
    template: dict[str, Any], ssl_mode: str, ssl_root_cert: str | None, refused: bool
) -> None:
    # A secret login, so that the one rule a default stack breaks (no login given) holds.
    parameters = {"SslMode": ssl_mode, "DatabaseSecretArn": "arn:aws:secretsmanager:x"}
    if ssl_root_cert is not None:
        parameters["SslRootCert"] = ssl_root_cert

    assert _refused_by(template, **parameters) == (["VerifiedTlsNeedsCa"] if refused else [])


def test_every_environment_variable_is_a_string(function: dict[str, Any]) -> None:
    for name, value in function["Environment"]["Variables"].items():
        for branch in _both_branches(value):
            assert isinstance(branch, str | dict), name
            if isinstance(branch, dict):
                assert set(branch) <= {"Ref", "Fn::Sub"}, name


def test_environment_names_the_service_and_namespace_the_alarms_watch(
    template: dict[str, Any], function: dict[str, Any]
) -> None:
    variables = function["Environment"]["Variables"]

    # The stack's identity: two stacks in one account and Region never share a metric.
    assert variables["POWERTOOLS_SERVICE_NAME"] == {"Ref": "AWS::StackName"}
    for metric_name in (
        "ConnectionUtilization",
        "TerminationsRefused",
        "TargetErrors",
        "ConnectionSlotsExhausted",
        "ConnectionBudgetUtilization",
        "PassSkipped",
    ):
        alarm = _alarm(template, metric_name)
        dimensions = {d["Name"]: d["Value"] for d in alarm["Dimensions"]}
        # EMF metrics match only on the exact dimension set: Powertools' service plus Target.
        assert dimensions == {
            "service": variables["POWERTOOLS_SERVICE_NAME"],
            "Target": {"Ref": "AlarmTargetName"},
        }
        assert alarm["Namespace"] == variables["POWERTOOLS_METRICS_NAMESPACE"]
    assert template["Parameters"]["AlarmTargetName"]["Default"] == "default"
    assert template["Parameters"]["MetricsNamespace"]["Default"] == METRICS_NAMESPACE


def test_log_group_keeps_events_for_the_configured_retention(
    template: dict[str, Any], function: dict[str, Any]
) -> None:
    log_group = template["Resources"]["ReaperLogGroup"]["Properties"]
    values = _sub_values(template)

    assert log_group["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    assert function["LoggingConfig"]["LogGroup"] == {"Ref": "ReaperLogGroup"}
    assert _substitute(log_group["LogGroupName"]["Fn::Sub"], values) == "/idle-reaper/reaper-test"


def test_function_errors_alarm_fires_on_the_first_error(template: dict[str, Any]) -> None:
    alarm = _alarm(template, "Errors")

    assert alarm["Namespace"] == "AWS/Lambda"
    assert alarm["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": "ReaperFunction"}}]
    assert alarm["Threshold"] == 1
    assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"


def test_utilization_alarm_fires_above_the_threshold_parameter(template: dict[str, Any]) -> None:
    alarm = _alarm(template, "ConnectionUtilization")

    assert alarm["Threshold"] == {"Ref": "AlarmUtilizationPercent"}
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"


def test_refused_terminations_alarm_fires_on_the_first_refusal(template: dict[str, Any]) -> None:
    alarm = _alarm(template, "TerminationsRefused")

    assert alarm["Threshold"] == 1
    assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"


def test_full_database_alarm_fires_on_the_first_refused_login(template: dict[str, Any]) -> None:
    alarm = _alarm(template, "ConnectionSlotsExhausted")

    assert alarm["Threshold"] == 1
    assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert alarm["TreatMissingData"] == "notBreaching"
    assert {d["Name"]: d["Value"] for d in alarm["Dimensions"]} == {
        "service": {"Ref": "AWS::StackName"},
        "Target": {"Ref": "AlarmTargetName"},
    }


def test_skip_alarm_fires_when_every_pass_of_three_schedule_periods_was_skipped(
    template: dict[str, Any],
) -> None:
    alarm = _alarm(template, "PassSkipped")

    # each pass emits 1 or 0: a period's minimum is 1 only when no pass in it ran
    assert alarm["Statistic"] == "Minimum"
    assert alarm["Period"] == {
        "Fn::FindInMap": ["Schedule", {"Ref": "ScheduleMinutes"}, "PeriodSeconds"]
    }
    assert alarm["EvaluationPeriods"] == alarm["DatapointsToAlarm"] == 3
    assert alarm["Threshold"] == 1
    assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    # no pass in a period is what the target-errors and missed-schedule alarms report
    assert alarm["TreatMissingData"] == "notBreaching"


def test_alarms_notify_the_topic_only_when_one_is_given(template: dict[str, Any]) -> None:
    alarms = [
        resource["Properties"]
        for resource in template["Resources"].values()
        if resource["Type"] == "AWS::CloudWatch::Alarm"
    ]
    notify = {
        "Fn::If": [
            "NotifyAlarms",
            [{"Fn::If": ["HasAlarmTopic", {"Ref": "AlarmTopicArn"}, {"Ref": "AlarmTopic"}]}],
            {"Ref": "AWS::NoValue"},
        ]
    }

    assert len(alarms) >= 8
    for alarm in alarms:
        assert alarm["AlarmActions"] == notify, alarm["MetricName"]
        assert alarm["OKActions"] == notify, alarm["MetricName"]
    assert template["Conditions"]["NotifyAlarms"] == {
        "Fn::Or": [{"Condition": "HasAlarmTopic"}, {"Condition": "CreateAlarmTopic"}]
    }


def test_dashboard_is_valid_json_and_shows_every_metric(template: dict[str, Any]) -> None:
    raw_body = template["Resources"]["ReaperDashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]

    body = json.loads(_substitute(raw_body, _sub_values(template)))
    text = json.dumps(body)

    assert body["widgets"]
    for metric_name in METRIC_NAMES:
        assert f'MetricName=\\"{metric_name}\\"' in text, metric_name


def test_connection_alarm_triggers_a_pass_only_on_entering_alarm(
    template: dict[str, Any],
) -> None:
    rule = template["Resources"]["ConnectionAlarmRule"]
    permission = template["Resources"]["ConnectionAlarmRulePermission"]
    pattern = rule["Properties"]["EventPattern"]

    assert rule["Condition"] == permission["Condition"] == "HasConnectionAlarm"
    assert pattern["source"] == ["aws.cloudwatch"]
    assert pattern["detail-type"] == ["CloudWatch Alarm State Change"]
    assert pattern["detail"] == {
        "alarmName": [{"Ref": "ConnectionAlarmName"}],
        "state": {"value": ["ALARM"]},
    }
    assert permission["Properties"]["SourceArn"] == {"Fn::GetAtt": ["ConnectionAlarmRule", "Arn"]}


def test_build_needs_no_docker(template: dict[str, Any], function: dict[str, Any]) -> None:
    build_script = REPO_ROOT / "scripts" / "build_lambda.sh"

    assert template["Resources"]["ReaperFunction"]["Metadata"]["BuildMethod"] == "makefile"
    assert function["CodeUri"] == "."
    assert build_script.is_file()
    assert build_script.stat().st_mode & 0o111


def _project() -> dict[str, Any]:
    with (REPO_ROOT / "pyproject.toml").open("rb") as stream:
        project: dict[str, Any] = tomllib.load(stream)["project"]
    return project


def test_serverless_repo_metadata_is_complete(template: dict[str, Any]) -> None:
    application = template["Metadata"]["AWS::ServerlessRepo::Application"]
    homepage = _project()["urls"]["Homepage"]

    assert set(application) == {
        "Name",
        "Description",
        "Author",
        "SpdxLicenseId",
        "LicenseUrl",
        "ReadmeUrl",
        "HomePageUrl",
        "SourceCodeUrl",
        "Labels",
        "SemanticVersion",
    }
    assert application["Name"] == "idle-reaper"
    assert application["SpdxLicenseId"] == _project()["license"] == "Apache-2.0"
    assert application["HomePageUrl"] == homepage
    assert application["SourceCodeUrl"] == f"{homepage}/tree/v{application['SemanticVersion']}"
    assert application["Description"]
    assert application["Author"]
    assert application["Labels"]
    # Files the application points at must exist: `sam package` uploads them.
    assert (REPO_ROOT / application["ReadmeUrl"]).is_file()
    assert (
        (REPO_ROOT / application["LicenseUrl"])
        .read_text(encoding="utf-8")
        .lstrip()
        .startswith("Apache License\n                           Version 2.0, January 2004")
    )


def test_the_published_version_is_the_package_version(template: dict[str, Any]) -> None:
    application = template["Metadata"]["AWS::ServerlessRepo::Application"]
    with (REPO_ROOT / "pyproject.toml").open("rb") as stream:
        pyproject = tomllib.load(stream)

    # pyproject takes its version from reaper.__version__: one source, which the template copies.
    assert "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "reaper.__version__"}
    assert application["SemanticVersion"] == reaper.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", reaper.__version__)


def test_readme_links_are_absolute_for_the_repository_console() -> None:
    # The Serverless Application Repository renders README.md away from the repository: a
    # relative link there leads nowhere.
    homepage = _project()["urls"]["Homepage"]
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s]+)\)", readme)

    assert targets
    for target in targets:
        assert target.startswith("https://"), target
        if target.startswith(f"{homepage}/blob/main/"):
            path = target.removeprefix(f"{homepage}/blob/main/").split("#")[0]
            assert (REPO_ROOT / path).is_file(), target


def test_outputs_name_function_policy_logs_and_dashboard(template: dict[str, Any]) -> None:
    assert set(template["Outputs"]) >= {
        "FunctionArn",
        "FunctionName",
        "PolicyParameterName",
        "LogGroupName",
        "DashboardUrl",
        "AlarmTopicArn",
    }


def test_function_has_no_fixed_name(function: dict[str, Any]) -> None:
    # <stack>-reaper overflows Lambda's 64 characters under StackSet stack names.
    assert "FunctionName" not in function


def test_dashboard_name_is_unique_per_stack_and_region(template: dict[str, Any]) -> None:
    # Dashboards are global to an account: one stack name in two Regions must not collide.
    name = template["Resources"]["ReaperDashboard"]["Properties"]["DashboardName"]["Fn::Sub"]

    assert "${AWS::StackName}" in name
    assert "${AWS::Region}" in name


def test_dashboard_shows_only_this_stacks_metrics(template: dict[str, Any]) -> None:
    raw_body = template["Resources"]["ReaperDashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    body = json.loads(_substitute(raw_body, _sub_values(template)))
    expressions = [
        metric[0]["expression"]
        for widget in body["widgets"]
        for metric in widget["properties"]["metrics"]
        if isinstance(metric[0], dict)
    ]

    assert expressions
    for expression in expressions:
        assert 'service="reaper-test"' in expression, expression


@pytest.mark.parametrize(
    ("partition", "host"),
    [
        ("aws", "eu-west-1.console.aws.amazon.com"),
        ("aws-cn", "eu-west-1.console.amazonaws.cn"),
        ("aws-us-gov", "eu-west-1.console.amazonaws-us-gov.com"),
    ],
)
def test_dashboard_url_uses_the_console_of_the_stacks_partition(
    template: dict[str, Any], partition: str, host: str
) -> None:
    url_template, variables = template["Outputs"]["DashboardUrl"]["Value"]["Fn::Sub"]
    mapping_name, key, attribute = variables["ConsoleHost"]["Fn::FindInMap"]
    console_host = template["Mappings"][mapping_name][partition][attribute]

    url = _substitute(
        url_template, _sub_values(template, ConsoleHost=console_host, ReaperDashboard="d")
    )

    assert key == {"Ref": "AWS::Partition"}
    assert url.startswith(f"https://{host}/cloudwatch/home?region=eu-west-1#dashboards:name=")


def test_secret_kms_condition_names_the_service_endpoint_of_the_partition(
    function: dict[str, Any],
) -> None:
    (statement,) = [s for s in _inline_statements(function) if s["Action"] == "kms:Decrypt"]

    assert statement["Condition"]["StringEquals"]["kms:ViaService"] == {
        "Fn::Sub": "secretsmanager.${AWS::Region}.${AWS::URLSuffix}"
    }


def test_an_alarm_email_creates_a_topic_with_that_subscription(template: dict[str, Any]) -> None:
    topic = template["Resources"]["AlarmTopic"]

    assert topic["Condition"] == "CreateAlarmTopic"
    assert topic["Properties"]["Subscription"] == [
        {"Protocol": "email", "Endpoint": {"Ref": "AlarmEmail"}}
    ]
    assert template["Conditions"]["CreateAlarmTopic"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmEmail"}, ""]}]
    }
    assert template["Rules"]["OneAlarmTopic"]["Assertions"][0]["Assert"] == {
        "Fn::Equals": [{"Ref": "AlarmTopicArn"}, ""]
    }


@pytest.mark.parametrize(
    ("metric_name", "treat_missing_data"),
    [
        # No invocation in a period is exactly what these two watch for: missing data breaches.
        ("Invocations", "breaching"),
        ("TargetErrors", "breaching"),
        ("Errors", "notBreaching"),
        ("Throttles", "notBreaching"),
        ("TerminationsRefused", "notBreaching"),
        ("ConnectionUtilization", "missing"),
    ],
)
def test_a_reaper_that_stops_running_alarms(
    template: dict[str, Any], metric_name: str, treat_missing_data: str
) -> None:
    assert _alarm(template, metric_name)["TreatMissingData"] == treat_missing_data


def test_missed_schedule_alarm_fires_after_two_periods_without_an_invocation(
    template: dict[str, Any],
) -> None:
    alarm = _alarm(template, "Invocations")

    assert alarm["Namespace"] == "AWS/Lambda"
    assert alarm["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": "ReaperFunction"}}]
    assert alarm["Statistic"] == "Sum"
    assert alarm["EvaluationPeriods"] == alarm["DatapointsToAlarm"] == 2
    assert alarm["Threshold"] == 1
    assert alarm["ComparisonOperator"] == "LessThanThreshold"


def test_throttles_alarm_fires_on_the_first_throttle(template: dict[str, Any]) -> None:
    alarm = _alarm(template, "Throttles")

    assert alarm["Namespace"] == "AWS/Lambda"
    assert alarm["Threshold"] == 1
    assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"


# Per parameter: values its AllowedPattern accepts, then values it refuses.
PARAMETER_VALUES: dict[str, tuple[list[str], list[str]]] = {
    "DatabaseSecretArn": (
        [
            "",
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/reaper-AbC123",
            "arn:aws-us-gov:secretsmanager:us-gov-west-1:123456789012:secret:reaper-AbC123",
        ],
        # Without the random suffix the IAM permission names no secret: AccessDenied at run time.
        ["arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod", "prod/reaper"],
    ),
    "DatabaseSecretKmsKeyArn": (
        ["arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"],
        ["arn:aws:kms:eu-west-1:123456789012:alias/reaper"],
    ),
    "AlarmTopicArn": (["arn:aws:sns:eu-west-1:123456789012:ops-alarms"], ["ops-alarms"]),
    "AlarmEmail": (["ops@example.com"], ["ops"]),
    "DbResourceId": (["db-ABCDEFGHIJKLMNOP", "cluster-ABCDEFGHIJKLMNOP"], ["mydb"]),
    "Targets": (
        ["", '[{"name":"writer","host":"w.example.com"},{"name":"reader"}]'],
        [
            # A DSN may hold a password, and stack parameters are stored and shown in plain text.
            '[{"name":"w","dsn":"postgresql://u:secret@h/postgres"}]',
            '{"name":"writer"}',
        ],
    ),
    "AlarmTargetName": (["writer"], ["bad name"]),
    "MetricsNamespace": (["IdleReaper"], ["AWS/Lambda"]),
    "SslRootCert": (
        [
            "/var/task/reaper/pg/certs/rds-ca-bundle.pem",
            "/var/task/certs/rds-global-bundle.pem",
            "/opt/certs/our-ca.pem",
        ],
        ["certs/x.pem"],
    ),
    "IamAuthUser": (["idle_reaper"], ["idle reaper"]),
    "BudgetNameTemplate": (
        ["lambda:{function}", "", "{function}/prod"],
        ["lambda:", "{function}-{function}", "λ:{function}"],
    ),
}


@pytest.mark.parametrize(
    ("parameter", "value", "accepted"),
    [
        (parameter, value, accepted)
        for parameter, (accepts, refuses) in PARAMETER_VALUES.items()
        for accepted, values in ((True, accepts), (False, refuses))
        for value in values
    ],
)
def test_parameters_are_validated_at_deploy_time(
    template: dict[str, Any], parameter: str, value: str, accepted: bool
) -> None:
    # CloudFormation matches AllowedPattern against the whole value (Java regex; these patterns
    # use nothing Python's re reads differently).
    pattern = template["Parameters"][parameter]["AllowedPattern"]

    assert (re.fullmatch(pattern, value) is not None) is accepted
    assert template["Parameters"][parameter]["ConstraintDescription"]


def test_every_parameter_is_in_one_console_group(template: dict[str, Any]) -> None:
    groups = template["Metadata"]["AWS::CloudFormation::Interface"]["ParameterGroups"]
    grouped = [name for group in groups for name in group["Parameters"]]

    assert sorted(grouped) == sorted(template["Parameters"])


def test_every_free_text_parameter_has_a_pattern_or_allowed_values(
    template: dict[str, Any],
) -> None:
    unchecked = [
        name
        for name, parameter in template["Parameters"].items()
        if parameter["Type"] == "String"
        and "AllowedPattern" not in parameter
        and "AllowedValues" not in parameter
    ]

    assert unchecked == []


@pytest.mark.slow
def test_cfn_lint_reports_nothing() -> None:
    completed = cfn_lint(TEMPLATE_PATH)

    assert completed.returncode == 0, completed.stdout + completed.stderr
