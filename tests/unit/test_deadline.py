"""A pass's deadline: either the pass claims its terminate step or its caller gives it up, never
both, and a pass out of time or given up never claims it."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import pytest

from reaper.actions.run import MIN_TERMINATE_SECONDS, PassDeadline
from reaper.errors import DeadlineExceededError


def test_a_pass_with_time_left_claims_its_terminate_step_and_can_no_longer_be_given_up() -> None:
    deadline = PassDeadline(time.monotonic() + 60)
    assert deadline.claim_terminate() is None
    assert deadline.terminating
    # its caller must now wait for the answer, which the statement_timeout bounds
    assert not deadline.give_up()
    left = deadline.milliseconds_left()
    assert left is not None
    assert 0 < left <= 60_000


def test_a_pass_given_up_never_claims_its_terminate_step() -> None:
    # given a pass its caller gave up on (the invocation's time ran out)
    deadline = PassDeadline(time.monotonic() + 60)
    assert deadline.give_up()
    # when its thread resumes, later (a Lambda sandbox thawed), it stops before terminating
    stop = deadline.claim_terminate()
    assert stop is not None
    assert "gave it up" in stop.reason
    assert not deadline.terminating
    with pytest.raises(DeadlineExceededError, match="nothing was terminated"):
        deadline.check()


def test_a_pass_with_too_little_time_left_stops_before_terminating() -> None:
    deadline = PassDeadline(time.monotonic() + MIN_TERMINATE_SECONDS / 2)
    stop = deadline.claim_terminate()
    assert stop is not None
    assert stop.reason.startswith("only ")
    assert not stop.signals_sent
    # and its caller may still give it up
    assert deadline.give_up()


def test_a_deadline_in_the_past_still_gives_a_statement_timeout_that_limits() -> None:
    # 0 would mean no statement_timeout at all
    assert PassDeadline(time.monotonic() - 5).milliseconds_left() == 1


def test_without_a_deadline_only_giving_up_stops_a_pass() -> None:
    deadline = PassDeadline()
    assert deadline.seconds_left() is None
    assert deadline.milliseconds_left() is None
    assert deadline.claim_terminate() is None


def test_narrowing_keeps_the_sooner_deadline() -> None:
    now = time.monotonic()
    deadline = PassDeadline(now + 60)
    deadline.narrow(now + 30)
    deadline.narrow(now + 90)
    left = deadline.seconds_left()
    assert left is not None
    assert left <= 30


def race(deadline: PassDeadline) -> tuple[bool, bool]:
    """Claim the terminate step and give the pass up from two threads released together:
    (claimed, given up)."""
    start = threading.Barrier(2)
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        claimed = pool.submit(lambda: start.wait() >= 0 and deadline.claim_terminate() is None)
        given_up = pool.submit(lambda: start.wait() >= 0 and deadline.give_up())
        return claimed.result(), given_up.result()


def test_claiming_and_giving_up_at_once_never_both_succeed() -> None:
    for _ in range(200):
        claimed, given_up = race(PassDeadline(time.monotonic() + 60))
        assert claimed != given_up
