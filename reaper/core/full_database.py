"""The vocabulary of a full database: why a login was refused with SQLSTATE 53300, and the fix.

Pure. The gateway recognises the refusal (`refusal_cause` on the server's own words) and raises
DatabaseFullError with the remedy worded here; `reaper doctor`'s checks name the same remedies
in the same words.
"""

from __future__ import annotations

from enum import StrEnum

from reaper.core.sql_text import quote_ident
from reaper.core.versions import RESERVED_CONNECTIONS_MAJOR

# too_many_connections: every slot the role may use is taken, or a role's or database's own
# CONNECTION LIMIT is reached.
TOO_MANY_CONNECTIONS = "53300"
RESERVED_WAY_IN_DOC = "docs/database-role.md#a-reserved-way-in"
# One reaper connection per pass; a second one for a person running `reaper doctor` or `run`
# while the scheduled pass is on; a third for slack.
RECOMMENDED_ROLE_CONNECTION_LIMIT = 3


class FullCause(StrEnum):
    """Which limit refused a login with SQLSTATE 53300."""

    # Every slot the role may use is taken.
    SERVER = "server"
    # The role's own CONNECTION LIMIT.
    ROLE = "role"
    # The database's own CONNECTION LIMIT.
    DATABASE = "database"


# psycopg (3.3, with libpq 18) does not expose the SQLSTATE of a login the server refused during
# startup: the error has no sqlstate and no diag, and libpq keeps no result to read it from.
# When it is missing, the refusal is recognised by the server's own messages for 53300 (their
# English text, PostgreSQL 13 to 18; RDS's variant of the reserved-slots message starts the
# same), each with the limit that refused. A server whose lc_messages is not English is not
# recognised and reports an ordinary refused login.
_REFUSAL_MESSAGES: tuple[tuple[str, FullCause], ...] = (
    ("sorry, too many clients already", FullCause.SERVER),
    ("remaining connection slots are reserved for ", FullCause.SERVER),
    ("too many connections for role ", FullCause.ROLE),
    ("too many connections for database ", FullCause.DATABASE),
)
# Which reserve the refusal names tells the major family, so the message can name that
# family's fix: 13 to 15 reserve slots for superusers only ("non-replication superuser",
# RDS adds its own roles to the list); 16 and later name the role attribute or the
# pg_use_reserved_connections role ("reserved for roles with ...").
_RESERVE_WORDING_MAJOR: tuple[tuple[str, int], ...] = (
    ("reserved for non-replication superuser", 15),
    ("reserved for roles with ", 16),
)


def refusal_cause(sqlstate: str | None, message: str) -> FullCause | None:
    """Which limit refused a login with SQLSTATE 53300, or None for another refusal.

    Args:
        sqlstate: the error's SQLSTATE when the driver exposes it, else None.
        message: the first line of the server's error message.
    """
    if sqlstate is not None and sqlstate != TOO_MANY_CONNECTIONS:
        return None
    for words, cause in _REFUSAL_MESSAGES:
        if words in message:
            return cause
    # The SQLSTATE says full, in words this table does not know: name every remedy.
    return FullCause.SERVER if sqlstate == TOO_MANY_CONNECTIONS else None


def reserve_major(message: str) -> int | None:
    """The major family a reserved-slots refusal reveals (see _RESERVE_WORDING_MAJOR)."""
    return next((major for words, major in _RESERVE_WORDING_MAJOR if words in message), None)


def full_database_fix(
    cause: FullCause, role: str | None, *, reserve_major: int | None = None
) -> str:
    """The remedy for a login refused with SQLSTATE 53300, for each cause.

    The server's major cannot be asked before login; `reserve_major` is what the refusal itself
    told (16 when it named the 16+ reserve, 15 when only a superuser reserve exists), else None,
    and a full server then gets both remedies.
    """
    who = "the reaper's role" if role is None else quote_ident(role)
    if cause is FullCause.ROLE:
        literal = "the role" if role is None else "'" + role.replace("'", "''") + "'"
        return (
            f"{who} is at its own CONNECTION LIMIT: another reaper or a stuck pass holds its "
            f"connections (look for usename = {literal} in pg_stat_activity), or raise it: "
            f"ALTER ROLE {who} CONNECTION LIMIT {RECOMMENDED_ROLE_CONNECTION_LIMIT}"
        )
    if cause is FullCause.DATABASE:
        return (
            "the database is at its own CONNECTION LIMIT: point the reaper at another database "
            "of the cluster (pg_stat_activity covers them all), or raise ALTER DATABASE ... "
            "CONNECTION LIMIT"
        )
    if reserve_major is None:
        return (
            f"{reserved_slots_fix(who)}; on PostgreSQL 15 and older, {connection_limits_fix()}. "
            f"See {RESERVED_WAY_IN_DOC}"
        )
    if reserve_major >= RESERVED_CONNECTIONS_MAJOR:
        return f"{reserved_slots_fix(who)}. See {RESERVED_WAY_IN_DOC}"
    return (
        "this server (PostgreSQL 15 or older) keeps no slots for non-superusers, so "
        f"{connection_limits_fix()}; PostgreSQL 16 adds reserved_connections. "
        f"See {RESERVED_WAY_IN_DOC}"
    )


def reserved_slots_fix(role: str) -> str:
    """The 16+ remedy: a reserve the reaper's role may use (`role` as SQL names it)."""
    return (
        "on PostgreSQL 16 and later, set reserved_connections (for example 3; it needs a "
        f"restart) and GRANT pg_use_reserved_connections TO {role}"
    )


def connection_limits_fix() -> str:
    """The remedy before 16, which has no reserve for non-superusers."""
    return (
        "cap every application role with ALTER ROLE ... CONNECTION LIMIT so that together they "
        "leave slots free, and let the reaper act before the limit (min_utilization, and an "
        "alarm below 100%)"
    )
