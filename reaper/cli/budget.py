"""`reaper budget [--json]`: each Lambda function's concurrency against the database's slots.

One snapshot of the target (`reaper.actions.report.read_snapshot`), the functions' concurrency
from the Lambda and CloudWatch APIs with the caller's AWS credentials and Region
(`reaper.aws.concurrency`), the arithmetic of `reaper.core.budget`; a table and the
`aws lambda put-function-concurrency` commands that would make the worst case fit, or the JSON
document. Nothing is changed anywhere: the commands are printed, not run.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from reaper.actions.report import read_snapshot
from reaper.aws.concurrency import connection_budget
from reaper.cli.render import table
from reaper.core.budget import Verdict, sessions_by_application, snapshot_budget_check

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from reaper.actions.doctor import SnapshotChecks
    from reaper.core.budget import Budget, FunctionBudget, NameTemplate
    from reaper.core.checks import Check
    from reaper.core.snapshot import Connections, Snapshot
    from reaper.pg.conninfo import ConnInfo
    from reaper.pg.timeouts import Timeouts

_VERDICTS = {
    Verdict.FITS: "fits",
    Verdict.OVER: "does not fit: the reserves add up to more than the slots",
    Verdict.UNBOUNDED: "unbounded: a function without reserved concurrency can take any number",
    Verdict.UNKNOWN: "unknown: the functions could not be listed",
}


def budget_main(
    target: ConnInfo,
    timeouts: Timeouts,
    *,
    names: NameTemplate,
    target_utilization: float,
    window_days: int,
    as_json: bool,
) -> Budget:
    """Read the target and the functions, print the budget (a table, or JSON), return it.

    Raises:
        TargetUnreachableError, VisibilityError, PassAbortedError: see `read_snapshot`.
    """
    snapshot = read_snapshot(target, timeouts=timeouts)
    budget = _budget(target.name, names, target_utilization, window_days)(
        snapshot.connections, sessions_by_application(snapshot)
    )
    print(json.dumps(budget.to_dict(), indent=2) if as_json else render_budget(budget))
    return budget


def doctor_budget_checks(
    target: ConnInfo, *, names: NameTemplate, target_utilization: float, window_days: int
) -> SnapshotChecks:
    """`reaper doctor --budget`: the budget check of the doctor's snapshot."""
    budget_for = _budget(target.name, names, target_utilization, window_days)

    def checks(snapshot: Snapshot) -> tuple[Check, ...]:
        return (snapshot_budget_check(snapshot, budget_for),)

    return checks


def _budget(
    target: str, names: NameTemplate, target_utilization: float, window_days: int
) -> Callable[[Connections, Mapping[str, int]], Budget]:
    def budget_for(connections: Connections, applications: Mapping[str, int]) -> Budget:
        # A person asks once: every fact is read fresh.
        return connection_budget(
            target,
            connections,
            applications,
            names,
            target_utilization=target_utilization,
            window_days=window_days,
            max_age=0,
        )

    return budget_for


def render_budget(budget: Budget) -> str:
    """The headline, one row per function, the proposal and its commands, then the notes."""
    c = budget.connections
    worst = budget.worst_case_connections
    lines = [
        f"{budget.target}: worst case "
        + ("unknown" if worst is None else f"{worst} connections")
        + f" for {c.usable_connections} usable slots (max_connections {c.max_connections}, "
        f"{c.reserved_connections} reserved)"
        + ("" if budget.utilization is None else f", {budget.utilization:.0%}")
        + f": {_VERDICTS[budget.verdict]}",
        f"other clients: {budget.other_clients} session(s)"
        + (
            " ("
            + ", ".join(f"{a or '(none)'} {n}" for a, n in budget.other_applications.items())
            + ")"
            if budget.other_applications
            else ""
        ),
    ]
    if budget.functions:
        lines += [
            "",
            table(
                (
                    "function",
                    "sessions",
                    "reserved",
                    "provisioned",
                    f"peak ({budget.window_days} d)",
                    "conn/env",
                    "worst case",
                    "proposed",
                ),
                [_row(f) for f in budget.functions],
            ),
        ]
    pool = f"{budget.pool} unreserved executions" + ("" if budget.pool_read else " (assumed)")
    lines += ["", f"account pool: {pool}; an unreserved function may take all of it"]
    slots = budget.budget_connections + budget.other_clients
    lines.append(
        f"proposal: {budget.proposed_connections} of {slots} slots "
        f"(target_utilization {budget.target_utilization:.0%} of {c.usable_connections}), "
        "other clients included: " + ("fits" if budget.proposal_fits else "no reserves fit")
    )
    commands = budget.commands()
    if commands:
        lines += ["", "to apply it:", *(f"  {command}" for command in commands)]
    if budget.notes:
        lines += ["", "notes:", *(f"  - {note}" for note in budget.notes)]
    return "\n".join(lines)


def _row(f: FunctionBudget) -> tuple[object, ...]:
    proposed = "" if f.proposed is None else str(f.proposed)
    if f.proposed_below_peak:
        proposed += " (below peak)"
    return (
        f.name,
        f.sessions,
        "none" if f.reserved is None else f.reserved,
        "?" if f.provisioned is None else f.provisioned,
        "?" if f.peak is None else f.peak,
        f.connections_per_environment,
        f"{f.worst_case} (unbounded)" if f.unbounded else f.worst_case,
        proposed,
    )
