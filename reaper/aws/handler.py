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
  gets ConnectionSlotsExhausted=1 and a "database_full" line;
- a doctor event: the checks of each target are returned (and logged), failed ones included.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from reaper.aws.events import parse_event, select_targets
from reaper.aws.fanout import TargetJob, TargetRun, doctor_on_targets, run_on_targets
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
    record_target_error,
    record_target_skipped,
)
from reaper.aws.policy_source import load_parameter_policy, load_policy
from reaper.aws.settings import load_lambda_settings
from reaper.aws.targets import resolve_targets
from reaper.core.doctor import DoctorReport, unreachable_check
from reaper.errors import (
    DiscoveryError,
    PolicyError,
    ReaperError,
    SettingsError,
    TargetsFailedError,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from aws_lambda_powertools.utilities.typing import LambdaContext

    from reaper.aws.events import Invocation
    from reaper.aws.policy_source import LoadedPolicy
    from reaper.aws.settings import LambdaSettings
    from reaper.aws.targets import PlannedTarget


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
        return _handle(event, context)
    except ReaperError as exc:
        logger.error(
            f"invocation failed: {exc}",
            extra={"error_type": type(exc).__name__, "error": str(exc)},
        )
        raise


def _handle(event: Any, context: LambdaContext) -> dict[str, Any]:
    settings = load_lambda_settings()
    loaded = _load_policy(settings)
    invocation = parse_event(event)
    planned = _resolve_targets(settings)
    names = select_targets(tuple(target.name for target in planned), invocation.targets)
    selected = [target for target in planned if target.name in names]
    dry_run = loaded.policy.dry_run or invocation.force_dry_run
    context_fields = {
        "event": invocation.kind,
        "policy_source": loaded.source,
        "dry_run": dry_run,
        "targets": list(names),
    }
    budget_seconds = (
        context.get_remaining_time_in_millis() / 1000 - settings.deadline_margin_seconds
    )
    if not (invocation.run_pass or invocation.doctor):
        logger.info(f"no pass: {invocation.description}", extra=context_fields)
        return _summary(invocation, loaded, dry_run=dry_run, runs=[], skipped=[])
    skipped = [(t.name, reason) for t in selected if (reason := t.skip_reason) is not None]
    for name, reason in skipped:
        log_target_skipped(logger, name, reason)
        record_target_skipped(name)
    jobs, not_started = _jobs(settings, loaded, [t for t in selected if t.skip_reason is None])
    if invocation.doctor:
        logger.info("doctor starting", extra=context_fields)
        reports = doctor_on_targets(settings, jobs, budget_seconds=budget_seconds)
        reports += [
            DoctorReport(run.name, (unreachable_check(str(run.error)),)) for run in not_started
        ]
        for report in reports:
            log_doctor_report(logger, report)
        # The reports are the answer, failed checks included: the invocation itself succeeds.
        return {
            "event": invocation.kind,
            "description": invocation.description,
            "action": "doctor",
            "policy_source": loaded.source,
            "targets": [report.to_dict() for report in reports],
            "skipped_targets": _skipped_summary(skipped),
        }
    logger.info(
        f"pass starting: {invocation.description}",
        extra={**context_fields, "budget_seconds": round(budget_seconds, 1)},
    )
    ran = run_on_targets(
        settings, jobs, budget_seconds=budget_seconds, force_dry_run=invocation.force_dry_run
    )
    by_name = {run.name: run for run in [*not_started, *ran]}
    runs = [by_name[target.name] for target in selected if target.name in by_name]
    for run in runs:
        _report(run)
    failed = [run.name for run in runs if run.status == "error"]
    if failed:
        raise TargetsFailedError(
            f"the pass failed on {len(failed)} of {len(runs)} target(s): {', '.join(failed)} "
            "(the error line of each names the problem)"
        )
    return _summary(invocation, loaded, dry_run=dry_run, runs=runs, skipped=skipped)


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


def _resolve_targets(settings: LambdaSettings) -> list[PlannedTarget]:
    if settings.discovery_tag is None:
        return resolve_targets(settings)
    # A failed discovery knows nothing of the fleet: no database is touched, not even the
    # listed ones.
    with _outcome_recorded(record_discovery_outcome, DiscoveryError):
        return resolve_targets(settings)


def _jobs(
    settings: LambdaSettings, stack: LoadedPolicy, targets: Sequence[PlannedTarget]
) -> tuple[list[TargetJob], list[TargetRun]]:
    """The passes to run, and the targets that fail before one can start (bad tags, or a bad
    policy of their own: it fails closed on that target only)."""
    jobs: list[TargetJob] = []
    not_started: list[TargetRun] = []
    for target in targets:
        if target.entry is None or target.problem is not None:
            problem = target.problem or f"target {target.name} has no connection settings"
            not_started.append(TargetRun(target.name, error=SettingsError(problem)))
            continue
        parameter = target.entry.policy_parameter
        if parameter is None:
            jobs.append(TargetJob(target.entry, stack.policy))
            continue
        try:
            own = load_parameter_policy(parameter, max_age=settings.policy_cache_seconds)
        except PolicyError as exc:
            not_started.append(TargetRun(target.name, error=exc))
            continue
        jobs.append(TargetJob(target.entry, own.policy))
    return jobs, not_started


def _load_policy(settings: LambdaSettings) -> LoadedPolicy:
    # Fail closed: no target is touched; the metric and the raised error make it visible.
    with _outcome_recorded(record_policy_outcome, PolicyError):
        return load_policy(settings)


def _report(run: TargetRun) -> None:
    if run.secret_reread:
        logger.warning(
            f"target {run.name}: login refused with the cached secret; read it again and "
            "retried (rotated password)",
            extra={"target": run.name},
        )
    if run.error is not None:
        log_target_error(logger, run.name, run.error)
        if not isinstance(run.error, ReaperError):
            # Not a known failure mode: keep the traceback for whoever fixes it.
            logger.error(f"unexpected error on target {run.name}", exc_info=run.error)
        record_target_error(run.name, run.error)
        return
    assert run.result is not None  # a run without an error has a result
    audit(logger, run.result)
    record_result(run.result)


def _summary(
    invocation: Invocation,
    loaded: LoadedPolicy,
    *,
    dry_run: bool,
    runs: list[TargetRun],
    skipped: list[tuple[str, str]],
) -> dict[str, Any]:
    return {
        "event": invocation.kind,
        "description": invocation.description,
        "action": "pass" if invocation.run_pass else "none",
        "policy_source": loaded.source,
        "dry_run": dry_run,
        "targets": [_target_summary(run) for run in runs],
        "skipped_targets": _skipped_summary(skipped),
    }


def _skipped_summary(skipped: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"target": name, "reason": reason} for name, reason in skipped]


def _target_summary(run: TargetRun) -> dict[str, Any]:
    result = run.result
    return {
        "target": run.name,
        "status": run.status,
        "error": None if run.error is None else str(run.error),
        "error_type": None if run.error is None else type(run.error).__name__,
        "dry_run": None if result is None else result.dry_run,
        "duration_seconds": None if result is None else round(result.duration_seconds, 3),
        "counts": None if result is None else asdict(result.counts),
        "connections": (
            None if result is None or result.connections is None else result.connections.to_dict()
        ),
        "oldest_idle_seconds": None if result is None else result.oldest_idle_seconds,
        "terminated_by_application": (
            None if result is None else result.terminated_by_application()
        ),
        "secret_reread": run.secret_reread,
    }
