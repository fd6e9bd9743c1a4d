"""The targets of an invocation: the listed ones and, with REAPER_DISCOVERY_TAG, the discovered.

Listed targets are the REAPER_TARGETS entries (or the one 'default' target). Discovered targets
are the PostgreSQL instances that carry the discovery tag (their own, or their Aurora cluster's),
optionally only those in REAPER_DISCOVERY_VPC_ID: one target per instance, named by its
DBInstanceIdentifier and reached at its instance endpoint, never at a cluster or reader endpoint
(a reader endpoint resolves to another replica on each connection). Its tags may give it a login
and a policy of its own; otherwise the stack's apply.

A discovered instance is skipped, with the reason, when it is not `available` (stopped,
starting, being modified...: connecting could fail or wake it), when it is an Aurora Serverless
v2 instance that may be auto-paused (see reaper.aws.discovery), or when a listed target already
has its name. An instance whose tags cannot make a target is a problem of that target alone.
The handler and `reaper targets` both call `resolve_targets`; `FleetTarget.action` is the one
place that says whether a target runs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

from pydantic import ValidationError

from reaper.aws.discovery import discover, tagged
from reaper.aws.policy_source import load_parameter_policy
from reaper.core.validation import describe_validation_error
from reaper.errors import PolicyError, ReaperError, SettingsError
from reaper.settings import TargetSpec

if TYPE_CHECKING:
    from collections.abc import Iterable

    from reaper.aws.discovery import RdsInstance
    from reaper.core.policy import Policy
    from reaper.settings import DiscoveryTag, LambdaSettings

# The instance tags a platform team sets on a database (or its Aurora cluster).
TAG_SECRET_ARN = "idle-reaper:secret-arn"
TAG_IAM_USER = "idle-reaper:iam-user"
TAG_POLICY_PARAMETER = "idle-reaper:policy-parameter"
AVAILABLE_STATUS = "available"

TargetOrigin = Literal["listed", "discovered"]
TargetAction = Literal["pass", "skip", "error"]


@dataclass(frozen=True, slots=True)
class FleetTarget:
    """One target of an invocation: how it is configured and governed, or why it does not run.

    Made by `resolve_targets` from a listed or a discovered `TargetSpec`; `with_policy` gives it
    the policy that governs it. The connection itself (`ConnInfo`) is built only when its pass
    starts, and what happened there is a `fanout.TargetOutcome`.
    """

    name: str
    origin: TargetOrigin
    spec: TargetSpec | None = None
    # Left alone on purpose (not available, may be paused, name taken): not an error.
    skip_reason: str | None = None
    # Cannot run (its tags make no target, its own policy is bad): reported as its error.
    error: ReaperError | None = None
    instance: RdsInstance | None = None
    policy: Policy | None = None

    @property
    def action(self) -> TargetAction:
        """pass (a pass or doctor runs on it), skip (left alone) or error (it cannot run)."""
        if self.skip_reason is not None:
            return "skip"
        if self.error is not None or self.spec is None:
            return "error"
        return "pass"

    @property
    def reason(self) -> str | None:
        """Why it does not run, or None when it does."""
        if self.skip_reason is not None:
            return self.skip_reason
        if self.error is not None:
            return str(self.error)
        return None if self.spec is not None else f"target {self.name} has no connection settings"

    def failure(self) -> ReaperError:
        """The error that stops a target whose action is `error`."""
        return self.error or SettingsError(self.reason or f"target {self.name} cannot run")


def with_policy(target: FleetTarget, stack_policy: Policy, *, cache_seconds: int) -> FleetTarget:
    """The target with the policy that governs it: its own parameter's (a tag or a
    REAPER_TARGETS field), else the stack's. Its own policy failing fails this target only."""
    if target.action != "pass" or target.spec is None:
        return target
    parameter = target.spec.policy_parameter
    if parameter is None:
        return replace(target, policy=stack_policy)
    try:
        own = load_parameter_policy(parameter, max_age=cache_seconds)
    except PolicyError as exc:
        return replace(target, error=exc)
    return replace(target, policy=own.policy)


def resolve_targets(settings: LambdaSettings) -> list[FleetTarget]:
    """The listed targets, then the discovered ones (sorted by name).

    Raises:
        DiscoveryError: the RDS API failed; no target is returned at all.
    """
    listed = [FleetTarget(spec.name, "listed", spec) for spec in settings.target_entries()]
    if settings.discovery_tag is None:
        return listed
    instances = discover(max_age=settings.discovery_cache_seconds)
    return listed + plan_discovered(
        instances,
        settings.discovery_tag,
        vpc_id=settings.discovery_vpc_id,
        taken={target.name for target in listed},
    )


def plan_discovered(
    instances: Iterable[RdsInstance],
    tag: DiscoveryTag,
    *,
    vpc_id: str | None,
    taken: set[str],
) -> list[FleetTarget]:
    """The targets made of the tagged instances (in `vpc_id`, when given), sorted by name."""
    chosen = [
        instance
        for instance in tagged(instances, tag.key, tag.value)
        if vpc_id is None or instance.vpc_id == vpc_id
    ]
    return [_plan(instance, taken) for instance in sorted(chosen, key=lambda i: i.identifier)]


def _plan(instance: RdsInstance, taken: set[str]) -> FleetTarget:
    name = instance.identifier
    skip_reason = _skip_reason(instance, taken)
    if skip_reason is not None:
        return FleetTarget(name, "discovered", skip_reason=skip_reason, instance=instance)
    tags = instance.tags
    if tags.get(TAG_SECRET_ARN) and tags.get(TAG_IAM_USER):
        return FleetTarget(
            name,
            "discovered",
            error=SettingsError(
                f"instance {name} has both {TAG_SECRET_ARN} and {TAG_IAM_USER} tags; "
                "keep the one it logs in with"
            ),
            instance=instance,
        )
    try:
        spec = TargetSpec(
            name=name,
            host=instance.host,
            port=instance.port,
            secret_id=tags.get(TAG_SECRET_ARN) or None,
            iam_user=tags.get(TAG_IAM_USER) or None,
            policy_parameter=tags.get(TAG_POLICY_PARAMETER) or None,
        )
    except ValidationError as exc:
        return FleetTarget(
            name,
            "discovered",
            error=SettingsError(
                f"the tags of instance {name} ({TAG_SECRET_ARN}, {TAG_IAM_USER}, "
                f"{TAG_POLICY_PARAMETER}) do not make a target: {describe_validation_error(exc)}"
            ),
            instance=instance,
        )
    return FleetTarget(name, "discovered", spec, instance=instance)


def _skip_reason(instance: RdsInstance, taken: set[str]) -> str | None:
    if instance.identifier in taken:
        return "REAPER_TARGETS lists a target of the same name; that entry is used instead"
    if instance.status != AVAILABLE_STATUS:
        return f"status is {instance.status!r}, not 'available'; it is not woken or waited for"
    if instance.auto_pause:
        return (
            "Aurora Serverless v2 with auto-pause (cluster minimum capacity 0 ACUs): a paused "
            "instance still reports 'available', and connecting would resume it"
        )
    if instance.host is None or instance.port is None:
        return "it has no endpoint yet"
    return None
