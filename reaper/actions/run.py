"""The one path of a pass: connect -> lock -> snapshot -> plan -> terminate -> result.

The CLI and the Lambda handler both call `run_pass`; neither decides anything on its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from reaper.core.planning import check_visibility, plan
from reaper.core.result import skipped_result, summarize
from reaper.pg import gateway
from reaper.pg.timeouts import DEFAULT_TIMEOUTS

if TYPE_CHECKING:
    from reaper.core.policy import Policy
    from reaper.core.result import PassResult
    from reaper.pg.conninfo import ConnInfo
    from reaper.pg.timeouts import Timeouts


# Told each step's name and seconds as it ends: connect, lock, snapshot, plan, terminate, close,
# result (a skipped pass stops after lock). For the bench's breakdown of a pass.
StepObserver = Callable[[str, float], None]


class _Laps:
    """Times the steps for an observer; without one it does nothing."""

    def __init__(self, observer: StepObserver | None) -> None:
        self._observer = observer
        self._last = time.perf_counter() if observer else 0.0

    def end(self, step: str) -> None:
        if self._observer is None:
            return
        self._observer(step, time.perf_counter() - self._last)
        # Restarted after the call, so the observer's own time is in no step.
        self._last = time.perf_counter()


def run_pass(
    target: ConnInfo,
    policy: Policy,
    *,
    timeouts: Timeouts = DEFAULT_TIMEOUTS,
    force_dry_run: bool = False,
    on_step: StepObserver | None = None,
) -> PassResult:
    """Run one pass of the policy on one target.

    Args:
        target: the database to act on.
        policy: the validated policy.
        timeouts: limits on the reaper's own connection.
        force_dry_run: plan and report only, whatever the policy says. (Nothing can force a
            real pass when the policy asks for a dry run.)
        on_step: called with each step's name and duration as it ends (see StepObserver).

    Raises:
        TargetUnreachableError: the database cannot be reached or refused the login.
        VisibilityError: the role cannot see other roles' sessions; nothing was terminated.
        PassAbortedError: the database failed mid-pass; sessions already signalled in the same
            statement may have been terminated, nothing after it was.
    """
    started = time.monotonic()
    dry_run = policy.dry_run or force_dry_run
    laps = _Laps(on_step)
    with gateway.connect(target, timeouts) as conn:
        laps.end("connect")
        locked = gateway.try_pass_lock(conn)
        laps.end("lock")
        if not locked:
            return skipped_result(
                target.name, dry_run=dry_run, duration_seconds=time.monotonic() - started
            )
        snapshot = gateway.take_snapshot(conn)
        laps.end("snapshot")
        check_visibility(snapshot)
        decisions = plan(snapshot, policy)
        laps.end("plan")
        signals = (
            {} if dry_run else gateway.terminate(conn, [d.session for d in decisions.to_terminate])
        )
        laps.end("terminate")
    laps.end("close")
    result = summarize(
        target.name,
        snapshot,
        decisions,
        signals,
        dry_run=dry_run,
        duration_seconds=time.monotonic() - started,
    )
    laps.end("result")
    return result
