"""Connection parameters for each target: from a DSN, a Secrets Manager secret or an IAM token.

A target's own login (`secret_id` or `iam_user` of its spec: a REAPER_TARGETS field or a
discovered instance's tag) wins over the stack's (REAPER_DATABASE_URL, REAPER_SECRET_ID,
REAPER_IAM_AUTH with REAPER_DB_USER); the spec's host and port win over those in a secret, and
the stack's TLS settings apply to every secret and IAM login: verify-full against the RDS CA
bundle shipped in the package unless REAPER_SSLMODE/REAPER_SSLROOTCERT say otherwise, and
libpq's require_auth limits what the server may ask for each kind of login.

The secret is read through Powertools Parameters and cached for REAPER_SECRET_CACHE_SECONDS;
`refresh_secret=True` bypasses the cache (after a login refused with a rotated password). The
IAM token is signed locally by boto3 for each pass (it is valid for 15 minutes). Passwords and
tokens end up only in `ConnInfo.params`; no message here ever contains one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError
from botocore.exceptions import BotoCoreError, ClientError

from reaper.aws import _clients
from reaper.core.validation import JsonDocumentError, parse_json
from reaper.errors import CredentialsError
from reaper.pg.conninfo import ConnInfo
from reaper.settings import DEFAULT_DBNAME, DEFAULT_PORT

if TYPE_CHECKING:
    from reaper.settings import LambdaSettings, TargetSpec

# The keys of an RDS database secret (the format RDS and the rotation functions write) that the
# reaper needs; host, port and dbname may come from REAPER_TARGETS instead.
_REQUIRED_SECRET_KEYS = ("username", "password")

# libpq's require_auth (libpq 16+; psycopg[binary] ships a newer one): the authentication
# methods a server may ask of each login, checked by libpq before it sends anything.
# A Secrets Manager password: never in cleartext ("password"). RDS asks for SCRAM or MD5,
# whichever the role's password is stored as (its pg_hba.conf method is md5, which asks for
# SCRAM when the stored password is a SCRAM secret; a rotation stores it as the instance's
# password_encryption says), so requiring SCRAM alone would lock out working md5 setups; a
# server asking for the password itself is not RDS. See docs/database-role.md.
SECRET_REQUIRE_AUTH = "!password"
# An IAM token: RDS IAM authentication asks for it in cleartext (over TLS), and for nothing
# else; a server that asks for another method, or lets the login in without asking, is refused.
IAM_REQUIRE_AUTH = "password"


def uses_secret(settings: LambdaSettings, spec: TargetSpec) -> bool:
    """True when the target logs in with a Secrets Manager secret (so a re-read may help)."""
    return secret_id_of(settings, spec) is not None


def secret_id_of(settings: LambdaSettings, spec: TargetSpec) -> str | None:
    """The secret the target logs in with: its own, else the stack's, unless it has another
    login of its own or the stack's login is a DSN."""
    if spec.secret_id is not None:
        return spec.secret_id
    if spec.has_own_login() or settings.database_url is not None:
        return None
    return settings.secret_id


def iam_user_of(settings: LambdaSettings, spec: TargetSpec) -> str | None:
    """The database user the target signs an IAM token for, if it logs in with IAM."""
    if spec.iam_user is not None:
        return spec.iam_user
    if spec.has_own_login() or not settings.iam_auth:
        return None
    return settings.db_user


def login_summary(settings: LambdaSettings, spec: TargetSpec) -> str:
    """How the target logs in, in words, naming no secret value (for `reaper targets`)."""
    if spec.dsn is not None:
        return "its own DSN"
    secret_id = secret_id_of(settings, spec)
    if secret_id is not None:
        return f"secret {secret_id}" + ("" if spec.secret_id else " (stack default)")
    iam_user = iam_user_of(settings, spec)
    if iam_user is not None:
        return f"IAM user {iam_user}" + ("" if spec.iam_user else " (stack default)")
    if settings.database_url is not None:
        return "REAPER_DATABASE_URL"
    return "none: no secret, IAM user or DSN applies"


