"""The Lambda entry point: Powertools decorators and one call into `handle`.

`handle` reads the settings and the policy, validates the event, runs one pass per selected
target (concurrently, inside the time left) through `run_pass` — the same path as `reaper run`
— and turns the results into metrics, audit lines and a JSON summary.

Failure semantics (docs/alarms-and-metrics.md):
- bad settings, policy or event: nothing runs, the invocation raises (Lambda's Errors metric);
  a bad policy also emits PolicyErrors=1;
- a failed target: TargetErrors=1 and an error line for it, the other targets still run, and
  the invocation raises at the end (TargetsFailedError) so the Errors alarm fires too.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from reaper.aws.events import parse_event, select_targets
from reaper.aws.fanout import run_on_targets
from reaper.aws.observability import (
    audit,
    log_target_error,
    logger,
    metrics,
    record_policy_outcome,
    record_result,
    record_target_error,
)
from reaper.aws.policy_source import load_policy
from reaper.aws.settings import load_lambda_settings
from reaper.errors import PolicyError, ReaperError, TargetsFailedError

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

    from reaper.aws.events import Invocation
    from reaper.aws.fanout import TargetRun
    from reaper.aws.policy_source import LoadedPolicy
    from reaper.aws.settings import LambdaSettings


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
    entries = settings.target_entries()
    names = select_targets(tuple(entry.name for entry in entries), invocation.targets)
    selected = [entry for entry in entries if entry.name in names]
    dry_run = loaded.policy.dry_run or invocation.force_dry_run
    context_fields = {
        "event": invocation.kind,
        "policy_source": loaded.source,
        "dry_run": dry_run,
        "targets": list(names),
    }
    if not invocation.run_pass:
        logger.info(f"no pass: {invocation.description}", extra=context_fields)
        return _summary(invocation, loaded, dry_run=dry_run, runs=[])
    budget_seconds = (
        context.get_remaining_time_in_millis() / 1000 - settings.deadline_margin_seconds
    )
    logger.info(
        f"pass starting: {invocation.description}",
        extra={**context_fields, "budget_seconds": round(budget_seconds, 1)},
    )
    runs = run_on_targets(
        settings,
        selected,
        loaded.policy,
        budget_seconds=budget_seconds,
        force_dry_run=invocation.force_dry_run,
    )
    for run in runs:
        _report(run)
    failed = [run.name for run in runs if run.status == "error"]
    if failed:
        raise TargetsFailedError(
            f"the pass failed on {len(failed)} of {len(runs)} target(s): {', '.join(failed)} "
            "(the error line of each names the problem)"
        )
    return _summary(invocation, loaded, dry_run=dry_run, runs=runs)


def _load_policy(settings: LambdaSettings) -> LoadedPolicy:
    try:
        loaded = load_policy(settings)
    except PolicyError:
        # Fail closed: no target is touched; the metric and the raised error make it visible.
        record_policy_outcome(metrics, failed=True)
        raise
    record_policy_outcome(metrics, failed=False)
    return loaded


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
        record_target_error(run.name)
        return
    assert run.result is not None  # a run without an error has a result
    audit(logger, run.result)
    record_result(run.result)


def _summary(
    invocation: Invocation, loaded: LoadedPolicy, *, dry_run: bool, runs: list[TargetRun]
) -> dict[str, Any]:
    return {
        "event": invocation.kind,
        "description": invocation.description,
        "action": "pass" if invocation.run_pass else "none",
        "policy_source": loaded.source,
        "dry_run": dry_run,
        "targets": [_target_summary(run) for run in runs],
    }


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
