"""The one path of a pass: connect -> lock -> snapshot -> plan -> terminate -> result.

The CLI and the Lambda handler both call `run_pass`; neither decides anything on its own.

Given a reuse history (`run_observed_pass`), the pass also learns from its snapshot before it
plans, plans with what was learned, and hands back the history with its own terminations noted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

from reaper.core.pass_lock import check_pass_lock
from reaper.core.planning import check_visibility, plan
from reaper.core.result import Outcome, Stop, skipped_result, summarize
from reaper.core.reuse import observe, remember_terminations, statistics
from reaper.errors import DeadlineExceededError, PassAbortedError
from reaper.pg import gateway
from reaper.pg.timeouts import DEFAULT_TIMEOUTS

if TYPE_CHECKING:
    from collections.abc import Iterator

    import psycopg

    from reaper.core.policy import Policy
    from reaper.core.result import PassResult
    from reaper.core.reuse import History, Observation
    from reaper.core.snapshot import Session
    from reaper.pg.conninfo import ConnInfo
    from reaper.pg.timeouts import Timeouts


# Told each step's name and seconds as it ends: connect, lock, snapshot, (learn,) plan, terminate,
# close, result (a skipped pass stops after lock). For the bench's breakdown of a pass.
StepObserver = Callable[[str, float], None]

# With less time than this left, no terminate statement is started: one of thousands of
# sessions takes seconds, and a statement cut off part way leaves unknown what it signalled.
MIN_TERMINATE_SECONDS = 0.5


class PassDeadline:
    """When a pass must be over, and the switch its caller throws when it gives the pass up.

    The terminate step is claimed under a lock, so exactly one of two things happens: the pass
    claims it while time is left and nobody has given up on it, and its caller waits for the
    answer (the statement's own statement_timeout is the time left); or the caller gives up
    first, and the pass can never signal, not even when its thread resumes minutes later (a
    frozen Lambda sandbox thaws with its threads where they stopped). Giving up also cancels the
    statement the pass is running, so that its connection ends and lets go of the pass lock.
    """

    def __init__(self, at: float | None = None) -> None:
        """`at`: a time.monotonic() value; None for no deadline (only giving up stops the pass)."""
        self._at = at
        self._lock = threading.Lock()
        self._given_up = False
        self._claimed = False
        self._conn: psycopg.Connection[Any] | None = None

    @property
    def terminating(self) -> bool:
        """The pass has claimed its terminate step: it is sending, or has sent, its signals."""
        with self._lock:
            return self._claimed

    def narrow(self, at: float) -> None:
        """Make the deadline `at` if that comes sooner."""
        with self._lock:
            self._at = at if self._at is None else min(self._at, at)

    def seconds_left(self) -> float | None:
        """Seconds until the deadline (negative once past it); None without one."""
        with self._lock:
            return None if self._at is None else self._at - time.monotonic()

    def give_up(self) -> bool:
        """Give the pass up: from now on it signals nothing, and its running statement is
        cancelled.

        Returns:
            True; False when it is too late, because the pass has claimed its terminate step:
            its caller must then wait for the pass's answer, or report its outcome unknown.
        """
        with self._lock:
            if self._claimed:
                return False
            self._given_up = True
            conn = self._conn
        # Outside the lock: a cancel may wait on the network, and the flag alone is what keeps
        # the pass from signalling. A connection the pass closes meanwhile ignores the cancel.
        if conn is not None:
            gateway.cancel(conn)
        return True

    def check(self) -> None:
        """Stop a pass its caller gave up on before it starts another step.

        Raises:
            DeadlineExceededError: the caller gave up on the pass.
        """
        with self._lock:
            if self._given_up:
                raise DeadlineExceededError(_GIVEN_UP + "; nothing was terminated")

    @contextmanager
    def watching(self, conn: psycopg.Connection[Any]) -> Iterator[None]:
        """While the block runs, a give_up() cancels what `conn` is running."""
        with self._lock:
            self._conn = conn
        try:
            yield
        finally:
            with self._lock:
                self._conn = None

    def milliseconds_left(self) -> int | None:
        """The time left as a statement_timeout: at least 1 (0 would mean none); None without a
        deadline."""
        left = self.seconds_left()
        return None if left is None else max(1, int(left * 1000))

    def claim_terminate(self) -> Stop | None:
        """Claim the terminate step; None when claimed, else why the pass must stop before it
        (given up, or too little time left)."""
        with self._lock:
            if self._given_up:
                return Stop(_GIVEN_UP)
            left = None if self._at is None else self._at - time.monotonic()
            if left is not None and left < MIN_TERMINATE_SECONDS:
                return Stop(
                    f"only {max(left, 0.0):.2f} s were left before its deadline after planning, "
                    f"less than the {MIN_TERMINATE_SECONDS} s a terminate statement is given"
                )
            self._claimed = True
            return None


_GIVEN_UP = "its time ran out and its caller gave it up before it terminated anything"


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


class PassOptions(TypedDict, total=False):
    """How a pass runs: the keyword arguments of `run_pass` and `run_observed_pass` (see the
    latter); `_run` holds their defaults."""

    timeouts: Timeouts
    force_dry_run: bool
    on_step: StepObserver | None
    deadline: PassDeadline | None


def run_pass(target: ConnInfo, policy: Policy, **options: Unpack[PassOptions]) -> PassResult:
    """Run one pass of the policy on one target, with static thresholds only.

    See `run_observed_pass` for the arguments, the result and the errors.
    """
    result, _, _ = _run(target, policy, None, **options)
    return result


def run_observed_pass(
    target: ConnInfo, policy: Policy, history: History, **options: Unpack[PassOptions]
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
        deadline: when the pass must be over, checked after planning and just before the
            terminate statement (whose statement_timeout is the time left), and how its caller
            gives it up. A pass out of time stops before terminating and says so in its result
            (`stopped_before_terminating`); None: no deadline.

    Returns:
        The result (`stopped_before_terminating` is set when the pass stopped before its
        terminate statement, or the statement failed part way: its sessions are then
        `unconfirmed`, each may have been terminated) and the history to keep.

    Raises:
        TargetUnreachableError: the database cannot be reached or refused the login.
        PassLockSquattedError: a session that is not a pass of the reaper holds the pass lock.
        VisibilityError: the role cannot see other roles' sessions; nothing was terminated.
        PassAbortedError: the database failed before the terminate step; nothing was terminated.
        DeadlineExceededError: the caller gave the pass up; nothing was terminated.
    """
    result, observation, after = _run(target, policy, history, **options)
    return ObservedPass(result, history if after is None else after, observation)


def _run(
    target: ConnInfo,
    policy: Policy,
    history: History | None,
    *,
    timeouts: Timeouts = DEFAULT_TIMEOUTS,
    force_dry_run: bool = False,
    on_step: StepObserver | None = None,
    deadline: PassDeadline | None = None,
) -> tuple[PassResult, Observation | None, History | None]:
    """The pass: its result, and with a history what it observed and the history after it
    (both None without one, or when the pass was skipped)."""
    started = time.monotonic()
    dry_run = policy.dry_run or force_dry_run
    deadline = deadline or PassDeadline()
    laps = _Laps(on_step)
    signals: dict[int, Outcome] = {}
    stop: Stop | None = None
    deadline.check()
    with gateway.connect(target, timeouts) as conn, deadline.watching(conn):
        laps.end("connect")
        locked = gateway.try_pass_lock(conn)
        laps.end("lock")
        if not locked:
            check_pass_lock(gateway.read_pass_lock(conn))
            skipped = skipped_result(
                target.name, dry_run=dry_run, duration_seconds=time.monotonic() - started
            )
            return skipped, None, None
        deadline.check()
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
        if planned and not dry_run:
            stop = deadline.claim_terminate()
            if stop is None:
                signals, stop = _terminate(conn, planned, deadline)
        laps.end("terminate")
    laps.end("close")
    result = summarize(
        target.name,
        snapshot,
        decisions,
        signals,
        dry_run=dry_run,
        duration_seconds=time.monotonic() - started,
        stop=stop,
    )
    laps.end("result")
    if observation is None:
        return result, None, None
    terminated = [s for s in planned if signals.get(s.pid) is Outcome.TERMINATED]
    return result, observation, remember_terminations(observation.history, terminated)


def _terminate(
    conn: psycopg.Connection[Any], planned: list[Session], deadline: PassDeadline
) -> tuple[dict[int, Outcome], Stop | None]:
    """The terminate step, claimed: each planned session's outcome, or why there are none."""
    try:
        return gateway.terminate(conn, planned, timeout_ms=deadline.milliseconds_left()), None
    except PassAbortedError as exc:
        # Sent, but no answer: each planned session may have been terminated, and the result
        # says so of every one of them where an error would say it of none.
        return {}, Stop(f"the terminate statement failed part way: {exc}", signals_sent=True)
