"""The SAM template keeps the deployment's safety rules: one pass at a time, no retries, least
privilege, a dry run first, and alarms on the metrics the handler emits.

Pure: the template is read as YAML; no AWS account, no database.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from reaper.core.policy import parse_policy

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


def test_function_never_runs_two_passes_at_once(function: dict[str, Any]) -> None:
    assert function["ReservedConcurrentExecutions"] == 1


def test_function_times_out_before_the_next_scheduled_pass(
    template: dict[str, Any], function: dict[str, Any]
) -> None:
    period = _schedule_period_seconds(template["Parameters"]["ScheduleExpression"]["Default"])

    assert period == 300
    assert function["Timeout"] < period


def test_schedule_runs_the_function_on_the_schedule_parameter(function: dict[str, Any]) -> None:
    schedule = function["Events"]["Schedule"]

    assert schedule["Type"] == "ScheduleV2"
    assert schedule["Properties"]["ScheduleExpression"] == {"Ref": "ScheduleExpression"}


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
        for resource in _as_list(statement["Resource"]):
            assert resource != "*", statement["Sid"]
            assert "*" not in json.dumps(resource), statement["Sid"]


def test_only_the_aws_vpc_policy_is_attached_besides_inline_statements(
    function: dict[str, Any],
) -> None:
    # SAM policy templates such as SSMParameterReadPolicy add "*" statements of their own.
    named_policies = [policy for policy in function["Policies"] if isinstance(policy, str)]
    inline_documents = [policy for policy in function["Policies"] if isinstance(policy, dict)]

    assert named_policies == ["AWSLambdaVPCAccessExecutionRole"]
    assert all("Statement" in document for document in inline_documents)


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
        "ConnectWithIamToken": "UseIamAuth",
    }


def test_policy_permission_names_exactly_the_policy_parameter(
    template: dict[str, Any], function: dict[str, Any]
) -> None:
    values = _sub_values(template)
    parameter_name = _substitute(
        template["Resources"]["PolicyParameter"]["Properties"]["Name"]["Fn::Sub"], values
    )
    (statement,) = [s for s in _inline_statements(function) if s["Action"] == "ssm:GetParameter"]

    arn = _substitute(statement["Resource"]["Fn::Sub"], values)

    assert arn == f"arn:aws:ssm:eu-west-1:123456789012:parameter{parameter_name}"
    assert function["Environment"]["Variables"]["REAPER_POLICY_PARAMETER"] == {
        "Ref": "PolicyParameter"
    }


@pytest.mark.parametrize(("dry_run", "expected"), [("true", True), ("false", False)])
def test_initial_policy_follows_the_dry_run_parameter(
    template: dict[str, Any], dry_run: str, expected: bool
) -> None:
    raw_policy = template["Resources"]["PolicyParameter"]["Properties"]["Value"]["Fn::Sub"]

    text = _substitute(raw_policy, _sub_values(template, DryRun=dry_run))

    assert json.loads(text)["dry_run"] is expected
    assert parse_policy(text, source="template.yaml").dry_run is expected


def test_first_deploy_is_a_dry_run_with_the_documented_policy(template: dict[str, Any]) -> None:
    raw_policy = template["Resources"]["PolicyParameter"]["Properties"]["Value"]["Fn::Sub"]

    document = json.loads(_substitute(raw_policy, _sub_values(template)))

    assert template["Resources"]["PolicyParameter"]["Properties"]["Type"] == "String"
    assert document == {
        "rules": [{"name": "lambda", "application_names": ["lambda:*"], "states": {"idle": 900}}],
        "dry_run": True,
        "max_terminations": 50,
    }


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

    for metric_name in ("ConnectionUtilization", "TerminationsRefused", "ConnectionSlotsExhausted"):
        alarm = _alarm(template, metric_name)
        dimensions = {d["Name"]: d["Value"] for d in alarm["Dimensions"]}
        # EMF metrics match only on the exact dimension set: Powertools' service plus Target.
        assert dimensions == {
            "service": variables["POWERTOOLS_SERVICE_NAME"],
            "Target": {"Ref": "AlarmTargetName"},
        }
        assert alarm["Namespace"] == variables["POWERTOOLS_METRICS_NAMESPACE"]
    assert template["Parameters"]["AlarmTargetName"]["Default"] == "default"
    assert template["Parameters"]["MetricsNamespace"]["Default"] == "IdleReaper"


def test_log_group_keeps_events_for_the_configured_retention(
    template: dict[str, Any], function: dict[str, Any]
) -> None:
    log_group = template["Resources"]["ReaperLogGroup"]["Properties"]
    values = _sub_values(template)

    assert log_group["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    assert function["LoggingConfig"]["LogGroup"] == {"Ref": "ReaperLogGroup"}
    assert _substitute(log_group["LogGroupName"]["Fn::Sub"], values) == "/aws/lambda/" + (
        _substitute(function["FunctionName"]["Fn::Sub"], values)
    )


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
        "service": "idle-reaper",
        "Target": {"Ref": "AlarmTargetName"},
    }


def test_alarms_notify_the_topic_only_when_one_is_given(template: dict[str, Any]) -> None:
    alarms = [
        resource["Properties"]
        for resource in template["Resources"].values()
        if resource["Type"] == "AWS::CloudWatch::Alarm"
    ]

    assert len(alarms) == 4
    for alarm in alarms:
        assert alarm["AlarmActions"] == {
            "Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]
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

    assert template["Resources"]["ReaperFunction"]["Metadata"] == {"BuildMethod": "makefile"}
    assert function["CodeUri"] == "."
    assert build_script.is_file()
    assert build_script.stat().st_mode & 0o111


def test_serverless_repo_metadata_is_complete(template: dict[str, Any]) -> None:
    application = template["Metadata"]["AWS::ServerlessRepo::Application"]

    assert application["Name"] == "idle-reaper"
    assert application["SpdxLicenseId"] == "Apache-2.0"
    assert application["SemanticVersion"] == "0.1.0"
    assert application["Description"]
    assert application["Author"]
    assert application["Labels"]
    # Files the application points at must exist: SAR uploads them at `sam package`.
    for key in ("ReadmeUrl", "LicenseUrl"):
        if key in application:
            assert (REPO_ROOT / application[key]).is_file(), key


def test_outputs_name_function_policy_logs_and_dashboard(template: dict[str, Any]) -> None:
    assert set(template["Outputs"]) >= {
        "FunctionArn",
        "PolicyParameterName",
        "LogGroupName",
        "DashboardUrl",
    }


def test_cfn_lint_reports_nothing() -> None:
    # cfn-lint has no `python -m` entry point; its script sits beside the interpreter.
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    if not cfn_lint.is_file():
        pytest.skip(f"cfn-lint is not installed beside {sys.executable} (the dev extra has it)")

    completed = subprocess.run(
        [str(cfn_lint), str(TEMPLATE_PATH)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO_ROOT,
    )

    assert completed.returncode == 0, completed.stdout + completed.stderr
