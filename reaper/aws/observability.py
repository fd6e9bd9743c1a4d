"""The Powertools Logger and Metrics objects, the metric names, and how a pass result becomes
CloudWatch EMF metrics and audit log lines.

Both objects are created at import (a warm Lambda reuses them) and touch nothing but stdout:
the EMF blobs are log lines, so the function needs no CloudWatch API access from its VPC.
Nothing here ever logs a Target's connection parameters; error messages arrive redacted.
"""

from __future__ import annotations

import io
import sys
from dataclasses import asdict
from typing import IO, TYPE_CHECKING, Any, cast

from aws_lambda_powertools import Logger, Metrics, single_metric
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import (
    AmazonCloudWatchEMFProvider,
)

from reaper.core.budget import Verdict
from reaper.core.result import Outcome
from reaper.errors import DatabaseFullError, DeadlineExceededError, PassLockSquattedError
from reaper.settings import load_observability_settings

if TYPE_CHECKING:
    from reaper.core.budget import Budget
    from reaper.core.checks import DoctorReport
    from reaper.core.result import PassResult, SessionRecord

# Metric names: the template's alarms and dashboard use the same strings.
SESSIONS_EXAMINED = "SessionsExamined"
SESSIONS_MATCHED = "SessionsMatched"
SESSIONS_TERMINATED = "SessionsTerminated"
TERMINATIONS_REFUSED = "TerminationsRefused"
CLIENT_CONNECTIONS = "ClientConnections"
MAX_CONNECTIONS = "MaxConnections"
CONNECTION_UTILIZATION = "ConnectionUtilization"
OLDEST_IDLE_SECONDS = "OldestIdleSeconds"
TARGET_ERRORS = "TargetErrors"
CONNECTION_SLOTS_EXHAUSTED = "ConnectionSlotsExhausted"
POLICY_ERRORS = "PolicyErrors"
# Discovery (REAPER_DISCOVERY_TAG): the RDS API failed; a discovered instance was left alone.
DISCOVERY_ERRORS = "DiscoveryErrors"
TARGET_SKIPPED = "TargetSkipped"
SESSIONS_TERMINATED_BY_APPLICATION = "SessionsTerminatedByApplication"
# The connection budget (docs/budget.md): the functions' worst case against the usable slots.
WORST_CASE_CONNECTIONS = "WorstCaseConnections"
CONNECTION_BUDGET_UTILIZATION = "ConnectionBudgetUtilization"
# 1 for a pass skipped because another pass of the reaper held the lock, 0 for one that ran:
# the alarm fires when every pass of several periods in a row was skipped (a stuck reaper).
PASS_SKIPPED = "PassSkipped"
# Emitted (1) only when it happens: a stranger holds the pass lock; a pass ran out of time.
PASS_LOCK_SQUATTED = "PassLockSquatted"
DEADLINE_EXCEEDED = "DeadlineExceeded"
# With learned thresholds: the idle age a pass last saw before each reuse, per application.
IDLE_GAP_BEFORE_REUSE = "IdleGapBeforeReuse"

TARGET_DIMENSION = "Target"
APPLICATION_DIMENSION = "Application"
SERVICE_DIMENSION = "service"
# CloudWatch refuses an empty dimension value; a session may have no application_name.
NO_APPLICATION = "(none)"

# Outcomes that get an audit line of their own: what was done or may have been done, what would
# have been done, and what was or would be refused.
AUDITED_OUTCOMES = (
    Outcome.TERMINATED,
    Outcome.UNCONFIRMED,
    Outcome.WOULD_TERMINATE,
    Outcome.REFUSED,
    Outcome.WOULD_REFUSE,
)
# Of those, the ones an operator must act on or look into: WARNING lines.
_WARNING_OUTCOMES = (Outcome.UNCONFIRMED, Outcome.REFUSED, Outcome.WOULD_REFUSE)


class _CurrentStdout(io.TextIOBase):
    """Writes to whatever sys.stdout is at the time of the write.

    Powertools' Logger binds its stream when it is created; the Lambda runtime, `reaper invoke`
    and pytest's capture may each have replaced sys.stdout since this module was imported.
    """

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


# At import, as the Logger needs them: a bad variable fails the function's start, naming it.
_settings = load_observability_settings()
SERVICE_NAME = _settings.service_name
NAMESPACE = _settings.metrics_namespace

logger = Logger(
    service=SERVICE_NAME, level=_settings.logger_level(), stream=cast("IO[str]", _CurrentStdout())
)
# Invocation-level metrics (PolicyErrors), flushed by @metrics.log_metrics; each target's
# metrics go out in a blob of their own (see record_result) so dimension sets never mix.
metrics = Metrics(namespace=NAMESPACE, service=SERVICE_NAME)


def record_policy_outcome(metrics: Metrics, *, failed: bool) -> None:
    """PolicyErrors: 1 when the policy could not be loaded, else 0 (so the alarm has data)."""
    metrics.add_metric(name=POLICY_ERRORS, unit=MetricUnit.Count, value=1 if failed else 0)


