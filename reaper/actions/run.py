"""The one path of a pass: connect -> lock -> snapshot -> plan -> terminate -> result.

The CLI and the Lambda handler both call `run_pass`; neither decides anything on its own. Given
a reuse history (`run_observed_pass`), the pass also learns from its snapshot before it plans,
plans with what was learned, and hands back the history with its own terminations noted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from reaper.core.planning import check_visibility, plan
from reaper.core.result import Outcome, skipped_result, summarize
from reaper.core.reuse import observe, remember_terminations, statistics
from reaper.pg import gateway
from reaper.pg.timeouts import DEFAULT_TIMEOUTS

if TYPE_CHECKING:
    from reaper.core.policy import Policy
    from reaper.core.result import PassResult
    from reaper.core.reuse import History, Observation
    from reaper.pg.conninfo import ConnInfo
    from reaper.pg.timeouts import Timeouts


# Told each step's name and seconds as it ends: connect, lock, snapshot, (learn,) plan, terminate,
# close, result (a skipped pass stops after lock). For the bench's breakdown of a pass.
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


@dataclass(frozen=True, slots=True)
class ObservedPass:
    """A pass that learned from its snapshot: its result and the history to keep."""

    result: PassResult
    # The history after the pass: its snapshot observed, its terminations noted. The one given
    # when the pass was skipped (another reaper held the lock).
    history: History
    # What this pass's snapshot taught; None when the pass was skipped.
    observation: Observation | None


def run_pass(
    target: ConnInfo,
    policy: Policy,
    *,
    timeouts: Timeouts = DEFAULT_TIMEOUTS,
    force_dry_run: bool = False,
    on_step: StepObserver | None = None,
) -> PassResult:
    """Run one pass of the policy on one target, with static thresholds only.

    See `run_observed_pass` for the arguments and errors.
    """
    return _run(target, policy, None, timeouts, force_dry_run=force_dry_run, on_step=on_step)[0]


def run_observed_pass(
    target: ConnInfo,
    policy: Policy,
    history: History,
    *,
    timeouts: Timeouts = DEFAULT_TIMEOUTS,
    force_dry_run: bool = False,
    on_step: StepObserver | None = None,
) -> ObservedPass:
    """Run one pass of the policy on one target, learning from its snapshot first.

    The snapshot is compared with `history` (core/reuse.py) and the rules that ask for learned
    thresholds use what the history then says; a lost or empty history only means the static
    thresholds apply for longer.

    Args:
        target: the database to act on.
        policy: the validated policy.
        history: what was remembered of this target (an empty History the first time).
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
    result, observation, after = _run(
        target, policy, history, timeouts, force_dry_run=force_dry_run, on_step=on_step
    )
    return ObservedPass(result, history if after is None else after, observation)


def _run(
    target: ConnInfo,
    policy: Policy,
    history: History | None,
    timeouts: Timeouts,
    *,
    force_dry_run: bool,
    on_step: StepObserver | None,
) -> tuple[PassResult, Observation | None, History | None]:
    """The pass: its result, and with a history what it observed and the history after it
    (both None without one, or when the pass was skipped)."""
    started = time.monotonic()
    dry_run = policy.dry_run or force_dry_run
    laps = _Laps(on_step)
    with gateway.connect(target, timeouts) as conn:
        laps.end("connect")
        locked = gateway.try_pass_lock(conn)
        laps.end("lock")
        if not locked:
            skipped = skipped_result(
                target.name, dry_run=dry_run, duration_seconds=time.monotonic() - started
            )
            return skipped, None, None
        snapshot = gateway.take_snapshot(conn)
        laps.end("snapshot")
        check_visibility(snapshot)
        observation = None if history is None else observe(history, snapshot)
        # Only a rule with `learned` reads the statistics: no need to work them out otherwise.
        learns = observation is not None and policy.learns
        reuse = statistics(observation.history) if observation is not None and learns else None
        if observation is not None:
            laps.end("learn")
        decisions = plan(snapshot, policy, reuse)
        laps.end("plan")
        planned = [d.session for d in decisions.to_terminate]
        signals = {} if dry_run else gateway.terminate(conn, planned)
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
    if observation is None:
        return result, None, None
    terminated = [s for s in planned if signals.get(s.pid) is Outcome.TERMINATED]
    return result, observation, remember_terminations(observation.history, terminated)
