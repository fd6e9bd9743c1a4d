"""I/O on one psycopg connection: connect, lock, snapshot, terminate. It decides nothing.

The connection is autocommit, so no statement leaves a transaction open and every statement
reads a fresh pg_stat_activity (the view is cached per transaction).
"""

from __future__ import annotations

from contextlib import contextmanager, suppress
from dataclasses import fields
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from reaper.core.full_database import (
    TOO_MANY_CONNECTIONS,
    full_database_fix,
    refusal_cause,
    reserve_major,
)
from reaper.core.pass_lock import PASS_LOCK_KEY, REAPER_APPLICATION_NAME, LockHolder, PassLock
from reaper.core.result import Outcome
from reaper.core.setup_facts import SetupFacts
from reaper.core.snapshot import CLIENT_BACKEND, Connections, Session, Snapshot
from reaper.core.tls import LIBPQ_DEFAULT_SSLMODE, TLS_DOC
from reaper.errors import (
    AuthenticationError,
    DatabaseFullError,
    PassAbortedError,
    TargetUnreachableError,
)
from reaper.pg import _statements
from reaper.pg.timeouts import DEFAULT_TIMEOUTS, Timeouts

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from reaper.pg.conninfo import ConnInfo

APPLICATION_NAME = REAPER_APPLICATION_NAME
# How long a cancel request from another thread may take to reach the server: short, because
# the fan-out sends one per pass it gives up, one after the other, inside the deadline margin.
_CANCEL_TIMEOUT_SECONDS = 1.0

# SQLSTATE class 28 is "invalid authorization specification": a wrong or rotated password, an
# expired IAM token, a role that may not log in.
_AUTH_SQLSTATE_CLASS = "28"
# libpq refused the authentication method the server asked for (require_auth) before sending
# the credential: the server is not what the login expects, and no new password would help.
_REFUSED_AUTH_METHOD = "authentication method requirement"
# libpq's words when the server's certificate does not verify (or it offers no TLS): nothing,
# not even the user name, was sent to it.
_TLS_REFUSALS = (
    "certificate verify failed",
    "does not match host name",
    "root certificate file",
    "server does not support SSL",
)

_SESSION_FIELDS = tuple(field.name for field in fields(Session))
# What libpq knows of the connection, not the server: the sslmode and the host; and the pass
# lock's holders, which a statement of their own reads.
_NOT_IN_STATEMENT = ("sslmode", "host", "pass_lock")
# The columns of _statements.SETUP_FACTS: every other fact.
_SETUP_FACT_COLUMNS = tuple(
    field.name for field in fields(SetupFacts) if field.name not in _NOT_IN_STATEMENT
)
# What a planned session must still be at signal time (pids are reused): the query parameters
# of _statements.TERMINATE and TERMINATE_ONE.
_IDENTITY = ("pid", "backend_start", "state", "state_change")


def connect(target: ConnInfo, timeouts: Timeouts = DEFAULT_TIMEOUTS) -> psycopg.Connection[Any]:
    """Open the reaper's autocommit connection to a target.

    Raises:
        DatabaseFullError: the server refused the login for want of a free connection slot.
        AuthenticationError: the server rejected the credentials.
        TargetUnreachableError: the server could not be reached within the connect timeout,
            its TLS certificate did not verify, or it asked for an authentication method the
            login's require_auth refuses (then no credential was sent).
    """
    options = " ".join(
        (
            f"-c statement_timeout={int(timeouts.statement_ms)}",
            f"-c lock_timeout={int(timeouts.lock_ms)}",
            f"-c idle_in_transaction_session_timeout={int(timeouts.idle_in_transaction_ms)}",
        )
    )
    params = {
        **target.params,
        "application_name": APPLICATION_NAME,
        "connect_timeout": str(int(timeouts.connect_seconds)),
        "options": options,
    }
    try:
        return psycopg.connect(make_conninfo("", **params), autocommit=True)
    except psycopg.OperationalError as exc:
        detail = target.redact(_first_line(exc))
        full_cause = refusal_cause(exc.sqlstate, detail)
        if full_cause is not None:
            raise DatabaseFullError(
                f"the database is full: {target.endpoint} refused the reaper's login because "
                f"its connection slots are taken (SQLSTATE {TOO_MANY_CONNECTIONS}: {detail}). "
                "Nothing was terminated. Fix: "
                + full_database_fix(full_cause, target.user, reserve_major=reserve_major(detail)),
                cause=full_cause,
            ) from exc
        if _REFUSED_AUTH_METHOD in detail:
            raise TargetUnreachableError(
                f"{target.endpoint} asked for an authentication method this login never uses, "
                f"so the reaper sent no credential: {detail} (require_auth: "
                "docs/database-role.md#authentication-methods)"
            ) from exc
        if any(refusal in detail for refusal in _TLS_REFUSALS):
            raise TargetUnreachableError(
                f"cannot connect to {target.endpoint}: {detail}. The server did not prove over "
                f"TLS that it is the database ({_tls_settings(target)}), so the reaper sent no "
                f"credential ({TLS_DOC})"
            ) from exc
        if (exc.sqlstate or "").startswith(_AUTH_SQLSTATE_CLASS) or "authentication" in detail:
            raise AuthenticationError(
                f"{target.endpoint} rejected the reaper's credentials: {detail}"
            ) from exc
        raise TargetUnreachableError(f"cannot connect to {target.endpoint}: {detail}") from exc


