"""Who may hold the pass lock: another pass of the reaper is a skip, anything else an error."""

from __future__ import annotations

import pytest

from reaper.core.pass_lock import (
    PASS_LOCK_KEY,
    REAPER_APPLICATION_NAME,
    LockHolder,
    PassLock,
    check_pass_lock,
)
from reaper.errors import ExitCode, PassLockSquattedError

FELLOW = LockHolder(4001, "idle_reaper", REAPER_APPLICATION_NAME)


@pytest.mark.parametrize(
    "holders",
    [
        (),
        (FELLOW,),
        # a session that exited after pg_locks was read: its lock goes with it
        (LockHolder(4002, None, None, listed=False),),
    ],
    ids=["free", "another-pass", "just-exited"],
)
def test_a_free_lock_or_one_held_by_another_pass_of_the_reaper_is_no_error(holders) -> None:
    lock = PassLock("idle_reaper", holders)
    assert lock.squatters == ()
    check_pass_lock(lock)


@pytest.mark.parametrize(
    "squatter",
    [
        LockHolder(4003, "app", "psql"),
        # the reaper's name under another role: not a pass of this reaper
        LockHolder(4004, "mallory", REAPER_APPLICATION_NAME),
        # the reaper's role under another name: someone logged in with its credentials
        LockHolder(4005, "idle_reaper", "psql"),
    ],
    ids=["stranger", "name-only", "role-only"],
)
def test_a_lock_held_by_anything_else_is_an_error_naming_the_holder(squatter) -> None:
    lock = PassLock("idle_reaper", (FELLOW, squatter))
    with pytest.raises(PassLockSquattedError) as caught:
        check_pass_lock(lock)
    message = str(caught.value)
    assert f"pid {squatter.pid} (role {squatter.role}, application_name" in message
    assert f"pg_terminate_backend ({squatter.pid})" in message
    assert str(PASS_LOCK_KEY) in message
    assert "Nothing was terminated" in message
    assert caught.value.holder_pids == (squatter.pid,)
    assert caught.value.exit_code is ExitCode.LOCK_SQUATTED


def test_a_prepared_transaction_holding_the_lock_is_named_with_its_remedy() -> None:
    lock = PassLock("idle_reaper", (LockHolder(None, None, None, listed=False),))
    with pytest.raises(PassLockSquattedError, match="prepared transaction") as caught:
        check_pass_lock(lock)
    assert "ROLLBACK PREPARED" in str(caught.value)
    assert caught.value.holder_pids == ()
