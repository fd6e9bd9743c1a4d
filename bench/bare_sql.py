"""The statement a DBA would type into psql to do the reaper's job, in one statement.

It selects what the benchmark's policy selects and leaves superusers alone (for the reaper's
role one superuser's backend would abort the whole statement); docs/benchmarks.md says what it
does not do that the reaper does. psycopg and `psql -c` send the same text, values as literals.
"""

from __future__ import annotations

from psycopg import sql

_TEMPLATE = """\
SELECT {selected}
FROM pg_stat_activity AS a
JOIN pg_roles AS r ON r.oid = a.usesysid
WHERE a.application_name LIKE {pattern}
  AND a.state = 'idle'
  AND a.state_change < now() - {threshold}::interval
  AND a.backend_type = 'client backend'
  AND a.pid <> pg_backend_pid()
  AND NOT r.rolsuper"""


def bare_statement(idle_seconds: float, like_pattern: str, *, terminate: bool) -> str:
    """The one-statement reap (`terminate`) or its dry-run twin that lists the pids.

    Returns:
        SQL text with every value inlined as a quoted literal (what psql is given).
    """
    selected = "pg_terminate_backend(a.pid)" if terminate else "a.pid"
    query = sql.SQL(_TEMPLATE).format(
        selected=sql.SQL(selected),
        pattern=sql.Literal(like_pattern),
        threshold=sql.Literal(f"{idle_seconds:g} seconds"),
    )
    return query.as_string(None)