def _tls_settings(target: ConnInfo) -> str:
    sslmode = target.params.get("sslmode", LIBPQ_DEFAULT_SSLMODE)
    sslrootcert = target.params.get("sslrootcert")
    return f"sslmode={sslmode}" + (f", sslrootcert={sslrootcert}" if sslrootcert else "")


def read_setup_facts(conn: psycopg.Connection[Any]) -> SetupFacts:
    """What the doctor checks about the reaper's role and the server."""
    with _database_errors(), conn.cursor(row_factory=dict_row) as cursor:
        row = cursor.execute(
            _statements.SETUP_FACTS, {"managed_roles": _statements.MANAGED_ROLES_PATTERN}
        ).fetchone()
    assert row is not None  # one row: the reaper's own role always exists
    sslmode = next(
        (
            option.val.decode()
            for option in conn.pgconn.info
            if option.keyword == b"sslmode" and option.val
        ),
        LIBPQ_DEFAULT_SSLMODE,
    )
    facts = {name: row[name] for name in _SETUP_FACT_COLUMNS}
    facts["uncapped_login_roles"] = tuple(facts["uncapped_login_roles"])  # an array comes as a list
    return SetupFacts(**facts, sslmode=sslmode, host=conn.info.host, pass_lock=read_pass_lock(conn))


def try_pass_lock(conn: psycopg.Connection[Any]) -> bool:
    """Take the session-level pass lock; False if another session holds it on this database."""
    row = _fetch_one(conn, _statements.TRY_PASS_LOCK, {"key": PASS_LOCK_KEY})
    return bool(row[0])


def read_pass_lock(conn: psycopg.Connection[Any]) -> PassLock:
    """Who holds the pass lock on this database (nobody: it is free), and who is asking."""
    with _database_errors(), conn.cursor() as cursor:
        rows = cursor.execute(_statements.PASS_LOCK_HOLDERS, {"key": PASS_LOCK_KEY}).fetchall()
    # One row at least: a free lock is one row without a holder.
    return PassLock(
        own_role=rows[0][0],
        holders=tuple(
            LockHolder(pid, role, application_name, listed)
            for _own_role, held, pid, role, application_name, listed in rows
            if held
        ),
    )


def cancel(conn: psycopg.Connection[Any]) -> None:
    """Ask the server to cancel whatever statement `conn` is running; safe from another thread.

    Best effort: a cancel that cannot be delivered is ignored, because its caller has already
    made sure that the pass on `conn` can signal nothing more (see actions.run.PassDeadline).
    """
    with suppress(psycopg.Error):
        conn.cancel_safe(timeout=_CANCEL_TIMEOUT_SECONDS)


