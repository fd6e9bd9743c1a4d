"""A database the reaper acts on: connection parameters plus a name that is safe to print.

The password (or IAM token) lives only in `params`; `name`, `str()` and `repr()` never show it,
and `redact()` scrubs it from any text that might echo it (a driver's error message).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import psycopg
from psycopg.conninfo import conninfo_to_dict

from reaper.errors import SettingsError

if TYPE_CHECKING:
    from collections.abc import Mapping

_SECRET_KEYS = ("password",)


@dataclass(frozen=True)
class ConnInfo:
    """Connection parameters (libpq keywords) for one database, and its printable name."""

    name: str
    params: Mapping[str, str] = field(repr=False)

    @classmethod
    def from_dsn(cls, dsn: str, *, name: str | None = None) -> ConnInfo:
        """Build a target from a libpq URI or key=value string.

        Raises:
            SettingsError: when the string is not a connection string; the message does not
                repeat it, since it may hold a password.
        """
        try:
            params = {key: str(value) for key, value in conninfo_to_dict(dsn).items()}
        except psycopg.ProgrammingError as exc:
            raise SettingsError(
                "the database URL is not a valid PostgreSQL connection string "
                "(expected postgresql://user@host:port/dbname or key=value pairs)"
            ) from exc
        return cls(name=name or _describe_endpoint(params), params=params)

    @property
    def endpoint(self) -> str:
        """user@host:port/dbname, without the password."""
        return _describe_endpoint(self.params)

    @property
    def user(self) -> str | None:
        """The role the target logs in as, when the parameters name one."""
        return self.params.get("user")

    def redact(self, text: str) -> str:
        """Text with every secret of this target replaced by '***'."""
        for key in _SECRET_KEYS:
            secret = self.params.get(key)
            if secret:
                text = text.replace(secret, "***")
        return text

    def __str__(self) -> str:
        return self.name


def _describe_endpoint(params: Mapping[str, str]) -> str:
    """user@host:port/dbname from libpq keywords, defaulting as libpq does; never the password."""
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port") or "5432"
    user = params.get("user")
    dbname = params.get("dbname") or user or ""
    prefix = f"{user}@" if user else ""
    return f"{prefix}{host}:{port}/{dbname}"
