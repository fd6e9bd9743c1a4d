"""The project's exceptions: one root, one subclass per way a pass can be stopped.

A failure on a single session (refused, already gone) is data in the pass result, never an
exception; only what stops a pass is raised. Messages name the field, target or value at fault
and never carry a password, token or full DSN.

The class tree, with the exit code of `reaper` when the error stops a command (the
`exit_code` attribute of each class, stated in its class line as `exit_code=` or inherited
from its base; README.md's table lists the same codes)::

    Exception
    └── ReaperError                    1  internal: none of the below
        ├── PolicyError                2  bad input: nothing was done
        ├── SettingsError              2
        ├── EventError                 2
        ├── HistoryError               2
        ├── CredentialsError           3  the database cannot be logged in to
        ├── DiscoveryError             3  the RDS API cannot list the databases
        ├── TargetUnreachableError     3
        │   ├── AuthenticationError    3
        │   └── DatabaseFullError      6  every connection slot is taken (SQLSTATE 53300)
        ├── VisibilityError            5  the pass could not run safely: nothing (more)
        ├── PassAbortedError           5  was terminated
        ├── PassLockSquattedError      8  a session that is not a reaper holds the pass lock
        ├── LocalPostgresError         1
        ├── DeadlineExceededError      1  (Lambda only: reported per target)
        └── TargetsFailedError         1  (Lambda only: fails the invocation)

Exit code 0 is a pass done (also a dry run, or a pass skipped because another pass of the
reaper's role holds the lock), 4 a pass that ran but had terminations it wanted refused (a
result, not an exception), 5 also a pass that stopped before it had terminated what it planned
(a result: its sessions say what became of them), 7 a `reaper doctor` with a failed check (a
report, not an exception), 130 an interrupt.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, ClassVar


class ExitCode(IntEnum):
    """The exit codes of the `reaper` command."""

    OK = 0
    INTERNAL = 1
    BAD_INPUT = 2
    UNREACHABLE = 3
    REFUSED = 4
    UNSAFE = 5
    DATABASE_FULL = 6
    CHECKS_FAILED = 7
    LOCK_SQUATTED = 8
    INTERRUPTED = 130


class ReaperError(Exception):
    """Root of every error the reaper raises on purpose."""

    exit_code: ClassVar[ExitCode] = ExitCode.INTERNAL

    def __init_subclass__(cls, *, exit_code: ExitCode | None = None, **kwargs: Any) -> None:
        """Give a subclass the exit code its class line states (`exit_code=`); a subclass that
        states none keeps its base's."""
        super().__init_subclass__(**kwargs)
        if exit_code is not None:
            cls.exit_code = exit_code


class PolicyError(ReaperError, exit_code=ExitCode.BAD_INPUT):
    """Raised when a policy document is missing, is not JSON, or fails validation."""


class SettingsError(ReaperError, exit_code=ExitCode.BAD_INPUT):
    """Raised when the environment or CLI flags describe an impossible configuration."""


class EventError(ReaperError, exit_code=ExitCode.BAD_INPUT):
    """Raised when a Lambda event has an unknown shape or a malformed or unknown field."""


class HistoryError(ReaperError, exit_code=ExitCode.BAD_INPUT):
    """Raised when a history file cannot be read, is not a history, or is another target's."""


class CredentialsError(ReaperError, exit_code=ExitCode.UNREACHABLE):
    """Raised when connection credentials cannot be obtained (secret missing, malformed, denied)."""


class TargetUnreachableError(ReaperError, exit_code=ExitCode.UNREACHABLE):
    """Raised when the database cannot be reached or refuses the connection (incl. bad login)."""


class AuthenticationError(TargetUnreachableError):
    """Raised when the server rejects the credentials (a rotated password, for example)."""


class DatabaseFullError(TargetUnreachableError, exit_code=ExitCode.DATABASE_FULL):
    """Raised when the server refuses the login because its connection slots are taken (53300)."""

    def __init__(self, message: str, *, cause: str) -> None:
        super().__init__(message)
        # Which limit refused the login: "server" (every slot the role may use is taken),
        # "role" (the role's own CONNECTION LIMIT) or "database" (the database's).
        self.cause = cause


class VisibilityError(ReaperError, exit_code=ExitCode.UNSAFE):
    """Raised when the reaper's role cannot see other roles' sessions (needs pg_monitor)."""


class PassAbortedError(ReaperError, exit_code=ExitCode.UNSAFE):
    """Raised when the database fails in the middle of a pass (timeout, shutdown, lost link)."""


class PassLockSquattedError(ReaperError, exit_code=ExitCode.LOCK_SQUATTED):
    """Raised when the pass lock is held by a session that is not a pass of the reaper's role."""

    def __init__(self, message: str, *, holder_pids: tuple[int, ...]) -> None:
        super().__init__(message)
        # The backends holding the lock, for the log line an operator acts on.
        self.holder_pids = holder_pids


class LocalPostgresError(ReaperError):
    """Raised when a throwaway local PostgreSQL cluster cannot be started or stopped."""


class DeadlineExceededError(ReaperError):
    """Reported when a target's pass cannot start, or stops before terminating, within its share
    of the time left."""


class TargetsFailedError(ReaperError):
    """Raised at the end of a Lambda invocation when the pass failed on at least one target."""


class DiscoveryError(ReaperError, exit_code=ExitCode.UNREACHABLE):
    """Raised when the RDS API cannot list the databases to discover (denied, throttled, down)."""
