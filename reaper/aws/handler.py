"""The Lambda entry point: Powertools decorators and one call into `handle`.

`handle` reads the settings and the policy, validates the event, resolves the targets (listed
and, with REAPER_DISCOVERY_TAG, discovered in RDS), runs one pass per selected target
(concurrently, inside the time left) through `run_pass` — the same path as `reaper run` — and
turns the results into metrics, audit lines and a JSON summary.

Failure semantics (docs/alarms-and-metrics.md):
- bad settings, stack policy or event: nothing runs, the invocation raises (Lambda's Errors
  metric); a bad policy also emits PolicyErrors=1;
- the RDS API fails during discovery: DiscoveryErrors=1, nothing runs, the invocation raises;
- a discovered instance that is not available or may be auto-paused: TargetSkipped=1 and a
  line saying why; no connection is attempted;
- a failed target (also: its own policy is bad, its tags make no target): TargetErrors=1 and an
  error line for it, the other targets still run, and the invocation raises at the end
  (TargetsFailedError) so the Errors alarm fires too; a target whose database is full also
  gets ConnectionSlotsExhausted=1 and a "database_full" line, one whose pass lock a stranger
  holds PassLockSquatted=1 and a "pass_lock_squatted" line, one out of time
  DeadlineExceeded=1 (and, when its pass stopped before terminating, the audit lines of that
  pass: every session it may have terminated has one);
- a pass skipped because another pass of the reaper holds the lock: PassSkipped=1 (0 for a pass
  that ran), a success;
- a doctor event: the checks of each target are returned (and logged), failed ones included;
- with REAPER_BUDGET_NAME_TEMPLATE, each examined target's connection budget after the passes
  (and as a doctor check): WorstCaseConnections, ConnectionBudgetUtilization and a line; what
  the Lambda or CloudWatch API would not tell is said in the line and fails nothing.
"""

from __future__ import annotations

import functools
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from reaper.aws.budget import doctor_budget_checks, record_pass_budgets
from reaper.aws.events import parse_event, select_targets
from reaper.aws.fanout import doctor_on_targets, run_on_targets
from reaper.aws.observability import (
    audit,
    log_doctor_report,
    log_target_error,
    log_target_skipped,
    logger,
    metrics,
    record_discovery_outcome,
    record_policy_outcome,
    record_result,
    record_reuse_gaps,
    record_target_error,
    record_target_skipped,
)
from reaper.aws.policy_source import load_policy
from reaper.aws.targets import resolve_targets, with_policy
from reaper.errors import DiscoveryError, PolicyError, ReaperError, TargetsFailedError
from reaper.settings import load_lambda_settings

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from aws_lambda_powertools.utilities.typing import LambdaContext

    from reaper.aws.events import Invocation
    from reaper.aws.fanout import TargetOutcome
    from reaper.aws.policy_source import LoadedPolicy
    from reaper.aws.targets import FleetTarget
    from reaper.settings import LambdaSettings


@logger.inject_lambda_context
@metrics.log_metrics
def lambda_handler(event: Any, context: LambdaContext) -> dict[str, Any]:
    """The function's handler (template.yaml: reaper.aws.handler.lambda_handler)."""
    return handle(event, context)


def handle(event: Any, context: LambdaContext) -> dict[str, Any]:
    """Run what the event asks for and return the JSON summary.

    Raises:
        SettingsError, PolicyError, EventError: nothing was run.
        TargetsFailedError: the pass failed on at least one target; the others ran.
    """
    try:
        settings = load_lambda_settings()
        stack = _load_policy(settings)
        invocation = parse_event(event)
        if invocation.action == "none":
            logger.info(f"no pass: {invocation.description}", extra=_log_fields(invocation, stack))
            return _summary(invocation, stack)
        targets, skipped = _selected_targets(settings, stack, invocation)
        request = _Request(
            settings,
            stack,
            invocation,
            targets,
            budget_seconds=(
                context.get_remaining_time_in_millis() / 1000 - settings.deadline_margin_seconds
            ),
        )
        answers = _doctor(request) if invocation.action == "doctor" else _pass(request)
        return _summary(invocation, stack, targets=answers, skipped=skipped)
    except ReaperError as exc:
        logger.error(
            f"invocation failed: {exc}",
            extra={"error_type": type(exc).__name__, "error": str(exc)},
        )
        raise


def _selected_targets(
    settings: LambdaSettings, stack: LoadedPolicy, invocation: Invocation
) -> tuple[list[FleetTarget], list[FleetTarget]]:
    """The targets the event selects, each with its policy, and those skipped (logged and
    counted here)."""
    resolved = _resolve_targets(settings)
    names = select_targets(tuple(target.name for target in resolved), invocation.targets)
    selected, skipped = [], []
    for target in resolved:
        if target.name not in names:
            continue
        if target.action == "skip":
            log_target_skipped(logger, target.name, target.reason or "")
            record_target_skipped(target.name)
            skipped.append(target)
            continue
        selected.append(
            with_policy(target, stack.policy, cache_seconds=settings.policy_cache_seconds)
        )
    return selected, skipped


@dataclass(frozen=True, slots=True)
class _Request:
    """What one action runs with: the settings, the stack's policy, the event, its targets
    (each with its own policy) and the seconds the invocation may spend on them."""

    settings: LambdaSettings
    stack: LoadedPolicy
    invocation: Invocation
    targets: list[FleetTarget]
    budget_seconds: float


