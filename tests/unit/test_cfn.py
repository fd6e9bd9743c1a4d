"""`make cfn` (scripts/make_cfn.py) expands template.yaml into plain CloudFormation that
service-managed StackSets accept: no transform, no name that overflows or collides between
stacks, the code in a bucket of each stack's Region, ARNs in every partition.

Offline: the aws-sam-translator library, no AWS account.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.commands import cfn_lint

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "make_cfn.py"

yaml_helper = pytest.importorskip(
    "samtranslator.yaml_helper", reason="aws-sam-translator is in the dev extra"
)
yaml_parse = yaml_helper.yaml_parse


@pytest.fixture(scope="module")
def cfn_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("cfn") / "idle-reaper.cfn.yaml"
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), str(REPO_ROOT / "template.yaml"), str(target)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return target


@pytest.fixture(scope="module")
def cfn(cfn_path: Path) -> dict[str, Any]:
    # Long-form intrinsics only: plain YAML, which CloudFormation reads without a transform.
    document: dict[str, Any] = yaml.safe_load(cfn_path.read_text(encoding="utf-8"))
    return document


def _of_type(cfn: dict[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    return {
        name: resource
        for name, resource in cfn["Resources"].items()
        if resource["Type"] == resource_type
    }


def test_expanded_template_needs_no_transform(cfn: dict[str, Any]) -> None:
    types = {resource["Type"] for resource in cfn["Resources"].values()}

    assert "Transform" not in cfn
    assert not any(resource_type.startswith("AWS::Serverless::") for resource_type in types)
    assert {"AWS::Lambda::Function", "AWS::IAM::Role", "AWS::Scheduler::Schedule"} <= types


def test_no_resource_gets_a_name_that_overflows_or_collides_between_stacks(
    cfn: dict[str, Any],
) -> None:
    (function,) = _of_type(cfn, "AWS::Lambda::Function").values()
    (schedule,) = _of_type(cfn, "AWS::Scheduler::Schedule").values()
    named = {
        "AWS::SSM::Parameter": "Name",
        "AWS::Logs::LogGroup": "LogGroupName",
        "AWS::CloudWatch::Dashboard": "DashboardName",
    }

    # CloudFormation names these from the stack name, cut to fit their limits.
    assert "FunctionName" not in function["Properties"]
    assert "Name" not in schedule["Properties"]
    for role in _of_type(cfn, "AWS::IAM::Role").values():
        assert "RoleName" not in role["Properties"]
    # The rest carry the stack name in a field long enough for any stack name (128 characters).
    for resource_type, field in named.items():
        for resource in _of_type(cfn, resource_type).values():
            assert "${AWS::StackName}" in resource["Properties"][field]["Fn::Sub"], resource_type


def test_function_code_comes_from_a_bucket_in_the_stacks_own_region(cfn: dict[str, Any]) -> None:
    (function,) = _of_type(cfn, "AWS::Lambda::Function").values()

    assert function["Properties"]["Code"] == {
        "S3Bucket": {"Fn::Sub": "${CodeBucketPrefix}-${AWS::Region}"},
        "S3Key": {"Ref": "CodeKey"},
    }
    assert {"CodeBucketPrefix", "CodeKey"} <= set(cfn["Parameters"])
    assert function["Properties"]["Architectures"] == [{"Ref": "Architecture"}]


def test_expanded_template_names_no_fixed_partition_or_region(cfn_path: Path) -> None:
    text = cfn_path.read_text(encoding="utf-8")
    document = yaml.safe_load(text)
    resources = json.dumps(document["Resources"]) + json.dumps(document["Outputs"])

    assert "arn:aws:" not in resources
    assert "us-east-1" not in text
    assert "console.aws.amazon.com/" not in resources


def test_managed_policies_are_the_lambda_basic_and_vpc_ones(cfn: dict[str, Any]) -> None:
    role = cfn["Resources"]["ReaperFunctionRole"]["Properties"]

    assert role["ManagedPolicyArns"] == [
        {"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/service-role/" + name}
        for name in ("AWSLambdaBasicExecutionRole", "AWSLambdaVPCAccessExecutionRole")
    ]


def test_expanded_template_keeps_the_policy_seed_and_the_rules(cfn: dict[str, Any]) -> None:
    # yaml_parse reads short-form intrinsics in the long form the expanded template has.
    source = yaml_parse((REPO_ROOT / "template.yaml").read_text(encoding="utf-8"))

    assert cfn["Resources"]["PolicyParameter"] == source["Resources"]["PolicyParameter"]
    assert cfn["Rules"] == source["Rules"]


@pytest.mark.slow
def test_cfn_lint_reports_nothing_on_the_expanded_template(cfn_path: Path) -> None:
    completed = cfn_lint(cfn_path)

    assert completed.returncode == 0, completed.stdout + completed.stderr
