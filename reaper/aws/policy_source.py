"""Where the Lambda's policy comes from: an SSM parameter, a local file, or the built-in default.

The SSM value is read through Powertools Parameters and cached for REAPER_POLICY_CACHE_SECONDS
across warm invocations, so `aws ssm put-parameter --overwrite` takes effect within that time.
A configured source that is missing, unreadable or invalid raises PolicyError: the caller then
terminates nothing. Only when no source is configured at all does DEFAULT_POLICY apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError

from reaper.actions.policy_file import policy_source_name, read_policy_file
from reaper.aws import _clients
from reaper.core.policy import DEFAULT_IDLE_SECONDS, one_rule_policy, parse_policy
from reaper.errors import PolicyError

if TYPE_CHECKING:
    from reaper.core.policy import Policy
    from reaper.settings import LambdaSettings

DEFAULT_POLICY_SOURCE = "built-in default policy"

# Conservative on purpose: only sessions that say they come from Lambda ("lambda:*"), idle past
# the default threshold (15 minutes), at most the default cap per pass. docs/tuning.md says so.
DEFAULT_POLICY: Policy = one_rule_policy(
    ["lambda:*"],
    idle_seconds=DEFAULT_IDLE_SECONDS,
    rule_name="lambda",
    source=DEFAULT_POLICY_SOURCE,
)


@dataclass(frozen=True, slots=True)
class LoadedPolicy:
    """A validated policy and a printable description of where it came from."""

    policy: Policy
    source: str


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
        value = _clients.ssm_provider().get(name, max_age=max_age)
    except GetParameterError as exc:
        raise PolicyError(
            f"cannot read SSM parameter {name}: {_clients.error_reason(exc)}"
        ) from exc
    if not isinstance(value, str):  # pragma: no cover - get() without transform returns str
        raise PolicyError(f"SSM parameter {name} did not return text")
    return value