def record_discovery_outcome(metrics: Metrics, *, failed: bool) -> None:
    """DiscoveryErrors: 1 when the RDS API could not list the databases, else 0."""
    metrics.add_metric(name=DISCOVERY_ERRORS, unit=MetricUnit.Count, value=1 if failed else 0)


def record_target_skipped(target: str) -> None:
    """Print one EMF blob with TargetSkipped=1 for a discovered target left alone."""
    target_metrics = _target_metrics(target)
    target_metrics.add_metric(name=TARGET_SKIPPED, unit=MetricUnit.Count, value=1)
    target_metrics.flush_metrics()


def log_target_skipped(logger: Logger, target: str, reason: str) -> None:
    """The line saying why a discovered target gets no pass."""
    logger.info(
        f"target {target} skipped: {reason}",
        extra={"audit": "target_skipped", "target": target, "reason": reason},
    )


def record_result(result: PassResult) -> None:
    """Print one EMF blob with the target's metrics (dimension Target), plus one per application
    that had sessions terminated (dimensions Target and Application)."""
    target_metrics = _target_metrics(result.target)
    target_metrics.add_metric(name=TARGET_ERRORS, unit=MetricUnit.Count, value=0)
    target_metrics.add_metric(
        name=PASS_SKIPPED, unit=MetricUnit.Count, value=1 if result.skipped else 0
    )
    if not result.skipped:
        counts = result.counts
        for name, value in (
            (SESSIONS_EXAMINED, counts.examined),
            (SESSIONS_MATCHED, counts.matched),
            (SESSIONS_TERMINATED, counts.terminated),
            (TERMINATIONS_REFUSED, counts.refused),
        ):
            target_metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
        if result.connections is not None:
            picture = result.connections
            target_metrics.add_metric(
                name=CLIENT_CONNECTIONS, unit=MetricUnit.Count, value=picture.client_connections
            )
            target_metrics.add_metric(
                name=MAX_CONNECTIONS, unit=MetricUnit.Count, value=picture.max_connections
            )
            # What the pass left behind: the alarm asks whether reaping keeps up.
            target_metrics.add_metric(
                name=CONNECTION_UTILIZATION,
                unit=MetricUnit.Percent,
                value=round(picture.utilization_after * 100, 2),
            )
        target_metrics.add_metric(
            name=OLDEST_IDLE_SECONDS,
            unit=MetricUnit.Seconds,
            value=round(result.oldest_idle_seconds or 0.0, 3),
        )
    target_metrics.flush_metrics()
    for application, terminated in sorted(result.terminated_by_application().items()):
        with single_metric(
            name=SESSIONS_TERMINATED_BY_APPLICATION,
            unit=MetricUnit.Count,
            value=terminated,
            namespace=NAMESPACE,
            default_dimensions={
                TARGET_DIMENSION: result.target,
                APPLICATION_DIMENSION: application or NO_APPLICATION,
                SERVICE_DIMENSION: SERVICE_NAME,
            },
        ):
            pass


# The metric of each error that has one of its own besides TargetErrors; emitted only when it
# happens (a metric without data points costs nothing).
_ERROR_METRICS: tuple[tuple[type[BaseException], str], ...] = (
    (DatabaseFullError, CONNECTION_SLOTS_EXHAUSTED),
    (PassLockSquattedError, PASS_LOCK_SQUATTED),
    (DeadlineExceededError, DEADLINE_EXCEEDED),
)


def record_reuse_gaps(target: str, gaps: dict[str, list[float]]) -> None:
    """Print one EMF blob per application with the idle ages seen before each reuse
    (IdleGapBeforeReuse, dimensions Target and Application): CloudWatch keeps their
    distribution (percentiles) beyond the life of one Lambda environment."""
    for application, values in sorted(gaps.items()):
        provider = _target_metrics(target)
        provider.add_dimension(name=APPLICATION_DIMENSION, value=application or NO_APPLICATION)
        for value in values:
            # Several values of one metric in one blob: EMF sends them as one array.
            provider.add_metric(
                name=IDLE_GAP_BEFORE_REUSE, unit=MetricUnit.Seconds, value=round(value, 3)
            )
        provider.flush_metrics()


def record_target_error(target: str, error: BaseException | None = None) -> None:
    """Print one EMF blob with TargetErrors=1 for a target whose pass failed, and the error's
    own metric: ConnectionSlotsExhausted=1 (the database was full), PassLockSquatted=1 (a
    stranger holds the pass lock), DeadlineExceeded=1 (out of time)."""
    target_metrics = _target_metrics(target)
    target_metrics.add_metric(name=TARGET_ERRORS, unit=MetricUnit.Count, value=1)
    for error_type, metric_name in _ERROR_METRICS:
        if isinstance(error, error_type):
            target_metrics.add_metric(name=metric_name, unit=MetricUnit.Count, value=1)
    target_metrics.flush_metrics()


