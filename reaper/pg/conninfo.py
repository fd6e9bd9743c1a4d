"""A database the reaper acts on: connection parameters plus a name that is safe to print.

The password (or IAM token) lives only in `params`; `name`, `str()` and `repr()` never show it,
and `redact()` scrubs it from any text that might echo it (a driver's error message).

A DSN that names no sslmode gets libpq's `prefer`, which falls back to plaintext and checks no
certificate. So a DSN (REAPER_DATABASE_URL, `--dsn`, a target's `dsn`) that names no sslmode,
to a server that is not local (`core.tls.is_local_host`), is given sslmode=verify-full and,
unless it names one, the RDS CA bundle the package ships as sslrootcert. A DSN that names its
sslmode keeps it, and a local server (a socket, localhost, a loopback address) keeps libpq's
default, since local servers rarely have TLS.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, get_args

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict

from reaper.core.tls import LIBPQ_DEFAULT_SSLMODE, all_hosts_local, verifies_server
from reaper.errors import SettingsError
from reaper.pg.tls import RDS_CA_BUNDLE

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
    def from_dsn(
        cls, dsn: str, *, name: str | None = None, overrides: Mapping[str, str] | None = None
    ) -> ConnInfo:
        """Build a target from a libpq URI or key=value string, and `overrides` of its keys.

        A DSN that names no sslmode, to a server that is not local, verifies the server (see
        the module docstring).

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
        params.update(overrides or {})
        params.update(_verified_tls_by_default(params))
        return cls(name=name or _describe_endpoint(params), params=params)

    @property
    def endpoint(self) -> str:
        """user@host:port/dbname, without the password."""
        return _describe_endpoint(self.params)

    @property
    def user(self) -> str | None:
        """The role the target logs in as, when the parameters name one."""
        return self.params.get("user")

    @property
    def sslmode(self) -> str:
        """The sslmode libpq will use: the parameters', else PGSSLMODE, else prefer."""
        return _with_libpq_defaults(self.params).get("sslmode", LIBPQ_DEFAULT_SSLMODE)

    @property
    def unverified_remote(self) -> bool:
        """True when the connection may go off this machine without the server's certificate
        being checked (no TLS at all, or TLS with any certificate accepted)."""
        hosts = _hosts(_with_libpq_defaults(self.params))
        return not verifies_server(self.sslmode) and not all_hosts_local(hosts)

    def redact(self, text: str) -> str:
        """Text with every secret of this target replaced by '***'."""
        for key in _SECRET_KEYS:
            secret = self.params.get(key)
            if secret:
                text = text.replace(secret, "***")
        return text

    def __str__(self) -> str:
        return self.name


def _with_libpq_defaults(params: Mapping[str, str]) -> dict[str, str]:
    """The parameters, and libpq's value for each keyword they leave out: its environment
    variable (PGHOST, PGSSLMODE...) or its compiled-in default."""
    defaults = {
        option.keyword.decode(): option.val.decode()
        for option in pq.Conninfo.get_defaults()
        if option.val
    }
    return {**defaults, **{key: value for key, value in params.items() if value}}


def _hosts(effective: Mapping[str, str]) -> str:
    """The server names libpq will connect to (a comma-separated list; '' for its default
    socket). A host name wins over hostaddr: it is what the certificate must name, and what the
    user means to reach even when hostaddr points at a tunnel."""
    return effective.get("host") or effective.get("hostaddr") or ""


def _verified_tls_by_default(params: Mapping[str, str]) -> dict[str, str]:
    """sslmode=verify-full (and the RDS bundle) for a DSN that says nothing of TLS and names a
    server off this machine; nothing otherwise."""
    effective = _with_libpq_defaults(params)
    # PGSSLMODE counts as naming an sslmode; set to "prefer" it cannot be told from libpq's
    # compiled default, and is upgraded like it (the safe way).
    if "sslmode" in params or effective.get("sslmode") != LIBPQ_DEFAULT_SSLMODE:
        return {}
    if all_hosts_local(_hosts(effective)):
        return {}
    defaults = {"sslmode": "verify-full"}
    if "sslrootcert" not in effective:
        defaults["sslrootcert"] = str(RDS_CA_BUNDLE)
    return defaults


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
