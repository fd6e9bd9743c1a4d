"""One pass per target, several at once, each inside its own time budget.

A bounded pool (REAPER_MAX_CONCURRENCY workers) runs the passes; each pass gets its budget when
it starts: REAPER_TARGET_TIMEOUT_SECONDS, cut to what is left of the invocation's (the Lambda's
remaining time minus a margin), turned into the reaper connection's connect and statement
timeouts and into the pass's deadline (`PassDeadline`). So a slow target holds one worker for
at most its own budget, and a target waiting for a worker starts with a full one while time
remains. A pass that runs out of its budget stops before terminating and is reported as out of
time; one still running when the invocation's budget is spent is given up: it can never signal
afterwards, not even in a later thaw of the sandbox, unless it had already sent its terminate
statement, whose answer is then awaited so that its terminations are audited. A target that
fails (unreachable, refused login, visibility, aborted, the pass lock taken by a stranger) or
overruns is reported as an error of its own (a full database as DatabaseFullError); the others
are not affected. Each worker calls `run_pass`, the one path, with the target's own policy. The
doctor event visits the targets with `run_doctor`.
A target that cannot run (`FleetTarget.action == "error"`) gets its error as its outcome or its
report, here and nowhere else.

A target whose policy has a rule with learned thresholds keeps its reuse history in this
module's memory, which a warm Lambda environment keeps between invocations: each pass learns
from its snapshot and plans with what was learned. A cold start begins again with the static
thresholds (see docs/precision.md).
"""

from __future__ import annotations

import concurrent.futures
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from reaper.actions.doctor import run_doctor
from reaper.actions.run import PassDeadline, run_observed_pass, run_pass
from reaper.aws.credentials import build_target, uses_secret
from reaper.core.checks import DoctorReport
from reaper.core.reuse import History
from reaper.errors import (
    AuthenticationError,
    DeadlineExceededError,
    PassAbortedError,
    ReaperError,
)
from reaper.pg.timeouts import DEFAULT_TIMEOUTS, Timeouts

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from reaper.actions.doctor import SnapshotChecks
    from reaper.actions.run import PassOptions
    from reaper.aws.targets import FleetTarget
    from reaper.core.policy import Policy
    from reaper.core.result import PassResult
    from reaper.settings import LambdaSettings, TargetSpec

# Below this a pass cannot even connect and look: do not start one.
MIN_PASS_SECONDS = 2.0
# How long past the invocation's deadline a pass that has sent its terminate statement is waited
# for: the statement's own statement_timeout ends it by the deadline, so only its answer's way
# back is left (the handler's deadline margin leaves room for it).
ANSWER_GRACE_SECONDS = 2.0

TargetStatus = Literal["ok", "skipped", "error"]

# The reuse history of each target whose policy learns, by target name: module memory lives as
# long as the warm environment. Each target's pass runs on one worker at a time, so two threads
# never write one key.
_histories: dict[str, History] = {}


def remembered_history(target: str) -> History:
    """What this environment remembers of `target` (empty after a cold start)."""
    return _histories.get(target, History())


def forget_histories() -> None:
    """Forget every target's history, as a cold start does."""
    _histories.clear()


@dataclass(frozen=True, slots=True)
class TargetOutcome:
    """What happened on one target: a pass result, or the error that stopped (or prevented) it,
    or both for a pass that stopped before it had terminated what it planned."""

    name: str
    result: PassResult | None = None
    error: Exception | None = None
    # The login was refused with the cached secret, which was then read again (rotation).
    secret_reread: bool = False
    # With learned thresholds: per application, the idle ages seen before each reuse the pass's
    # snapshot found (the IdleGapBeforeReuse metric).
    reuse_gaps: dict[str, list[float]] | None = None

    @property
    def status(self) -> TargetStatus:
        """ok, skipped (another reaper held the lock) or error."""
        if self.error is not None or self.result is None:
            return "error"
        return "skipped" if self.result.skipped else "ok"


def timeouts_within(seconds_left: float, *, connect_timeout: int) -> Timeouts:
    """The reaper connection's limits for a pass that must end within `seconds_left`.

    Raises:
        DeadlineExceededError: less than MIN_PASS_SECONDS are left.
    """
    if seconds_left < MIN_PASS_SECONDS:
        raise _too_late(seconds_left)
    defaults = DEFAULT_TIMEOUTS
    budget_ms = int(seconds_left * 1000)
    return Timeouts(
        connect_seconds=max(1, min(connect_timeout, int(seconds_left))),
        statement_ms=min(defaults.statement_ms, budget_ms),
        lock_ms=min(defaults.lock_ms, budget_ms),
        idle_in_transaction_ms=min(defaults.idle_in_transaction_ms, budget_ms),
    )


