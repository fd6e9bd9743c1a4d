"""The project's exceptions: one root, one subclass per way a pass can be stopped.

A failure on a single session (refused, already gone) is data in the pass result, never an
exception; only what stops a pass is raised. Messages name the field, target or value at fault
and never carry a password, token or full DSN.
"""

from __future__ import annotations


class ReaperError(Exception):
    """Root of every error the reaper raises on purpose."""


class PolicyError(ReaperError):
    """Raised when a policy document is missing, is not JSON, or fails validation."""


class SettingsError(ReaperError):
    """Raised when the environment or CLI flags describe an impossible configuration."""


class EventError(ReaperError):
    """Raised when a Lambda event has an unknown shape or a malformed or unknown field."""


class CredentialsError(ReaperError):
    """Raised when connection credentials cannot be obtained (secret missing, malformed, denied)."""


class TargetUnreachableError(ReaperError):
    """Raised when the database cannot be reached or refuses the connection (incl. bad login)."""


class AuthenticationError(TargetUnreachableError):
    """Raised when the server rejects the credentials (a rotated password, for example)."""


class DatabaseFullError(TargetUnreachableError):
    """Raised when the server refuses the login because its connection slots are taken (53300)."""

    def __init__(self, message: str, *, cause: str) -> None:
        super().__init__(message)
        # Which limit refused the login: "server" (every slot the role may use is taken),
        # "role" (the role's own CONNECTION LIMIT) or "database" (the database's).
        self.cause = cause


class VisibilityError(ReaperError):
    """Raised when the reaper's role cannot see other roles' sessions (needs pg_monitor)."""


class PassAbortedError(ReaperError):
    """Raised when the database fails in the middle of a pass (timeout, shutdown, lost link)."""


class LocalPostgresError(ReaperError):
    """Raised when a throwaway local PostgreSQL cluster cannot be started or stopped."""


class DeadlineExceededError(ReaperError):
    """Reported when a target's pass cannot start or finish within its share of the time left."""


class TargetsFailedError(ReaperError):
    """Raised at the end of a Lambda invocation when the pass failed on at least one target."""


class DiscoveryError(ReaperError):
    """Raised when the RDS API cannot list the databases to discover (denied, throttled, down)."""