def build_target(
    settings: LambdaSettings, spec: TargetSpec, *, refresh_secret: bool = False
) -> ConnInfo:
    """The connection parameters of one target.

    Args:
        settings: the function's settings (the base connection).
        spec: the target's name and overrides.
        refresh_secret: read the secret from Secrets Manager even if a cached copy is fresh.

    Raises:
        CredentialsError: the secret is missing, unreadable, not JSON or lacks a key; the IAM
            token cannot be signed; the target has no login at all. Messages name the secret id
            or key, never a value.
        SettingsError: a DSN is not a connection string.
    """
    if spec.dsn is not None:
        return ConnInfo.from_dsn(spec.dsn.get_secret_value(), name=spec.name)
    secret_id = secret_id_of(settings, spec)
    iam_user = iam_user_of(settings, spec)
    base_dsn = settings.database_url_value()
    if secret_id is not None:
        params = _params_from_secret(
            secret_id, max_age=settings.secret_cache_seconds, refresh=refresh_secret
        )
    elif iam_user is not None:
        params = _params_from_iam(settings, spec, iam_user)
    elif base_dsn is not None:
        # A DSN keeps its own TLS settings; one that names none is judged with the overrides'
        # host, which may be the one that leaves the machine.
        return ConnInfo.from_dsn(base_dsn, name=spec.name, overrides=_overrides(spec))
    else:
        raise CredentialsError(
            f"target {spec.name} has no login: tag the instance with idle-reaper:secret-arn "
            "or idle-reaper:iam-user, or set REAPER_SECRET_ID or REAPER_IAM_AUTH with "
            "REAPER_DB_USER"
        )
    params.update(_overrides(spec))
    params.update(_tls_params(settings))
    return ConnInfo(name=spec.name, params=params)


def _overrides(spec: TargetSpec) -> dict[str, str]:
    overrides = {"host": spec.host, "port": spec.port, "dbname": spec.dbname}
    return {key: str(value) for key, value in overrides.items() if value is not None}


def _tls_params(settings: LambdaSettings) -> dict[str, str]:
    params: dict[str, str] = {"sslmode": settings.effective_sslmode()}
    sslrootcert = settings.effective_sslrootcert()
    if sslrootcert is not None:
        params["sslrootcert"] = str(sslrootcert)
    return params


def _params_from_secret(secret_id: str, *, max_age: int, refresh: bool) -> dict[str, str]:
    try:
        raw = _clients.secrets_provider().get(secret_id, max_age=max_age, force_fetch=refresh)
    except GetParameterError as exc:
        raise CredentialsError(
            f"cannot read secret {secret_id}: {_clients.error_reason(exc)}"
        ) from exc
    if isinstance(raw, bytes):
        raise CredentialsError(
            f"secret {secret_id} is binary; expected JSON text in the RDS secret format"
        )
    try:
        document = parse_json(raw) if isinstance(raw, str) else raw
    except JsonDocumentError as exc:
        # No chaining: a decoder's error may carry the document, which holds the password;
        # parse_json's own message names a position or a key, never a value.
        raise CredentialsError(
            f"secret {secret_id} is not usable: {exc}; expected the RDS secret format "
            '{"username": ..., "password": ..., "host": ..., "port": ..., "dbname": ...}'
        ) from None
    if not isinstance(document, dict):
        raise CredentialsError(f"secret {secret_id} is not a JSON object (RDS secret format)")
    missing = [key for key in _REQUIRED_SECRET_KEYS if not document.get(key)]
    if missing:
        raise CredentialsError(
            f"secret {secret_id} has no {', '.join(repr(key) for key in missing)} "
            "(RDS secret format: username, password, host, port, dbname)"
        )
    params = {
        "user": str(document["username"]),
        "password": str(document["password"]),
        "require_auth": SECRET_REQUIRE_AUTH,
        "port": str(document.get("port") or DEFAULT_PORT),
        "dbname": str(document.get("dbname") or DEFAULT_DBNAME),
    }
    if document.get("host"):
        params["host"] = str(document["host"])
    return params


def _params_from_iam(settings: LambdaSettings, spec: TargetSpec, user: str) -> dict[str, str]:
    host = spec.host or settings.db_host
    if host is None:  # LambdaSettings checks listed targets; discovered ones carry a host
        raise CredentialsError(f"target {spec.name}: IAM authentication needs a host")
    port = spec.port or settings.db_port or DEFAULT_PORT
    try:
        client = _clients.rds_client()
        token = client.generate_db_auth_token(
            DBHostname=host, Port=port, DBUsername=user, Region=client.meta.region_name
        )
    except (BotoCoreError, ClientError) as exc:
        raise CredentialsError(
            f"cannot sign an IAM authentication token for {user}@{host}:{port}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return {
        "host": host,
        "port": str(port),
        "user": user,
        "password": str(token),
        "require_auth": IAM_REQUIRE_AUTH,
        "dbname": spec.dbname or settings.db_name or DEFAULT_DBNAME,
    }
