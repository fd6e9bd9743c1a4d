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
The handler and `reaper targets` both call `resolve_targets`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import ValidationError

from reaper.aws.discovery import discover, tagged
from reaper.aws.settings import TargetEntry
from reaper.core.validation import describe_validation_error

if TYPE_CHECKING:
    from collections.abc import Iterable

    from reaper.aws.discovery import RdsInstance
    from reaper.aws.settings import DiscoveryTag, LambdaSettings

# The instance tags a platform team sets on a database (or its Aurora cluster).
TAG_SECRET_ARN = "idle-reaper:secret-arn"
TAG_IAM_USER = "idle-reaper:iam-user"
TAG_POLICY_PARAMETER = "idle-reaper:policy-parameter"
AVAILABLE_STATUS = "available"

TargetOrigin = Literal["listed", "discovered"]


@dataclass(frozen=True, slots=True)
class PlannedTarget:
    """One target of the invocation: what to connect to, or why it is left alone."""

    name: str
    origin: TargetOrigin
    entry: TargetEntry | None = None
    # Left alone on purpose (not available, may be paused, name taken): not an error.
    skip_reason: str | None = None
    # Misconfigured (its tags cannot make a target): reported as this target's error.
    problem: str | None = None
    instance: RdsInstance | None = None

    @property
    def runs(self) -> bool:
        """True when a pass is to run on it."""
        return self.entry is not None and self.skip_reason is None and self.problem is None


def resolve_targets(settings: LambdaSettings) -> list[PlannedTarget]:
    """The listed targets, then the discovered ones (sorted by name).

    Raises:
        DiscoveryError: the RDS API failed; no target is returned at all.
    """
    listed = [PlannedTarget(entry.name, "listed", entry) for entry in settings.target_entries()]
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
) -> list[PlannedTarget]:
    """The targets made of the tagged instances (in `vpc_id`, when given), sorted by name."""
    chosen = [
        instance
        for instance in tagged(instances, tag.key, tag.value)
        if vpc_id is None or instance.vpc_id == vpc_id
    ]
    return [_plan(instance, taken) for instance in sorted(chosen, key=lambda i: i.identifier)]


def _plan(instance: RdsInstance, taken: set[str]) -> PlannedTarget:
    name = instance.identifier
    skip_reason = _skip_reason(instance, taken)
    if skip_reason is not None:
        return PlannedTarget(name, "discovered", skip_reason=skip_reason, instance=instance)
    tags = instance.tags
    if tags.get(TAG_SECRET_ARN) and tags.get(TAG_IAM_USER):
        return PlannedTarget(
            name,
            "discovered",
            problem=f"instance {name} has both {TAG_SECRET_ARN} and {TAG_IAM_USER} tags; "
            "keep the one it logs in with",
            instance=instance,
        )
    try:
        entry = TargetEntry(
            name=name,
            host=instance.host,
            port=instance.port,
            secret_id=tags.get(TAG_SECRET_ARN) or None,
            iam_user=tags.get(TAG_IAM_USER) or None,
            policy_parameter=tags.get(TAG_POLICY_PARAMETER) or None,
        )
    except ValidationError as exc:
        return PlannedTarget(
            name,
            "discovered",
            problem=f"the tags of instance {name} ({TAG_SECRET_ARN}, {TAG_IAM_USER}, "
            f"{TAG_POLICY_PARAMETER}) do not make a target: {describe_validation_error(exc)}",
            instance=instance,
        )
    return PlannedTarget(name, "discovered", entry, instance=instance)


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