def take_snapshot(conn: psycopg.Connection[Any]) -> Snapshot:
    """Read every session and the connection limits in one statement."""
    with _database_errors(), conn.cursor(row_factory=dict_row) as cursor:
        rows = cursor.execute(_statements.SNAPSHOT).fetchall()
    first = rows[0]  # never empty: the reaper's own backend is always listed
    own_pid = first["own_pid"]
    # The statement names its session columns after Session's fields.
    sessions = tuple(Session(**{name: row[name] for name in _SESSION_FIELDS}) for row in rows)
    return Snapshot(
        taken_at=first["taken_at"],
        own_pid=own_pid,
        role=first["role"],
        role_is_superuser=first["role_is_superuser"],
        server_version_num=first["server_version_num"],
        connections=Connections(
            client_connections=sum(
                1 for s in sessions if s.backend_type == CLIENT_BACKEND and s.pid != own_pid
            ),
            max_connections=first["max_connections"],
            superuser_reserved_connections=first["superuser_reserved_connections"],
            reserved_connections=first["reserved_connections"],
        ),
        sessions=sessions,
    )


def terminate(
    conn: psycopg.Connection[Any],
    planned: Sequence[Session],
    *,
    timeout_ms: int | None = None,
) -> dict[int, Outcome]:
    """Signal exactly the planned sessions that are provably unchanged; report each one.

    A session is signalled only if its backend still has the identity the snapshot recorded
    (pid, backend_start, state, state_change): see _statements.TERMINATE.

    Args:
        timeout_ms: the statement_timeout of the terminate statement (at least 1); None keeps
            the connection's.

    Returns:
        The outcome per planned pid. A refusal is an outcome, never an exception.

    Raises:
        PassAbortedError: the database failed (timeout, shutdown) during the statement.
    """
    if not planned:
        return {}
    if timeout_ms is not None:
        # 0 would mean no limit at all.
        milliseconds = max(1, int(timeout_ms))
        _fetch_one(conn, _statements.SET_STATEMENT_TIMEOUT, {"milliseconds": str(milliseconds)})
    params = {name: [getattr(session, name) for session in planned] for name in _IDENTITY}
    try:
        with _database_errors(pg_errors.InsufficientPrivilege), conn.cursor() as cursor:
            rows = cursor.execute(_statements.TERMINATE, params).fetchall()
    except pg_errors.InsufficientPrivilege:
        return dict(_terminate_one_by_one(conn, planned))
    outcomes = {}
    for pid, same_backend, unchanged, may_signal, signalled in rows:
        if signalled:
            outcomes[pid] = Outcome.TERMINATED
        elif not same_backend:
            outcomes[pid] = Outcome.VANISHED
        elif not unchanged:
            outcomes[pid] = Outcome.CHANGED
        elif not may_signal:
            outcomes[pid] = Outcome.REFUSED
        else:
            # Verified but the signal found no such process: it exited in between.
            outcomes[pid] = Outcome.VANISHED
    return outcomes


def _terminate_one_by_one(
    conn: psycopg.Connection[Any], planned: Sequence[Session]
) -> Iterator[tuple[int, Outcome]]:
    for session in planned:
        params = {name: getattr(session, name) for name in _IDENTITY}
        try:
            with _database_errors(pg_errors.InsufficientPrivilege), conn.cursor() as cursor:
                row = cursor.execute(_statements.TERMINATE_ONE, params).fetchone()
        except pg_errors.InsufficientPrivilege:
            yield session.pid, Outcome.REFUSED
            continue
        if row is None:
            yield session.pid, Outcome.CHANGED
        else:
            yield session.pid, Outcome.TERMINATED if row[0] else Outcome.VANISHED


def _fetch_one(conn: psycopg.Connection[Any], query: Any, params: dict[str, Any]) -> Any:
    with _database_errors(), conn.cursor() as cursor:
        row = cursor.execute(query, params).fetchone()
    assert row is not None  # the statements used here always return one row
    return row


@contextmanager
def _database_errors(*passthrough: type[Exception]) -> Iterator[None]:
    """Turn a database failure in the middle of a pass into PassAbortedError, naming the cause."""
    try:
        yield
    except passthrough:
        raise
    except pg_errors.LockNotAvailable as exc:
        raise PassAbortedError(
            "a reaper statement waited longer than lock_timeout for a catalog lock and was "
            "cancelled; nothing more was done"
        ) from exc
    except pg_errors.QueryCanceled as exc:
        raise PassAbortedError(
            "a reaper statement hit statement_timeout and was cancelled; nothing more was done"
        ) from exc
    except psycopg.OperationalError as exc:
        raise PassAbortedError(
            f"lost the connection to the database during the pass: {_first_line(exc)}"
        ) from exc
    except psycopg.Error as exc:
        raise PassAbortedError(f"database error during the pass: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
