"""The server-side limits of the reaper's own connection: one source for their defaults.

The command line's timeout flags, the function's REAPER_CONNECT_TIMEOUT and the per-target
budget of the fan-out all start from `Timeouts()`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Server-side limits on the reaper's own connection, so it can never hang or hold locks."""

    connect_seconds: int = 5
    statement_ms: int = 30_000
    lock_ms: int = 1_000
    idle_in_transaction_ms: int = 10_000


DEFAULT_TIMEOUTS = Timeouts()

# The longest limits a user may set. PostgreSQL takes statement_timeout up to INT_MAX
# milliseconds (about 24.9 days); beyond that the server refuses the whole connection. A login
# that has not answered in a minute will not: the limit per host libpq tries.
MAX_STATEMENT_MS = 2_147_483_647
MAX_CONNECT_SECONDS = 60
