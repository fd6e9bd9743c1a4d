"""The one path of a preflight: connect -> read the role's facts (-> snapshot -> plan) -> checks.

`reaper doctor` and the Lambda's doctor event both call `run_doctor`. It never terminates
anything: with a policy it plans on a real snapshot and reports what a pass would do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reaper.core.doctor import DoctorReport, policy_checks, setup_checks, unreachable_check
from reaper.errors import TargetUnreachableError
from reaper.pg import gateway

if TYPE_CHECKING:
    from reaper.core.policy import Policy
    from reaper.pg.target import Target


def run_doctor(
    target: Target, policy: Policy | None = None, *, timeouts: gateway.Timeouts | None = None
) -> DoctorReport:
    """Check one target's setup, and with a policy what it would do now.

    A target that cannot be reached, or refuses the login (a full database too), is a failed
    `connection` check, not an exception: the report is the answer either way.

    Raises:
        PassAbortedError: the database failed while the facts were read.
    """
    try:
        conn = gateway.connect(target, timeouts or gateway.Timeouts())
    except TargetUnreachableError as exc:
        return DoctorReport(target.name, (unreachable_check(str(exc)),))
    with conn:
        facts = gateway.read_setup_facts(conn)
        snapshot = gateway.take_snapshot(conn) if policy is not None else None
    checks = setup_checks(facts)
    if snapshot is not None and policy is not None:
        checks += policy_checks(snapshot, policy)
    return DoctorReport(target.name, checks)
