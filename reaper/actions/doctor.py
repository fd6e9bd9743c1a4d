"""The one path of a preflight: connect -> read the role's facts (-> snapshot -> plan) -> checks.

`reaper doctor` and the Lambda's doctor event both call `run_doctor`. It never terminates
anything: with a policy it plans on a real snapshot and reports what a pass would do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reaper.core.checks import DoctorReport, policy_checks, setup_checks
from reaper.errors import TargetUnreachableError
from reaper.pg import gateway
from reaper.pg.timeouts import DEFAULT_TIMEOUTS

if TYPE_CHECKING:
    from reaper.core.policy import Policy
    from reaper.pg.conninfo import ConnInfo
    from reaper.pg.timeouts import Timeouts


def run_doctor(
    target: ConnInfo, policy: Policy | None = None, *, timeouts: Timeouts = DEFAULT_TIMEOUTS
) -> DoctorReport:
    """Check one target's setup, and with a policy what it would do now.

    A target that cannot be reached, or refuses the login (a full database too), is a failed
    `connection` check, not an exception: the report is the answer either way.

    Raises:
        PassAbortedError: the database failed while the facts were read.
    """
    try:
        conn = gateway.connect(target, timeouts)
    except TargetUnreachableError as exc:
        return DoctorReport.unreachable(target.name, str(exc))
    with conn:
        facts = gateway.read_setup_facts(conn)
        snapshot = gateway.take_snapshot(conn) if policy is not None else None
    checks = setup_checks(facts)
    if snapshot is not None and policy is not None:
        checks += policy_checks(snapshot, policy)
    return DoctorReport(target.name, checks)
