"""Write template.yaml as plain CloudFormation, without the AWS::Serverless transform.

    python scripts/make_cfn.py [TEMPLATE [OUTPUT]]   (template.yaml, dist/idle-reaper.cfn.yaml)

Service-managed StackSets refuse templates that need a transform, and one StackSet deploys to
many Regions while a Lambda function's code must sit in a bucket of its own Region. So this
expands the template through the aws-sam-translator library (offline: AWS managed policy ARNs come
from the map bundled with it), and points the function's code at a bucket per Region:
`<CodeBucketPrefix>-<Region>`, key `CodeKey`, which the fleet's operator fills with the zip from
`sam build` (docs/fleet.md).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import boto3
import yaml
from samtranslator.model.exceptions import InvalidDocumentException
from samtranslator.parser.parser import Parser
from samtranslator.translator.translator import Translator
from samtranslator.yaml_helper import yaml_parse

REPO_ROOT = Path(__file__).resolve().parents[1]
FUNCTION = "ReaperFunction"

CODE_PARAMETERS: dict[str, dict[str, Any]] = {
    "CodeBucketPrefix": {
        "Type": "String",
        # An S3 bucket name is at most 63 characters; the longest Region name adds 15.
        "AllowedPattern": "^[a-z0-9][a-z0-9.-]{1,46}$",
        "ConstraintDescription": "must start a bucket name: lower case, digits, '.' and '-'.",
        "Description": (
            "Buckets holding the function's code: <CodeBucketPrefix>-<Region>, one per Region "
            "the stacks run in, each readable by the accounts that deploy them."
        ),
    },
    "CodeKey": {
        "Type": "String",
        "AllowedPattern": "^[A-Za-z0-9!_.*'()/-]{1,1024}$",
        "ConstraintDescription": "must be an S3 object key.",
        "Description": (
            "Key of the function's zip in every code bucket, built for the Architecture "
            "parameter (for example idle-reaper/0.1.0/arm64.zip)."
        ),
    },
}


# The translator wants a Region to resolve pseudo parameters in the few properties it evaluates
# itself; none of ours is one of them, and to_cloudformation checks that it left no trace.
_PLACEHOLDER_REGION = "us-east-1"


def with_regional_code(template: dict[str, Any]) -> dict[str, Any]:
    """The SAM template with the function's code in a bucket of the stack's own Region."""
    result = copy.deepcopy(template)
    result["Parameters"].update(copy.deepcopy(CODE_PARAMETERS))
    properties = result["Resources"][FUNCTION]["Properties"]
    properties["CodeUri"] = {
        "Bucket": {"Fn::Sub": "${CodeBucketPrefix}-${AWS::Region}"},
        "Key": {"Ref": "CodeKey"},
    }
    interface = result["Metadata"]["AWS::CloudFormation::Interface"]
    interface["ParameterGroups"].append(
        {"Label": {"default": "Function code (per Region)"}, "Parameters": list(CODE_PARAMETERS)}
    )
    # Only `sam build` reads the build method; CloudFormation does not need it.
    result["Resources"][FUNCTION].get("Metadata", {}).pop("BuildMethod", None)
    return result


def to_cloudformation(template: dict[str, Any]) -> dict[str, Any]:
    """Expand the AWS::Serverless resources; the result carries no Transform."""
    session = boto3.session.Session(region_name=_PLACEHOLDER_REGION)
    translator = Translator(None, Parser(), boto_session=session)
    # No IAM lookup: the template names its one managed policy by ARN.
    expanded: dict[str, Any] = translator.translate(
        with_regional_code(template), parameter_values={}, get_managed_policy_map=dict
    )
    expanded.pop("Transform", None)
    expanded = _partition_aware(expanded)
    if _PLACEHOLDER_REGION in yaml.safe_dump(expanded):
        raise ValueError(f"the translator wrote the placeholder Region {_PLACEHOLDER_REGION}")
    return expanded


def _partition_aware(value: Any) -> Any:
    """ARNs the translator wrote for the placeholder's partition (AWSLambdaBasicExecutionRole)
    become ${AWS::Partition} ones: the stacks may run in aws-cn or aws-us-gov."""
    if isinstance(value, dict):
        return {key: _partition_aware(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_partition_aware(item) for item in value]
    if isinstance(value, str) and value.startswith("arn:aws:"):
        return {"Fn::Sub": "arn:${AWS::Partition}:" + value.removeprefix("arn:aws:")}
    return value


class _NoAliasDumper(yaml.SafeDumper):
    """CloudFormation rejects YAML aliases; repeat shared values instead."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def main(argv: list[str]) -> int:
    source = Path(argv[1]) if len(argv) > 1 else REPO_ROOT / "template.yaml"
    target = Path(argv[2]) if len(argv) > 2 else REPO_ROOT / "dist" / "idle-reaper.cfn.yaml"
    template = yaml_parse(source.read_text(encoding="utf-8"))
    try:
        expanded = to_cloudformation(template)
    except InvalidDocumentException as exc:
        causes = "; ".join(cause.message for cause in exc.causes)
        print(f"make_cfn: {source} does not translate: {causes}", file=sys.stderr)
        return 1
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(
        "# Generated by `make cfn` from template.yaml: edit that, not this.\n"
        + yaml.dump(expanded, Dumper=_NoAliasDumper, sort_keys=False, width=100),
        encoding="utf-8",
    )
    print(f"make_cfn: wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