def _too_late(seconds_left: float, target: str | None = None) -> DeadlineExceededError:
    on = "" if target is None else f" on target {target}"
    return DeadlineExceededError(
        f"only {max(seconds_left, 0.0):.1f} s left before the deadline; no pass started{on}"
    )


def _own_deadline(settings: LambdaSettings, deadline: float) -> float:
    """When a target starting now must be done: REAPER_TARGET_TIMEOUT_SECONDS from now, or the
    invocation's `deadline` if that comes first. One slow target never eats the others' time."""
    return min(deadline, time.monotonic() + settings.target_timeout_seconds)


def _pass_on_target(
    settings: LambdaSettings,
    spec: TargetSpec,
    policy: Policy,
    *,
    deadline: float,
    pass_deadline: PassDeadline,
    force_dry_run: bool = False,
) -> TargetOutcome:
    """Build the target's credentials and run one pass; re-read a rotated secret once.

    Args:
        deadline: `time.monotonic()` value by which the invocation's passes must be over; this
            one also ends within REAPER_TARGET_TIMEOUT_SECONDS of its start.
        pass_deadline: the pass's deadline, narrowed here to its own budget, which the caller
            gives up when the invocation's budget is spent.

    Raises:
        ReaperError: whatever stopped the pass (see run_pass and build_target).
    """
    own_deadline = _own_deadline(settings, deadline)
    pass_deadline.narrow(own_deadline)

    def attempt(*, refresh_secret: bool) -> TargetOutcome:
        target = build_target(settings, spec, refresh_secret=refresh_secret)
        timeouts = timeouts_within(
            own_deadline - time.monotonic(), connect_timeout=settings.connect_timeout
        )
        options: PassOptions = {
            "timeouts": timeouts,
            "force_dry_run": force_dry_run,
            "deadline": pass_deadline,
        }
        if not policy.learns:
            result = run_pass(target, policy, **options)
            gaps = None
        else:
            observed = run_observed_pass(target, policy, remembered_history(spec.name), **options)
            _histories[spec.name] = observed.history
            result = observed.result
            gaps = None if observed.observation is None else observed.observation.reuse_gaps()
        return TargetOutcome(
            spec.name,
            result=result,
            error=_stopped_error(spec.name, result, own_deadline),
            secret_reread=refresh_secret,
            reuse_gaps=gaps,
        )

    try:
        return attempt(refresh_secret=False)
    except AuthenticationError:
        if not uses_secret(settings, spec):
            raise
    # The cached secret may predate a rotation: read it again, bypassing the cache, once.
    return attempt(refresh_secret=True)


def _stopped_error(name: str, result: PassResult, own_deadline: float) -> ReaperError | None:
    """The target's error when its pass stopped before terminating what it planned: out of time
    (DeadlineExceededError) if its deadline had come, else the database failed mid-statement."""
    reason = result.stopped_before_terminating
    if reason is None:
        return None
    message = f"the pass on target {name} stopped before terminating: {reason}"
    if time.monotonic() >= own_deadline or not result.counts.unconfirmed:
        return DeadlineExceededError(message)
    return PassAbortedError(message)


def run_on_targets(
    settings: LambdaSettings,
    targets: Sequence[FleetTarget],
    *,
    budget_seconds: float,
    force_dry_run: bool = False,
) -> list[TargetOutcome]:
    """Run a pass on every target that can run, REAPER_MAX_CONCURRENCY at a time; one
    TargetOutcome per target, in order (a target that cannot run gets its error).

    A target whose pass has not ended when the invocation's budget is spent (or that never got
    a worker) is reported with DeadlineExceededError: its pass is given up (it can signal
    nothing from then on, and its running statement is cancelled) and not waited for, unless it
    had already sent its terminate statement: that one is waited for (ANSWER_GRACE_SECONDS at
    most), so that what it terminated is reported.

    Raises:
        BaseException: only what is not an Exception (KeyboardInterrupt...); every other
            failure is reported in its target's TargetOutcome.
    """
    runnable = [_runnable(target) for target in targets if target.action == "pass"]
    if budget_seconds < MIN_PASS_SECONDS:
        late = {spec.name: _too_late(budget_seconds, spec.name) for spec, _ in runnable}
        return [TargetOutcome(t.name, error=late.get(t.name) or t.failure()) for t in targets]
    deadline = time.monotonic() + budget_seconds
    futures: dict[str, concurrent.futures.Future[TargetOutcome]] = {}
    pass_deadlines = {spec.name: PassDeadline(deadline) for spec, _ in runnable}
    if runnable:
        executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=min(len(runnable), settings.max_concurrency),
            thread_name_prefix="reaper-target",
        )
        try:
            for spec, policy in runnable:
                futures[spec.name] = executor.submit(
                    _pass_on_target,
                    settings,
                    spec,
                    policy,
                    deadline=deadline,
                    pass_deadline=pass_deadlines[spec.name],
                    force_dry_run=force_dry_run,
                )
            concurrent.futures.wait(futures.values(), timeout=max(0.0, deadline - time.monotonic()))
            _give_up_late_passes(futures, pass_deadlines)
        finally:
            # Never block on a stuck worker: in Lambda it is frozen with the sandbox; given up,
            # it cannot signal when it thaws. Passes still queued are dropped.
            executor.shutdown(wait=False, cancel_futures=True)
    return [
        _collect(target.name, futures[target.name], pass_deadlines[target.name], budget_seconds)
        if target.name in futures
        else TargetOutcome(target.name, error=target.failure())
        for target in targets
    ]


