"""The connection budget in the function: after each pass, and as a check of the doctor event.

With REAPER_BUDGET_NAME_TEMPLATE set, each target's sessions (from the pass's own snapshot, or
the doctor's) are mapped to the Region's functions and weighed against their concurrency
(`reaper.aws.concurrency`, cached for REAPER_BUDGET_CACHE_SECONDS); the result becomes the
WorstCaseConnections and ConnectionBudgetUtilization metrics and a `connection_budget` log line.
A budget never fails a pass: what AWS would not tell is said in the line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reaper.aws.concurrency import connection_budget
from reaper.aws.observability import log_budget, logger, record_budget
from reaper.core.budget import (
    budget_utilization,
    sessions_by_application_in_result,
    snapshot_budget_check,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from reaper.actions.doctor import SnapshotChecks
    from reaper.core.budget import Budget, NameTemplate
    from reaper.core.checks import Check
    from reaper.core.policy import Policy
    from reaper.core.result import PassResult
    from reaper.core.snapshot import Connections, Snapshot
    from reaper.settings import LambdaSettings

# Reading the facts may take a few API calls, each bounded by the clients' timeouts and
# retries (reaper.aws._clients): with less time left than this, the budget waits for the next
# pass rather than risk the function's timeout.
MIN_SECONDS_FOR_BUDGET = 15.0


def budget_of(
    settings: LambdaSettings,
    names: NameTemplate,
    target: str,
    policy: Policy | None,
    *,
    connections: Connections,
    applications: Mapping[str, int],
) -> Budget:
    """The target's budget with the function's settings; recorded as metrics and a log line."""
    budget = connection_budget(
        target,
        connections,
        applications,
        names,
        target_utilization=budget_utilization(policy),
        window_days=settings.budget_window_days,
        max_age=settings.budget_cache_seconds,
    )
    record_budget(budget)
    log_budget(logger, budget)
    return budget


def record_pass_budgets(
    settings: LambdaSettings,
    results: Mapping[str, tuple[PassResult, Policy | None]],
    seconds_left: Callable[[], float],
) -> None:
    """The budget of each target a pass examined, from that pass's snapshot."""
    names = settings.name_template()
    if names is None:
        return
    for target, (result, policy) in results.items():
        if result.skipped or result.connections is None:
            continue
        if seconds_left() < MIN_SECONDS_FOR_BUDGET:
            logger.warning(
                f"connection budget of target {target} not computed: "
                f"{max(seconds_left(), 0.0):.1f} s left; the next pass computes it",
                extra={"audit": "connection_budget", "target": target, "verdict": "skipped"},
            )
            continue
        budget_of(
            settings,
            names,
            target,
            policy,
            connections=result.connections,
            applications=sessions_by_application_in_result(result),
        )


def doctor_budget_checks(
    settings: LambdaSettings, target: str, policy: Policy | None
) -> SnapshotChecks | None:
    """The doctor's budget check of one target, made of its snapshot; None when off."""
    names = settings.name_template()
    if names is None:
        return None

    def checks(snapshot: Snapshot) -> tuple[Check, ...]:
        return (
            snapshot_budget_check(
                snapshot,
                lambda connections, applications: budget_of(
                    settings,
                    names,
                    target,
                    policy,
                    connections=connections,
                    applications=applications,
                ),
            ),
        )

    return checks
