"""The one path of a pass: connect -> lock -> snapshot -> plan -> terminate -> result.

The CLI and the Lambda handler both call `run_pass`; neither decides anything on its own.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from reaper.core.planning import check_visibility, plan
from reaper.core.result import skipped_result, summarize
from reaper.pg import gateway

if TYPE_CHECKING:
    from reaper.core.policy import Policy
    from reaper.core.result import PassResult
    from reaper.pg.target import Target


def run_pass(
    target: Target,
    policy: Policy,
    *,
    timeouts: gateway.Timeouts | None = None,
    force_dry_run: bool = False,
) -> PassResult:
    """Run one pass of the policy on one target.

    Args:
        target: the database to act on.
        policy: the validated policy.
        timeouts: limits on the reaper's own connection.
        force_dry_run: plan and report only, whatever the policy says. (Nothing can force a
            real pass when the policy asks for a dry run.)

    Raises:
        TargetUnreachableError: the database cannot be reached or refused the login.
        VisibilityError: the role cannot see other roles' sessions; nothing was terminated.
        PassAbortedError: the database failed mid-pass; sessions already signalled in the same
            statement may have been terminated, nothing after it was.
    """
    started = time.monotonic()
    dry_run = policy.dry_run or force_dry_run
    with gateway.connect(target, timeouts or gateway.Timeouts()) as conn:
        if not gateway.try_pass_lock(conn):
            return skipped_result(
                target.name, dry_run=dry_run, duration_seconds=time.monotonic() - started
            )
        snapshot = gateway.take_snapshot(conn)
        check_visibility(snapshot)
        decisions = plan(snapshot, policy)
        signals = (
            {} if dry_run else gateway.terminate(conn, [d.session for d in decisions.to_terminate])
        )
    return summarize(
        target.name,
        snapshot,
        decisions,
        signals,
        dry_run=dry_run,
        duration_seconds=time.monotonic() - started,
    )
