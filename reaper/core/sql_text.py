"""SQL shown to a person to paste (a doctor's fix, a refusal's GRANT): names quoted as
PostgreSQL reads them. Pure.

Role names come from the server and may hold anything a CREATE ROLE accepted: spaces, quotes,
semicolons, newlines. Printed bare inside `GRANT ... TO <role>`, such a name would make the
pasted statement do something else.
"""

from __future__ import annotations

import re

# What PostgreSQL reads unquoted as the same name: lower case, digits, _ and $, not first a digit.
_PLAIN = re.compile(r"[a-z_][a-z0-9_$]*")
# Words that cannot be a bare role name in GRANT ... TO or ALTER ROLE (reserved, or special
# there): quoted like any other name that needs it.
_RESERVED = frozenset(
    {"all", "current_role", "current_user", "group", "none", "public", "session_user", "user"}
)


def quote_ident(name: str) -> str:
    """`name` as an SQL identifier: bare when PostgreSQL reads it so, else double-quoted with
    inner double quotes doubled (what `psycopg.sql.Identifier` would send)."""
    if _PLAIN.fullmatch(name) and name not in _RESERVED:
        return name
    return '"' + name.replace('"', '""') + '"'
