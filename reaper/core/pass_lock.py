"""The pass lock: its key, who may hold it, and when a held lock is an error rather than a skip.

Two reapers on one database never act at once: each pass takes a session-level advisory lock
first. The key is fixed and, like every advisory lock, visible to every role in `pg_locks`; any
role that can connect can take it. So a lock held by another pass of the reaper (the same role,
`application_name` idle-reaper) is a skip, and a lock held by anything else is an error naming
the holder: otherwise a stray `pg_advisory_lock(key)` would turn every pass into a quiet skip.
"""

from __future__ import annotations

from dataclasses import dataclass

from reaper.errors import PassLockSquattedError

# The key of the session-level advisory lock; it spells "idlereap".
PASS_LOCK_KEY = 0x69646C6572656170
# What the reaper's own connection calls itself in pg_stat_activity.
REAPER_APPLICATION_NAME = "idle-reaper"


@dataclass(frozen=True, slots=True)
class LockHolder:
    """A holder of the pass lock, as pg_locks and pg_stat_activity show it."""

    # None for a prepared transaction (pg_advisory_xact_lock, then PREPARE TRANSACTION): it
    # holds the lock, with no session, until it is committed or rolled back.
    pid: int | None
    role: str | None
    application_name: str | None
    # pg_stat_activity lists the pid; False once the session has exited (its lock goes with it).
    listed: bool = True

    def describe(self) -> str:
        """`pid 1234 (role app, application_name 'psql')`, or the prepared transaction."""
        if self.pid is None:
            return "a prepared transaction (see pg_prepared_xacts)"
        return f"pid {self.pid} (role {self.role}, application_name {self.application_name!r})"


@dataclass(frozen=True, slots=True)
class PassLock:
    """Who holds the pass lock on one database, as a session of the reaper sees it."""

    # The role the reaper's session logged in as (session_user, as pg_stat_activity shows it).
    own_role: str
    holders: tuple[LockHolder, ...]

    @property
    def squatters(self) -> tuple[LockHolder, ...]:
        """The holders that are neither a pass of the reaper logged in as `own_role` nor a
        session that has just exited (its lock goes with it)."""
        return tuple(
            holder
            for holder in self.holders
            if (holder.pid is None or holder.listed) and not self._is_fellow(holder)
        )

    def _is_fellow(self, holder: LockHolder) -> bool:
        return holder.role == self.own_role and holder.application_name == REAPER_APPLICATION_NAME

    def describe_squatters(self) -> str:
        """The squatters and why they are not a reaper: the summary of an error or a check."""
        return (
            "; ".join(holder.describe() for holder in self.squatters)
            + f", which is not a pass of the reaper as role {self.own_role}"
        )

    def fix(self) -> str:
        """What an operator does about the squatters."""
        pids = ", ".join(str(holder.pid) for holder in self.squatters if holder.pid is not None)
        ending = (
            f"an administrator can end it now with pg_terminate_backend ({pids})"
            if pids
            else "an administrator can end it with ROLLBACK PREPARED"
        )
        return f"find out why it takes the advisory lock {PASS_LOCK_KEY} and stop it; {ending}"


def check_pass_lock(lock: PassLock) -> None:
    """Accept a pass lock that is free or held by another pass of the reaper (the caller then
    skips); refuse any other holder.

    Raises:
        PassLockSquattedError: naming each holder that is not a pass of the reaper.
    """
    if not lock.squatters:
        return
    raise PassLockSquattedError(
        f"the pass lock is held by {lock.describe_squatters()}: no pass can run while it "
        f"holds the lock. Nothing was terminated. Fix: {lock.fix()}",
        holder_pids=tuple(holder.pid for holder in lock.squatters if holder.pid is not None),
    )
