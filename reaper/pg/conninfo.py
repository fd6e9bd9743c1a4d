"""A database the reaper acts on: connection parameters plus a name that is safe to print.

The password (or IAM token) lives only in `params`; `name`, `str()` and `repr()` never show it,
and `redact()` scrubs it from any text that might echo it (a driver's error message).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, get_args

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict

from reaper.errors import SettingsError

if TYPE_CHECKING:
    from collections.abc import Mapping

_SECRET_KEYS = ("password",)

# libpq's sslmode values; it checks them only when it connects, which would make a typo an
# unreachable database (exit 3) instead of bad input.
SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
SSLMODES: tuple[SslMode, ...] = get_args(SslMode)
MAX_PORT = 65_535

# The two libpq parse errors that name an unknown keyword, and only it. Its other messages
# may quote the text around a mistake, a password too, and are never repeated.
_UNKNOWN_KEYWORD = re.compile(r'invalid (?:connection option|URI query parameter:) "(.*)"')


@dataclass(frozen=True)
class ConnInfo:
    """Connection parameters (libpq keywords) for one database, and its printable name."""

    name: str
    params: Mapping[str, str] = field(repr=False)

    @classmethod
    def from_dsn(cls, dsn: str, *, name: str | None = None) -> ConnInfo:
        """Build a target from a libpq URI or key=value string.

        Raises:
            SettingsError: when the string is not a connection string, names an unknown
                parameter, or gives a port or sslmode libpq would refuse when connecting;
                the message names the parameter but does not repeat the string, since it
                may hold a password.
        """
        try:
            params = {key: str(value) for key, value in conninfo_to_dict(dsn).items()}
        except psycopg.ProgrammingError as exc:
            raise SettingsError(_parse_failure(str(exc))) from exc
        _check_port(params.get("port"))
        if params.get("sslmode", "prefer") not in SSLMODES:
            raise SettingsError(f"the database URL's sslmode must be one of {', '.join(SSLMODES)}")
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


def _parse_failure(libpq_message: str) -> str:
    unknown = _UNKNOWN_KEYWORD.search(libpq_message)
    if unknown is None:
        return (
            "the database URL is not a valid PostgreSQL connection string "
            "(expected postgresql://user@host:port/dbname or key=value pairs)"
        )
    keyword = unknown.group(1)
    known = sorted(option.keyword.decode() for option in pq.Conninfo.get_defaults())
    nearest = difflib.get_close_matches(keyword, known, n=1)
    hint = f"; did you mean {nearest[0]}?" if nearest else ""
    return f"the database URL has an unknown parameter {keyword[:40]!r}{hint}"


def _check_port(port: str | None) -> None:
    # libpq takes one port per host, comma-separated; an empty one means the default. Its
    # own error comes only when connecting ("Servname not supported for ai_socktype").
    for part in (port or "").split(","):
        if part and not (part.isdigit() and 1 <= int(part) <= MAX_PORT):
            # The value is repeated only when it is a number: text in the port's place is
            # often a password typed there by mistake.
            shown = f" {part}" if part.isdigit() and len(part) <= 10 else ""
            raise SettingsError(
                f"the database URL's port{shown} is not a number from 1 to {MAX_PORT}"
            )


def _describe_endpoint(params: Mapping[str, str]) -> str:
    """user@host:port/dbname from libpq keywords, defaulting as libpq does; never the password."""
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port") or "5432"
    user = params.get("user")
    dbname = params.get("dbname") or user or ""
    prefix = f"{user}@" if user else ""
    return f"{prefix}{host}:{port}/{dbname}"
