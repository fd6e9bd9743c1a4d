"""Creating login roles, such as the reaper's least-privilege role of docs/database-role.md.

Used by the demo, the benchmarks and the test fixtures, which all set up throwaway servers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from psycopg import sql

if TYPE_CHECKING:
    from collections.abc import Sequence

    import psycopg

# What the reaper needs and nothing more: see its state (pg_monitor), signal others (the other).
REAPER_GRANTS: tuple[str, ...] = ("pg_monitor", "pg_signal_backend")


def create_login_role(
    conn: psycopg.Connection[Any],
    name: str,
    password: str,
    *,
    grants: Sequence[str] = (),
    superuser: bool = False,
    login: bool = True,
) -> None:
    """Create a role with a password (or a SCRAM verifier) and grant it the given roles.

    CREATE ROLE takes no bind parameters, so the name goes in as an identifier and the password
    as a quoted literal, both composed by psycopg.sql, never by string formatting.
    """
    conn.execute(
        sql.SQL("CREATE ROLE {name} WITH {superuser} {login} PASSWORD {password}").format(
            name=sql.Identifier(name),
            superuser=sql.SQL("SUPERUSER" if superuser else "NOSUPERUSER"),
            login=sql.SQL("LOGIN" if login else "NOLOGIN"),
            password=sql.Literal(password),
        )
    )
    for granted in grants:
        conn.execute(
            sql.SQL("GRANT {granted} TO {name}").format(
                granted=sql.Identifier(granted), name=sql.Identifier(name)
            )
        )
