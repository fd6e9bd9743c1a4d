"""One pass per configured target, all at once, each inside the invocation's time budget.

Every target gets a worker thread and the same deadline (the Lambda's remaining time minus a
margin), turned into the reaper connection's connect and statement timeouts. A target that
fails (unreachable, refused login, visibility, aborted) or overruns its budget is reported as
an error of its own; the others are not affected. Each worker calls `run_pass`, the one path.
"""

from __future__ import annotations

import concurrent.futures
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from reaper.aws.credentials import build_target, uses_secret
from reaper.errors import AuthenticationError, DeadlineExceededError
from reaper.pg.gateway import Timeouts
from reaper.run import run_pass

if TYPE_CHECKING:
    from collections.abc import Sequence

    from reaper.aws.settings import LambdaSettings, TargetEntry
    from reaper.core.policy import Policy
    from reaper.core.result import PassResult

# Below this a pass cannot even connect and look: do not start one.
MIN_PASS_SECONDS = 2.0

TargetStatus = Literal["ok", "skipped", "error"]


@dataclass(frozen=True, slots=True)
class TargetRun:
    """What happened on one target: a pass result, or the error that stopped the pass."""

    name: str
    result: PassResult | None = None
    error: Exception | None = None
    # The login was refused with the cached secret, which was then read again (rotation).
    secret_reread: bool = False

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
        raise DeadlineExceededError(
            f"only {max(seconds_left, 0.0):.1f} s left before the deadline; no pass started"
        )
    defaults = Timeouts()
    budget_ms = int(seconds_left * 1000)
    return Timeouts(
        connect_seconds=max(1, min(connect_timeout, int(seconds_left))),
        statement_ms=min(defaults.statement_ms, budget_ms),
        lock_ms=min(defaults.lock_ms, budget_ms),
        idle_in_transaction_ms=min(defaults.idle_in_transaction_ms, budget_ms),
    )


def _pass_on_target(
    settings: LambdaSettings,
    entry: TargetEntry,
    policy: Policy,
    *,
    deadline: float,
    force_dry_run: bool = False,
) -> TargetRun:
    """Build the target's credentials and run one pass; re-read a rotated secret once.

    Args:
        deadline: `time.monotonic()` value by which the pass must be over.

    Raises:
        ReaperError: whatever stopped the pass (see run_pass and build_target).
    """

    def attempt(*, refresh_secret: bool) -> PassResult:
        target = build_target(settings, entry, refresh_secret=refresh_secret)
        timeouts = timeouts_within(
            deadline - time.monotonic(), connect_timeout=settings.connect_timeout
        )
        return run_pass(target, policy, timeouts=timeouts, force_dry_run=force_dry_run)

    try:
        return TargetRun(entry.name, result=attempt(refresh_secret=False))
    except AuthenticationError:
        if not uses_secret(settings, entry):
            raise
    # The cached secret may predate a rotation: read it again, bypassing the cache, once.
    return TargetRun(entry.name, result=attempt(refresh_secret=True), secret_reread=True)


def run_on_targets(
    settings: LambdaSettings,
    entries: Sequence[TargetEntry],
    policy: Policy,
    *,
    budget_seconds: float,
    force_dry_run: bool = False,
) -> list[TargetRun]:
    """Run a pass on every target concurrently; one TargetRun per entry, in order.

    A target whose pass has not ended when the budget is spent is reported with
    DeadlineExceededError and not waited for: its statements are cut off by the
    statement_timeout derived from the same budget.

    Raises:
        BaseException: only what is not an Exception (KeyboardInterrupt...); every other
            failure is reported in its target's TargetRun.
    """
    if not entries:
        return []
    if budget_seconds < MIN_PASS_SECONDS:
        return [
            TargetRun(
                entry.name,
                error=DeadlineExceededError(
                    f"only {max(budget_seconds, 0.0):.1f} s left before the deadline; no pass "
                    f"started on target {entry.name}"
                ),
            )
            for entry in entries
        ]
    deadline = time.monotonic() + budget_seconds
    executor = concurrent.futures.ThreadPoolExecutor(
        max_workers=len(entries), thread_name_prefix="reaper-target"
    )
    try:
        futures = [
            executor.submit(
                _pass_on_target,
                settings,
                entry,
                policy,
                deadline=deadline,
                force_dry_run=force_dry_run,
            )
            for entry in entries
        ]
        concurrent.futures.wait(futures, timeout=max(0.0, deadline - time.monotonic()))
    finally:
        # Never block on a stuck worker: in Lambda it is frozen with the sandbox and its
        # connection is cut by the server's statement_timeout.
        executor.shutdown(wait=False, cancel_futures=True)
    return [
        _collect(entry, future, budget_seconds)
        for entry, future in zip(entries, futures, strict=True)
    ]


def _collect(
    entry: TargetEntry, future: concurrent.futures.Future[TargetRun], budget_seconds: float
) -> TargetRun:
    if future.cancelled() or not future.done():
        return TargetRun(
            entry.name,
            error=DeadlineExceededError(
                f"the pass on target {entry.name} did not finish within its "
                f"{budget_seconds:.1f} s budget; it was not waited for"
            ),
        )
    error = future.exception()
    if error is None:
        return future.result()
    if not isinstance(error, Exception):
        raise error
    # An unexpected exception (a bug) is reported like any failure, with its own type, so the
    # other targets' results still reach the metrics and the log.
    return TargetRun(entry.name, error=error)
