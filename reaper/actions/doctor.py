"""The one path of a preflight: connect -> read the role's facts (-> snapshot -> plan) -> checks.

`reaper doctor` and the Lambda's doctor event both call `run_doctor`. It never terminates
anything: with a policy it plans on a real snapshot and reports what a pass would do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from reaper.core.checks import DoctorReport, policy_checks, setup_checks
from reaper.core.reuse import observe, statistics
from reaper.errors import TargetUnreachableError
from reaper.pg import gateway
from reaper.pg.timeouts import DEFAULT_TIMEOUTS

if TYPE_CHECKING:
    from reaper.core.checks import Check
    from reaper.core.policy import Policy
    from reaper.core.reuse import History
    from reaper.core.snapshot import Snapshot
    from reaper.pg.conninfo import ConnInfo
    from reaper.pg.timeouts import Timeouts

# More checks made from the snapshot by a shell, after the connection is closed: the connection
# budget, which needs the AWS facts only the shells may read.
SnapshotChecks = Callable[["Snapshot"], Sequence["Check"]]


def run_doctor(
    target: ConnInfo,
    policy: Policy | None = None,
    *,
    timeouts: Timeouts = DEFAULT_TIMEOUTS,
    snapshot_checks: SnapshotChecks | None = None,
    history: History | None = None,
) -> DoctorReport:
    """Check one target's setup, and with a policy what it would do now (with rules that learn,
    by what `history` and this snapshot say; the history itself is left as it was);
    `snapshot_checks` adds the checks it makes of the same snapshot.

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
        wants_snapshot = policy is not None or snapshot_checks is not None
        snapshot = gateway.take_snapshot(conn) if wants_snapshot else None
    checks = setup_checks(facts)
    if snapshot is not None and policy is not None:
        reuse = None
        if history is not None and policy.learns and not snapshot.hidden_sessions:
            reuse = statistics(observe(history, snapshot).history)
        checks += policy_checks(snapshot, policy, reuse)
    if snapshot is not None and snapshot_checks is not None:
        checks += tuple(snapshot_checks(snapshot))
    return DoctorReport(target.name, checks)