def audit(logger: Logger, result: PassResult) -> None:
    """One log line per session terminated or maybe terminated (a terminate statement cut off),
    would-be-terminated, refused or would-be-refused, a warning line per warning of the pass
    (a superuser reaper), then a summary line for the target."""
    for record in result.sessions:
        if record.outcome in AUDITED_OUTCOMES:
            log = logger.warning if record.outcome in _WARNING_OUTCOMES else logger.info
            outcome = record.outcome.value.replace("_", " ")
            log(
                f"session {record.pid} {outcome} on target {result.target}",
                extra=_session_fields(result, record),
            )
    for warning in result.warnings:
        logger.warning(
            f"target {result.target}: {warning}",
            extra={"audit": "warning", "target": result.target, "warning": warning},
        )
    connections = result.connections
    if result.skipped:
        status, said = "skipped", "skipped: another pass of the reaper holds the lock"
    elif result.stopped_before_terminating is not None:
        status, said = "stopped", f"stopped before terminating: {result.stopped_before_terminating}"
    else:
        status, said = "ok", "finished"
    logger.info(
        f"pass on target {result.target} {said}",
        extra={
            "audit": "summary",
            "target": result.target,
            "status": status,
            "stopped_before_terminating": result.stopped_before_terminating,
            "dry_run": result.dry_run,
            "duration_seconds": round(result.duration_seconds, 3),
            "counts": asdict(result.counts),
            "client_connections": connections.client_connections if connections else None,
            "max_connections": connections.max_connections if connections else None,
            "usable_connections": connections.usable_connections if connections else None,
            "utilization_before_percent": (
                round(connections.utilization_before * 100, 2) if connections else None
            ),
            "utilization_after_percent": (
                round(connections.utilization_after * 100, 2) if connections else None
            ),
            "oldest_idle_seconds": result.oldest_idle_seconds,
            "gate_open": result.gate_open,
            "server_version_num": result.server_version_num,
        },
    )


def log_target_error(logger: Logger, target: str, error: BaseException) -> None:
    """The error line for a target whose pass failed (the message is already redacted); a full
    database has an audit value of its own, so a log filter finds exactly those."""
    fields: dict[str, Any] = {
        "audit": "target_error",
        "target": target,
        "error_type": type(error).__name__,
        "error": str(error),
    }
    if isinstance(error, DatabaseFullError):
        fields.update(audit="database_full", cause=error.cause)
    elif isinstance(error, PassLockSquattedError):
        fields.update(audit="pass_lock_squatted", holder_pids=list(error.holder_pids))
    logger.error(f"pass on target {target} failed: {error}", extra=fields)


def log_doctor_report(logger: Logger, report: DoctorReport) -> None:
    """One line per target with every check; WARNING when a check failed."""
    log = logger.warning if report.failed else logger.info
    log(
        f"doctor on target {report.target}: {report.status.value}",
        extra={"audit": "doctor", **report.to_dict()},
    )


def record_budget(budget: Budget) -> None:
    """Print one EMF blob with the target's worst case and its share of the usable slots; none
    when the worst case is unknown (the functions could not be listed)."""
    utilization = budget.utilization
    if budget.worst_case_connections is None or utilization is None:
        return
    target_metrics = _target_metrics(budget.target)
    target_metrics.add_metric(
        name=WORST_CASE_CONNECTIONS, unit=MetricUnit.Count, value=budget.worst_case_connections
    )
    target_metrics.add_metric(
        name=CONNECTION_BUDGET_UTILIZATION,
        unit=MetricUnit.Percent,
        value=round(utilization * 100, 2),
    )
    target_metrics.flush_metrics()


def log_budget(logger: Logger, budget: Budget) -> None:
    """One line with the budget's verdict and figures; WARNING unless it fits."""
    log = logger.info if budget.verdict is Verdict.FITS else logger.warning
    log(
        f"connection budget on target {budget.target}: {budget.verdict.value}",
        extra={"audit": "connection_budget", **budget.to_dict()},
    )


def _target_metrics(target: str) -> AmazonCloudWatchEMFProvider:
    # A provider of its own (not the shared Metrics object) so this blob carries exactly the
    # dimensions Target and service, whatever else the invocation has pending.
    provider = AmazonCloudWatchEMFProvider(namespace=NAMESPACE, service=SERVICE_NAME)
    provider.add_dimension(name=TARGET_DIMENSION, value=target)
    return provider


def _session_fields(result: PassResult, record: SessionRecord) -> dict[str, Any]:
    return {
        "audit": "session",
        "target": result.target,
        "outcome": record.outcome.value,
        "dry_run": result.dry_run,
        "pid": record.pid,
        "user": record.user,
        "database": record.database,
        "application_name": record.application_name,
        "client_addr": record.client_addr,
        "state": record.state,
        "idle_seconds": None if record.idle_seconds is None else round(record.idle_seconds, 1),
        "rule": record.rule,
        "reason": record.reason.value,
        "threshold_seconds": record.threshold_seconds,
        "threshold_source": record.threshold_source,
        # Learned thresholds: what was learned of the application, or why the static one held.
        "threshold_why": None if record.learned is None else record.learned.why(),
    }
