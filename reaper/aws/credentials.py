"""Connection parameters for each target: from a DSN, a Secrets Manager secret or an IAM token.

The secret is read through Powertools Parameters and cached for REAPER_SECRET_CACHE_SECONDS;
`refresh_secret=True` bypasses the cache (after a login refused with a rotated password). The
IAM token is signed locally by boto3 for each pass (it is valid for 15 minutes). Passwords and
tokens end up only in `Target.params`; no message here ever contains one.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError
from botocore.exceptions import BotoCoreError, ClientError

from reaper.aws import _clients
from reaper.aws.settings import DEFAULT_DBNAME, DEFAULT_PORT
from reaper.errors import CredentialsError
from reaper.pg.target import Target

if TYPE_CHECKING:
    from reaper.aws.settings import LambdaSettings, TargetEntry

# The keys of an RDS database secret (the format RDS and the rotation functions write) that the
# reaper needs; host, port and dbname may come from REAPER_TARGETS instead.
_REQUIRED_SECRET_KEYS = ("username", "password")


def uses_secret(settings: LambdaSettings, entry: TargetEntry) -> bool:
    """True when the target logs in with the Secrets Manager secret (so a re-read may help)."""
    return entry.dsn is None and settings.secret_id is not None


def build_target(
    settings: LambdaSettings, entry: TargetEntry, *, refresh_secret: bool = False
) -> Target:
    """The connection parameters of one target.

    Args:
        settings: the function's settings (the base connection).
        entry: the target's name and overrides.
        refresh_secret: read the secret from Secrets Manager even if a cached copy is fresh.

    Raises:
        CredentialsError: the secret is missing, unreadable, not JSON or lacks a key; the IAM
            token cannot be signed. Messages name the secret id or key, never a value.
        SettingsError: a DSN is not a connection string.
    """
    if entry.dsn is not None:
        return Target.from_dsn(entry.dsn.get_secret_value(), name=entry.name)
    base_dsn = settings.database_url_value()
    if base_dsn is not None:
        base = Target.from_dsn(base_dsn, name=entry.name)
        # A DSN keeps its own TLS settings: it is for local use, where servers rarely have TLS.
        return Target(name=entry.name, params={**base.params, **_overrides(entry)})
    if settings.secret_id is not None:
        params = _params_from_secret(settings, refresh=refresh_secret)
    else:
        params = _params_from_iam(settings, entry)
    params.update(_overrides(entry))
    params.update(_tls_params(settings))
    return Target(name=entry.name, params=params)


def _overrides(entry: TargetEntry) -> dict[str, str]:
    overrides = {"host": entry.host, "port": entry.port, "dbname": entry.dbname}
    return {key: str(value) for key, value in overrides.items() if value is not None}


def _tls_params(settings: LambdaSettings) -> dict[str, str]:
    params: dict[str, str] = {"sslmode": settings.effective_sslmode()}
    if settings.sslrootcert is not None:
        params["sslrootcert"] = str(settings.sslrootcert)
    return params


def _params_from_secret(settings: LambdaSettings, *, refresh: bool) -> dict[str, str]:
    secret_id = settings.secret_id
    assert secret_id is not None  # checked by the caller
    try:
        raw = _clients.secrets_provider().get(
            secret_id, max_age=settings.secret_cache_seconds, force_fetch=refresh
        )
    except GetParameterError as exc:
        raise CredentialsError(
            f"cannot read secret {secret_id}: {_clients.error_reason(exc)}"
        ) from exc
    if isinstance(raw, bytes):
        raise CredentialsError(
            f"secret {secret_id} is binary; expected JSON text in the RDS secret format"
        )
    try:
        document = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError:
        # No chaining: the decoder's error carries the document, which holds the password.
        raise CredentialsError(
            f"secret {secret_id} is not JSON; expected the RDS secret format "
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
        "port": str(document.get("port") or DEFAULT_PORT),
        "dbname": str(document.get("dbname") or DEFAULT_DBNAME),
    }
    if document.get("host"):
        params["host"] = str(document["host"])
    return params


def _params_from_iam(settings: LambdaSettings, entry: TargetEntry) -> dict[str, str]:
    host = entry.host or settings.db_host
    user = settings.db_user
    # Both checked by LambdaSettings.
    assert host is not None
    assert user is not None
    port = entry.port or settings.db_port or DEFAULT_PORT
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
        "dbname": entry.dbname or settings.db_name or DEFAULT_DBNAME,
    }
