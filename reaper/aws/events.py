"""The events the function accepts, validated with Powertools' Parser models.

- A scheduled event: EventBridge's "Scheduled Event" (classic rules, source aws.events) or
  EventBridge Scheduler's input shaped like it (source aws.scheduler). Runs a pass.
- A CloudWatch alarm state change delivered by EventBridge ("CloudWatch Alarm State Change").
  Runs a pass when the alarm is in ALARM; any other state (OK, INSUFFICIENT_DATA) is a no-op.
- A manual event from an operator: {"action": "reap", "dry_run": true, "targets": ["writer"]},
  or {"action": "doctor"} to run `reaper doctor`'s checks on each target (nothing is terminated).

Unknown or malformed fields are refused with EventError, never ignored, except inside the
alarm's own `detail` sub-objects: AWS owns them and adds fields over time (a refused alarm event
would be a missed pass, not a safer one), and the reaper reads only alarmName and state.value.
An EventError never repeats a value of the event (an operator may paste anything into one, a
connection string too) and stays one short line whatever the event holds.

Duplicate keys: the Lambda runtime decodes the payload before the handler runs, keeping the last
of two equal keys, so the handler cannot tell `{"action": "reap", "dry_run": true, "dry_run":
false}` from a live pass. `reaper invoke` reads its event files with `parse_json`, which refuses
them; events built by EventBridge and by the template's schedules have no duplicates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from aws_lambda_powertools.utilities.parser.models import EventBridgeModel
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator

from reaper.core.validation import describe_validation_error, list_names, short_repr
from reaper.errors import EventError
from reaper.settings import TARGET_NAME_PATTERN

SCHEDULED_DETAIL_TYPE = "Scheduled Event"
ALARM_DETAIL_TYPE = "CloudWatch Alarm State Change"
EventKind = Literal["scheduled", "alarm", "manual"]
InvocationAction = Literal["pass", "doctor", "none"]
TargetName = Annotated[str, Field(pattern=TARGET_NAME_PATTERN)]
_ModelT = TypeVar("_ModelT", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScheduledDetail(_Strict):
    """A scheduled event's detail: always empty."""


class ScheduledEvent(EventBridgeModel):
    """EventBridge's scheduled event (or the Scheduler input shaped like it)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    source: Literal["aws.events", "aws.scheduler"]
    detail_type: Literal["Scheduled Event"] = Field(alias="detail-type")
    detail: ScheduledDetail


class AlarmState(BaseModel):
    """An alarm state as EventBridge reports it; only `value` decides anything."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    value: Literal["OK", "ALARM", "INSUFFICIENT_DATA"]
    reason: str = ""
    timestamp: str = ""


class AlarmStateChangeDetail(BaseModel):
    """The detail of "CloudWatch Alarm State Change" (AWS-owned: extra keys are tolerated)."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    alarm_name: str = Field(alias="alarmName", min_length=1)
    state: AlarmState
    previous_state: AlarmState | None = Field(default=None, alias="previousState")
    configuration: dict[str, Any] = Field(default_factory=dict)


class AlarmStateChangeEvent(EventBridgeModel):
    """A CloudWatch alarm state change delivered by EventBridge."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    source: Literal["aws.cloudwatch"]
    detail_type: Literal["CloudWatch Alarm State Change"] = Field(alias="detail-type")
    detail: AlarmStateChangeDetail


class ManualEvent(_Strict):
    """An operator's event, sent with `aws lambda invoke --payload ...` or `reaper invoke`."""

    action: Literal["reap", "doctor"] = Field(
        description="'reap': one pass; 'doctor': check each target's setup, terminate nothing."
    )
    dry_run: StrictBool = Field(
        default=False,
        description="true forces a dry run; false leaves the policy's own dry_run in force.",
    )
    targets: tuple[TargetName, ...] | None = Field(
        default=None,
        description="Names of the targets to act on (REAPER_TARGETS names, or 'default'); all "
        "if absent.",
    )

    @field_validator("targets")
    @classmethod
    def _not_empty(cls, targets: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if targets is not None and not targets:
            raise ValueError("name at least one target, or leave 'targets' out for all of them")
        return targets


@dataclass(frozen=True, slots=True)
class Invocation:
    """What one event asks for, independent of its shape."""

    kind: EventKind
    # pass; doctor (a manual doctor event: the preflight checks instead of a pass); none (an
    # alarm that is not in ALARM: the invocation reports and does nothing).
    action: InvocationAction
    force_dry_run: bool = False
    # None means every configured target.
    targets: tuple[str, ...] | None = None
    description: str = ""


def parse_event(event: Any) -> Invocation:
    """Validate a Lambda event and say what it asks for.

    Raises:
        EventError: the event has no known shape, or a field is unknown or malformed; the
            message names the field.
    """
    if not isinstance(event, dict):
        raise EventError(
            f"the event must be a JSON object, not {type(event).__name__}; see docs/tuning.md"
        )
    if "detail-type" in event:
        detail_type = event["detail-type"]
        if detail_type == SCHEDULED_DETAIL_TYPE:
            scheduled = _validate(ScheduledEvent, event, "scheduled")
            return Invocation(
                kind="scheduled", action="pass", description=f"scheduled ({scheduled.source})"
            )
        if detail_type == ALARM_DETAIL_TYPE:
            alarm = _validate(AlarmStateChangeEvent, event, "alarm state change")
            detail = alarm.detail
            return Invocation(
                kind="alarm",
                action="pass" if detail.state.value == "ALARM" else "none",
                description=f"alarm {detail.alarm_name} is {detail.state.value}",
            )
        raise EventError(
            f"unsupported EventBridge detail-type {short_repr(detail_type)}; expected "
            f"{SCHEDULED_DETAIL_TYPE!r} or {ALARM_DETAIL_TYPE!r}"
        )
    if "action" in event:
        manual = _validate(ManualEvent, event, "manual")
        if manual.action == "doctor":
            return Invocation(
                kind="manual",
                action="doctor",
                targets=manual.targets,
                description="manual doctor",
            )
        return Invocation(
            kind="manual",
            action="pass",
            force_dry_run=manual.dry_run,
            targets=manual.targets,
            description=f"manual {manual.action}" + (" (dry run)" if manual.dry_run else ""),
        )
    keys = list_names(sorted(str(key) for key in event)) or "none"
    raise EventError(
        "unrecognised event: expected an EventBridge event (with 'detail-type') or a manual "
        f"event (with 'action'); its keys: {keys}"
    )


def select_targets(configured: tuple[str, ...], wanted: tuple[str, ...] | None) -> tuple[str, ...]:
    """The configured target names an event selects, in configuration order.

    Raises:
        EventError: the event names a target that is not configured.
    """
    if wanted is None:
        return configured
    unknown = [name for name in wanted if name not in configured]
    if unknown:
        raise EventError(
            f"targets: {', '.join(repr(name) for name in unknown)} not configured; configured "
            f"targets: {', '.join(configured)}"
        )
    return tuple(name for name in configured if name in wanted)


def _validate(model: type[_ModelT], event: dict[str, Any], kind: str) -> _ModelT:
    try:
        return model.model_validate(event)
    except ValidationError as exc:
        # No value repeated: the message goes to the error log line and Lambda's error
        # document, and a misplaced field may hold a password.
        problems = describe_validation_error(exc, show_values=False)
        raise EventError(f"invalid {kind} event: {problems}") from exc