def _give_up_late_passes(
    futures: dict[str, concurrent.futures.Future[TargetOutcome]],
    pass_deadlines: dict[str, PassDeadline],
) -> None:
    """Give up every pass still running at the deadline; wait a little for those it is too late
    to give up (they have sent their terminate statement)."""
    terminating = [
        future
        for name, future in futures.items()
        if not future.done() and not pass_deadlines[name].give_up()
    ]
    if terminating:
        concurrent.futures.wait(terminating, timeout=ANSWER_GRACE_SECONDS)


def _runnable(target: FleetTarget) -> tuple[TargetSpec, Policy]:
    assert target.spec is not None  # action "pass" has a spec
    assert target.policy is not None, "with_policy() gives every target that runs its policy"
    return target.spec, target.policy


def _collect(
    name: str,
    future: concurrent.futures.Future[TargetOutcome],
    pass_deadline: PassDeadline,
    budget_seconds: float,
) -> TargetOutcome:
    if future.cancelled():
        return TargetOutcome(
            name,
            error=DeadlineExceededError(
                f"no worker was free for target {name} within the {budget_seconds:.1f} s "
                "budget; raise REAPER_MAX_CONCURRENCY or the function's timeout"
            ),
        )
    if not future.done() and pass_deadline.terminating:
        return TargetOutcome(
            name,
            error=DeadlineExceededError(
                f"the pass on target {name} sent its terminate statement before the end of its "
                f"{budget_seconds:.1f} s budget, and no answer came within "
                f"{ANSWER_GRACE_SECONDS:.0f} s more: the sessions it planned may have been "
                "terminated (the server logs each as terminating connection due to "
                "administrator command)"
            ),
        )
    if not future.done():
        return TargetOutcome(
            name,
            error=DeadlineExceededError(
                f"the pass on target {name} did not finish within its {budget_seconds:.1f} s "
                "budget; it was given up before its terminate step, so it terminated nothing"
            ),
        )
    error = future.exception()
    if error is None:
        return future.result()
    if not isinstance(error, Exception):
        raise error
    # An unexpected exception (a bug) is reported like any failure, with its own type, so the
    # other targets' results still reach the metrics and the log.
    return TargetOutcome(name, error=error)


def doctor_on_targets(
    settings: LambdaSettings,
    targets: Sequence[FleetTarget],
    *,
    budget_seconds: float,
    more_checks: Callable[[str, Policy], SnapshotChecks | None] | None = None,
) -> list[DoctorReport]:
    """Run the doctor's checks on each target in turn, within the budget; one report each.

    Each target gets the same time budget as a pass (REAPER_TARGET_TIMEOUT_SECONDS, cut to the
    time left), so a target that hangs cannot leave the ones after it without time.

    One target after the other: a check is two short statements, and an operator reads the
    reports in configuration order. A target that cannot run, whose credentials cannot be
    built, for which no time is left, or whose database fails while it is checked, gets a
    failed connection check. `more_checks(name, policy)` gives a target's checks of its
    snapshot (the connection budget).
    """
    deadline = time.monotonic() + budget_seconds
    reports = []
    for target in targets:
        try:
            if target.action != "pass":
                raise target.failure()
            spec, policy = _runnable(target)
            conninfo = build_target(settings, spec)
            timeouts = timeouts_within(
                _own_deadline(settings, deadline) - time.monotonic(),
                connect_timeout=settings.connect_timeout,
            )
            extra = None if more_checks is None else more_checks(target.name, policy)
            history = remembered_history(spec.name) if policy.learns else None
            reports.append(
                run_doctor(
                    conninfo, policy, timeouts=timeouts, snapshot_checks=extra, history=history
                )
            )
        except ReaperError as exc:
            # Credentials, time, or the database failing mid-check: this target's one answer.
            reports.append(DoctorReport.unreachable(target.name, str(exc)))
    return reports
