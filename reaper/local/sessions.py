"""Opening PostgreSQL sessions in a chosen state, as applications leave them: for the demo, the
tests and the bench.

One helper for every caller: `OpenSessions.open(conninfo, state)` returns a connection whose
backend is (or, for "active", is about to be) in that state, and `close()` ends them all,
cancelling a running query first so that no backend lingers after its client.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Literal, get_args

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

if TYPE_CHECKING:
    from collections.abc import Iterator

Connection = psycopg.Connection[tuple[Any, ...]]

SessionState = Literal[
    "idle", "idle in transaction", "idle in transaction (aborted)", "active", "listen"
]
_STATES: tuple[SessionState, ...] = get_args(SessionState)

# The channel a "listen" session waits on; its pg_stat_activity.query shows `LISTEN <channel>`.
LISTEN_CHANNEL = "orders_changed"
# Long enough to outlast any demo, test or benchmark; cancelled by `close()`.
_ACTIVE_QUERY = b"SELECT pg_sleep(3600)"


def shown_state(state: SessionState) -> str:
    """The `pg_stat_activity.state` a session opened in `state` shows (a listener is idle)."""
    return "idle" if state == "listen" else state


class OpenSessions:
    """Sessions opened in given states, all ended by `close()`."""

    def __init__(self) -> None:
        self.connections: list[Connection] = []
        self._running: list[Connection] = []

    def open(
        self,
        conninfo: str,
        state: SessionState = "idle",
        *,
        application_name: str | None = None,
    ) -> Connection:
        """Open a session and leave it in `state`.

        States: "idle" (ran SELECT 1), "idle in transaction" (BEGIN; SELECT 1), "idle in
        transaction (aborted)" (BEGIN; a failing statement), "active" (a long pg_sleep sent
        without waiting for it: the call returns while the backend runs it) and "listen"
        (LISTEN, then idle).

        Raises:
            ValueError: an unknown state.
            psycopg.Error: the connection failed.
        """
        if state not in _STATES:
            raise ValueError(f"unknown session state {state!r}")
        in_transaction = state.startswith("idle in transaction")
        conn: Connection = psycopg.connect(
            make_conninfo(conninfo, application_name=application_name),
            autocommit=not in_transaction,
        )
        self.connections.append(conn)
        if state == "active":
            self._running.append(conn)
            # Sent through libpq directly: this thread goes on while the backend sleeps.
            conn.pgconn.send_query(_ACTIVE_QUERY)
            while conn.pgconn.flush():
                pass
        elif state == "idle in transaction (aborted)":
            with contextlib.suppress(psycopg.errors.DivisionByZero):
                conn.execute("SELECT 1 / 0")
        elif state == "listen":
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(LISTEN_CHANNEL)))
        else:
            # Without autocommit psycopg sends BEGIN first, leaving the transaction open.
            conn.execute("SELECT 1")
        return conn

    def close(self) -> None:
        """End every session: cancel what runs (an active query), then close the connection."""
        for conn in self._running:
            # A backend does not notice its client is gone while it sleeps: cancel first.
            if not conn.closed:
                with contextlib.suppress(psycopg.Error):
                    conn.cancel_safe(timeout=5)
        for conn in self.connections:
            with contextlib.suppress(psycopg.Error):
                conn.close()
        self.connections.clear()
        self._running.clear()


@contextlib.contextmanager
def open_sessions() -> Iterator[OpenSessions]:
    """An `OpenSessions` whose sessions are all closed on the way out, whatever happens."""
    sessions = OpenSessions()
    try:
        yield sessions
    finally:
        sessions.close()
