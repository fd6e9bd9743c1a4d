"""`reaper doctor`: run the preflight on one target and print one line per check."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from reaper.actions.doctor import run_doctor
from reaper.cli.render import printable
from reaper.core.checks import Status

if TYPE_CHECKING:
    from reaper.actions.doctor import SnapshotChecks
    from reaper.core.checks import DoctorReport
    from reaper.core.policy import Policy
    from reaper.core.reuse import History
    from reaper.pg.conninfo import ConnInfo
    from reaper.pg.timeouts import Timeouts

_NAME_WIDTH = 18


def doctor_main(
    target: ConnInfo,
    policy: Policy | None,
    timeouts: Timeouts,
    *,
    as_json: bool,
    snapshot_checks: SnapshotChecks | None = None,
    history: History | None = None,
) -> DoctorReport:
    """Run the checks, print them (as text or JSON) and return the report."""
    report = run_doctor(
        target, policy, timeouts=timeouts, snapshot_checks=snapshot_checks, history=history
    )
    print(json.dumps(report.to_dict(), indent=2) if as_json else render_report(report))
    return report


def render_report(report: DoctorReport) -> str:
    """One line per check: status, name, what it saw and, unless ok, the fix."""
    # Summaries and fixes quote role and application names, which may hold control characters.
    lines = [f"reaper doctor: {printable(report.target)}"]
    for check in report.checks:
        line = f"  {check.status.value:<4}  {check.name:<{_NAME_WIDTH}} {printable(check.summary)}"
        if check.fix and check.status is not Status.OK:
            line += f" -> fix: {printable(check.fix)}"
        lines.append(line)
    counts = {status: sum(c.status is status for c in report.checks) for status in Status}
    verdict = {
        Status.OK: "ready",
        Status.WARN: "ready, with warnings",
        Status.FAIL: "not ready",
    }[report.status]
    lines.append(
        f"{counts[Status.FAIL]} failed, {counts[Status.WARN]} warning(s), "
        f"{counts[Status.OK]} ok: {verdict}"
    )
    return "\n".join(lines)
