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