def _doctor(request: _Request) -> list[dict[str, Any]]:
    logger.info(
        "doctor starting", extra=_log_fields(request.invocation, request.stack, request.targets)
    )
    reports = doctor_on_targets(
        request.settings,
        request.targets,
        budget_seconds=request.budget_seconds,
        more_checks=functools.partial(doctor_budget_checks, request.settings),
    )
    for report in reports:
        log_doctor_report(logger, report)
    # The reports are the answer, failed checks included: the invocation itself succeeds.
    return [report.to_dict() for report in reports]


def _pass(request: _Request) -> list[dict[str, Any]]:
    invocation = request.invocation
    logger.info(
        f"pass starting: {invocation.description}",
        extra={
            **_log_fields(invocation, request.stack, request.targets),
            "budget_seconds": round(request.budget_seconds, 1),
        },
    )
    deadline = time.monotonic() + request.budget_seconds
    outcomes = run_on_targets(
        request.settings,
        request.targets,
        budget_seconds=request.budget_seconds,
        force_dry_run=invocation.force_dry_run,
    )
    for outcome in outcomes:
        _report(outcome)
    policies = {target.name: target.policy for target in request.targets}
    record_pass_budgets(
        request.settings,
        {o.name: (o.result, policies.get(o.name)) for o in outcomes if o.result is not None},
        seconds_left=lambda: deadline - time.monotonic(),
    )
    failed = [outcome.name for outcome in outcomes if outcome.status == "error"]
    if failed:
        raise TargetsFailedError(
            f"the pass failed on {len(failed)} of {len(outcomes)} target(s): {', '.join(failed)} "
            "(the error line of each names the problem)"
        )
    return [_target_summary(outcome) for outcome in outcomes]


@contextmanager
def _outcome_recorded(record: Callable[..., None], failure: type[ReaperError]) -> Iterator[None]:
    """Record whether `failure` escaped the block in its 0/1 metric (0 too: the alarm needs
    data); the error still propagates."""
    try:
        yield
    except failure:
        record(metrics, failed=True)
        raise
    record(metrics, failed=False)


def _resolve_targets(settings: LambdaSettings) -> list[FleetTarget]:
    if settings.discovery_tag is None:
        return resolve_targets(settings)
    # A failed discovery knows nothing of the fleet: no database is touched, not even the
    # listed ones.
    with _outcome_recorded(record_discovery_outcome, DiscoveryError):
        return resolve_targets(settings)


def _load_policy(settings: LambdaSettings) -> LoadedPolicy:
    # Fail closed: no target is touched; the metric and the raised error make it visible.
    with _outcome_recorded(record_policy_outcome, PolicyError):
        return load_policy(settings)


def _report(outcome: TargetOutcome) -> None:
    if outcome.secret_reread:
        logger.warning(
            f"target {outcome.name}: login refused with the cached secret; read it again and "
            "retried (rotated password)",
            extra={"target": outcome.name},
        )
    if outcome.error is not None:
        if outcome.result is not None:
            # A pass that stopped before terminating: what became of each session it planned.
            audit(logger, outcome.result)
        log_target_error(logger, outcome.name, outcome.error)
        if not isinstance(outcome.error, ReaperError):
            # Not a known failure mode: keep the traceback for whoever fixes it.
            logger.error(f"unexpected error on target {outcome.name}", exc_info=outcome.error)
        record_target_error(outcome.name, outcome.error)
        return
    assert outcome.result is not None  # an outcome without an error has a result
    audit(logger, outcome.result)
    record_result(outcome.result)
    if outcome.reuse_gaps:
        record_reuse_gaps(outcome.name, outcome.reuse_gaps)


def _log_fields(
    invocation: Invocation, stack: LoadedPolicy, targets: list[FleetTarget] | None = None
) -> dict[str, Any]:
    return {
        "event": invocation.kind,
        "policy_source": stack.source,
        "force_dry_run": invocation.force_dry_run,
        "targets": [target.name for target in targets or ()],
    }


def _summary(
    invocation: Invocation,
    stack: LoadedPolicy,
    *,
    targets: list[dict[str, Any]] | None = None,
    skipped: list[FleetTarget] | None = None,
) -> dict[str, Any]:
    """The invocation's JSON answer; each target says whether its own pass was a dry run."""
    return {
        "event": invocation.kind,
        "description": invocation.description,
        "action": invocation.action,
        "policy_source": stack.source,
        "force_dry_run": invocation.force_dry_run,
        "targets": targets or [],
        "skipped_targets": [{"target": t.name, "reason": t.reason} for t in skipped or ()],
    }


def _target_summary(outcome: TargetOutcome) -> dict[str, Any]:
    result = outcome.result
    return {
        "target": outcome.name,
        "status": outcome.status,
        "error": None if outcome.error is None else str(outcome.error),
        "error_type": None if outcome.error is None else type(outcome.error).__name__,
        "dry_run": None if result is None else result.dry_run,
        "duration_seconds": None if result is None else round(result.duration_seconds, 3),
        "counts": None if result is None else asdict(result.counts),
        "connections": (
            None if result is None or result.connections is None else result.connections.to_dict()
        ),
        "oldest_idle_seconds": None if result is None else result.oldest_idle_seconds,
        "stopped_before_terminating": None if result is None else result.stopped_before_terminating,
        "terminated_by_application": (
            None if result is None else result.terminated_by_application()
        ),
        "secret_reread": outcome.secret_reread,
    }
