"""Where the Lambda's policy comes from: an SSM parameter, a local file, or the built-in default.

The SSM value is read through Powertools Parameters and cached for REAPER_POLICY_CACHE_SECONDS
across warm invocations, so `aws ssm put-parameter --overwrite` takes effect within that time.
A configured source that is missing, unreadable or invalid raises PolicyError: the caller then
terminates nothing. Only when no source is configured at all does DEFAULT_POLICY apply.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.utilities.parameters import SSMProvider
from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError
from botocore.config import Config
from botocore.exceptions import ClientError

from reaper.core.policy import parse_policy, policy_from_mapping
from reaper.errors import PolicyError
from reaper.policy_file import policy_source_name, read_policy_file

if TYPE_CHECKING:
    from reaper.aws.settings import LambdaSettings
    from reaper.core.policy import Policy

DEFAULT_POLICY_SOURCE = "built-in default policy"

# Conservative on purpose: only sessions that say they come from Lambda ("lambda:*"), idle for
# 15 minutes, at most 50 per pass. Documented in docs/tuning.md; keep the two in step.
DEFAULT_POLICY_DOCUMENT: dict[str, Any] = {
    "rules": [{"name": "lambda", "application_names": ["lambda:*"], "states": {"idle": 900}}],
    "max_terminations": 50,
}
DEFAULT_POLICY: Policy = policy_from_mapping(DEFAULT_POLICY_DOCUMENT, source=DEFAULT_POLICY_SOURCE)

# From inside a VPC without an SSM endpoint the default botocore timeouts (60 s, with retries)
# would outlast the function; fail fast instead, so the error is logged and counted.
AWS_CLIENT_CONFIG = Config(
    connect_timeout=3, read_timeout=5, retries={"mode": "standard", "max_attempts": 3}
)


@dataclass(frozen=True, slots=True)
class LoadedPolicy:
    """A validated policy and a printable description of where it came from."""

    policy: Policy
    source: str


@functools.cache
def ssm_provider() -> SSMProvider:
    """The SSM provider, created on first use and kept, with its cache, by warm invocations."""
    return SSMProvider(boto_config=AWS_CLIENT_CONFIG)


def clear_cache() -> None:
    """Forget the provider and its cached values (tests; a later call builds a fresh one)."""
    ssm_provider.cache_clear()


def load_policy(settings: LambdaSettings) -> LoadedPolicy:
    """The policy the settings point at.

    Raises:
        PolicyError: the parameter or file is missing, unreadable, not JSON or invalid; the
            message names the source and, for an invalid document, each bad field.
    """
    if settings.policy_parameter:
        return load_parameter_policy(
            settings.policy_parameter, max_age=settings.policy_cache_seconds
        )
    if settings.policy_file is not None:
        path = settings.policy_file
        return LoadedPolicy(read_policy_file(path), policy_source_name(path))
    return LoadedPolicy(DEFAULT_POLICY, DEFAULT_POLICY_SOURCE)


def load_parameter_policy(name: str, *, max_age: int) -> LoadedPolicy:
    """The policy in SSM parameter `name` (the stack's, or one target's own), cached.

    Raises:
        PolicyError: the parameter is missing, unreadable, not JSON or invalid.
    """
    source = parameter_source_name(name)
    text = _read_parameter(name, max_age=max_age)
    return LoadedPolicy(parse_policy(text, source=source), source)


def parameter_source_name(name: str) -> str:
    """How a policy read from SSM parameter `name` is named in logs and summaries."""
    return f"SSM parameter {name}"


def describe_policy_source(settings: LambdaSettings) -> str:
    """Where `load_policy` would read the stack's policy from, without reading it."""
    if settings.policy_parameter:
        return parameter_source_name(settings.policy_parameter)
    if settings.policy_file is not None:
        return policy_source_name(settings.policy_file)
    return DEFAULT_POLICY_SOURCE


def _read_parameter(name: str, *, max_age: int) -> str:
    try:
        value = ssm_provider().get(name, max_age=max_age)
    except GetParameterError as exc:
        raise PolicyError(f"cannot read SSM parameter {name}: {aws_error_reason(exc)}") from exc
    if not isinstance(value, str):  # pragma: no cover - get() without transform returns str
        raise PolicyError(f"SSM parameter {name} did not return text")
    return value


def aws_error_reason(exc: BaseException) -> str:
    """The AWS error code and message behind a Powertools error (which wraps the ClientError)."""
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ClientError):
        error = cause.response.get("Error", {})
        code = error.get("Code", "error")
        message = error.get("Message", "")
        return f"{code}: {message}" if message else code
    return str(exc) or type(exc).__name__
