"""Settings from the environment, which both shells read: the only module that reads os.environ.

`LocalSettings` is what the command line takes (REAPER_DATABASE_URL). `LambdaSettings` is the
function's whole configuration (prefix REAPER_): where the policy comes from, how to reach each
target (listed, or discovered in RDS by tag), TLS and time limits; `reaper invoke` and
`reaper targets` read it as the function does. `ObservabilitySettings` reads the Powertools
variables the Logger and Metrics objects need when the module defining them is imported, and
`AwsSettings` the Region the AWS clients call.
"""

from __future__ import annotations

import difflib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as PydanticSettingsError

from reaper.core import validation
from reaper.core.budget import DEFAULT_WINDOW_DAYS, MAX_WINDOW_DAYS, NameTemplate
from reaper.core.tls import verifies_server
from reaper.errors import SettingsError
from reaper.pg.conninfo import SslMode
from reaper.pg.timeouts import DEFAULT_TIMEOUTS, MAX_CONNECT_SECONDS
from reaper.pg.tls import RDS_CA_BUNDLE

if TYPE_CHECKING:
    from collections.abc import Collection

ENV_PREFIX = "REAPER_"
DEFAULT_TARGET_NAME = "default"
DEFAULT_PORT = 5432
DEFAULT_DBNAME = "postgres"

# Modes that may skip TLS altogether: combined with a CA bundle they hide a misconfiguration.
_UNVERIFIED_SSLMODES: tuple[SslMode, ...] = ("disable", "allow", "prefer")

# Target names become a CloudWatch dimension value and appear in logs: keep them plain.
TARGET_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}$"

# Fields whose raw input may hold a password: validation errors never repeat their value.
_SECRET_FIELDS = frozenset({"database_url", "targets"})


def _several_given(options: dict[str, bool]) -> str | None:
    """The names of the options given, joined with "and", when more than one is: each way to
    log in excludes the others."""
    given = [name for name, is_given in options.items() if is_given]
    return " and ".join(given) if len(given) > 1 else None


class _DatabaseUrlSettings(BaseSettings):
    """REAPER_DATABASE_URL, which both the command line and the function read."""

    database_url: SecretStr | None = None

    def database_url_value(self) -> str | None:
        """The DSN, if set; it may hold a password, so never print it."""
        return self.database_url.get_secret_value() if self.database_url else None


class LocalSettings(_DatabaseUrlSettings):
    """What the command line takes from the environment."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")


# The function's Powertools service and metrics namespace when the variables are unset: the
# template sets the same values, and `reaper invoke` sets them as the template does.
SERVICE_NAME = "idle-reaper"
METRICS_NAMESPACE = "IdleReaper"


# The levels an error suggests; Python's logging (and so Powertools' Logger) also takes WARN,
# FATAL and NOTSET, in any case, and those are accepted too.
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ObservabilitySettings(BaseSettings):
    """The Powertools variables (no REAPER_ prefix) with the function's defaults."""

    model_config = SettingsConfigDict(extra="ignore", env_ignore_empty=True)

    service_name: str = Field(default=SERVICE_NAME, validation_alias="POWERTOOLS_SERVICE_NAME")
    metrics_namespace: str = Field(
        default=METRICS_NAMESPACE, validation_alias="POWERTOOLS_METRICS_NAMESPACE"
    )
    # Powertools reads POWERTOOLS_LOG_LEVEL, else the older LOG_LEVEL; a bad value made it
    # fail at import with "Unknown level: 'LOUD'", naming no variable.
    log_level: str | None = Field(default=None, validation_alias="POWERTOOLS_LOG_LEVEL")
    legacy_log_level: str | None = Field(default=None, validation_alias="LOG_LEVEL")

    @field_validator("log_level", "legacy_log_level")
    @classmethod
    def _known_level(cls, level: str | None) -> str | None:
        if level is None:
            return None
        if level.upper() not in logging.getLevelNamesMapping():
            raise ValueError(f"not a log level; use one of {', '.join(_LOG_LEVELS)}")
        return level.upper()

    def logger_level(self) -> str | None:
        """The level the Logger is built with (None: Powertools' default, INFO)."""
        return self.log_level or self.legacy_log_level


def load_observability_settings() -> ObservabilitySettings:
    """Read the Powertools variables.

    Raises:
        SettingsError: naming the variable and what is wrong with it.
    """
    try:
        return ObservabilitySettings()
    except ValidationError as exc:
        raise SettingsError(
            f"invalid settings: {validation.describe_validation_error(exc)}"
        ) from exc


class AwsSettings(BaseSettings):
    """The Region the AWS clients call: AWS_REGION (what Lambda sets and what the docs show)
    before AWS_DEFAULT_REGION (what boto3 alone reads)."""

    model_config = SettingsConfigDict(extra="ignore", env_ignore_empty=True)

    region: str | None = Field(
        default=None, validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION")
    )


class TargetSpec(BaseModel):
    """One database to act on: a name, and what it changes in the stack's connection settings.

    A listed target (REAPER_TARGETS) and a discovered one (from the instance's tags) are both
    entries; `secret_id` or `iam_user` give the target a login of its own, `policy_parameter`
    a policy of its own.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=TARGET_NAME_PATTERN)
    host: str | None = Field(default=None, min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535)
    dbname: str | None = Field(default=None, min_length=1)
    # A complete connection string of its own (local use); may hold a password.
    dsn: SecretStr | None = None
    secret_id: str | None = Field(default=None, min_length=1, max_length=2048)
    iam_user: str | None = Field(default=None, min_length=1, max_length=63)
    policy_parameter: str | None = Field(default=None, min_length=1, max_length=2048)

    @model_validator(mode="after")
    def _one_login(self) -> TargetSpec:
        if self.dsn is not None and (self.host or self.port or self.dbname):
            raise ValueError(
                f"target {self.name!r}: give either 'dsn' or 'host'/'port'/'dbname' overrides, "
                "not both"
            )
        logins = {
            "dsn": self.dsn is not None,
            "secret_id": self.secret_id is not None,
            "iam_user": self.iam_user is not None,
        }
        if several := _several_given(logins):
            raise ValueError(f"target {self.name!r}: {several} are all given; give one login")
        return self

    def has_own_login(self) -> bool:
        """True when the entry says how to log in, whatever the stack's defaults are."""
        return self.dsn is not None or self.secret_id is not None or self.iam_user is not None


class DiscoveryTag(BaseModel):
    """The tag (REAPER_DISCOVERY_TAG=key=value) that marks the RDS instances to act on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # AWS tag limits: keys 1-128 characters, values 0-256.
    key: str = Field(min_length=1, max_length=128)
    value: str = Field(max_length=256)

    def __str__(self) -> str:
        return f"{self.key}={self.value}"


class LambdaSettings(_DatabaseUrlSettings):
    """The Lambda function's configuration (every variable is documented in docs/tuning.md)."""

    # Empty variables count as unset: a template's "" default must not mean "the empty path".
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", env_ignore_empty=True)

    policy_parameter: str | None = Field(default=None, min_length=1, max_length=2048)
    policy_file: Path | None = None
    policy_cache_seconds: int = Field(default=60, ge=0, le=3600)
    secret_cache_seconds: int = Field(default=300, ge=0, le=86_400)

    secret_id: str | None = Field(default=None, min_length=1)
    iam_auth: bool = False
    db_host: str | None = Field(default=None, min_length=1)
    db_port: int | None = Field(default=None, ge=1, le=65535)
    db_name: str | None = Field(default=None, min_length=1)
    db_user: str | None = Field(default=None, min_length=1)
    targets: Annotated[tuple[TargetSpec, ...] | None, NoDecode] = None

    discovery_tag: Annotated[DiscoveryTag | None, NoDecode] = None
    discovery_vpc_id: str | None = Field(default=None, pattern=r"^vpc-[0-9a-f]{8,17}$")
    discovery_cache_seconds: int = Field(default=60, ge=0, le=3600)
    # Passes run at once: each holds one connection and mostly waits on the network (psycopg
    # releases the GIL), so ten fit a 256 MB function; more only queue on its fraction of a CPU.
    max_concurrency: int = Field(default=10, ge=1, le=64)
    target_timeout_seconds: float = Field(default=20.0, ge=2, le=900)

    # The connection budget (docs/budget.md): how the functions name their sessions, e.g.
    # lambda:{function}. Unset, no budget is computed and no Lambda or CloudWatch API is called.
    budget_name_template: str | None = Field(default=None, min_length=1, max_length=63)
    budget_window_days: int = Field(default=DEFAULT_WINDOW_DAYS, ge=1, le=MAX_WINDOW_DAYS)
    # Reserves change rarely and the peaks span days: reading them every 15 minutes, not on
    # every pass of a 5-minute schedule, keeps the API calls to a few per pass on average.
    budget_cache_seconds: int = Field(default=900, ge=0, le=86_400)

    sslmode: SslMode | None = None
    sslrootcert: Path | None = None
    connect_timeout: int = Field(
        default=DEFAULT_TIMEOUTS.connect_seconds, ge=1, le=MAX_CONNECT_SECONDS
    )
    deadline_margin_seconds: float = Field(default=5.0, ge=0, le=600)

    @field_validator("targets", mode="before")
    @classmethod
    def _decode_targets(cls, value: Any) -> Any:
        if not isinstance(value, str | bytes):
            return value
        try:
            return validation.parse_json(value)
        except validation.JsonDocumentError as exc:
            # parse_json's message names a position or a key, never a value: the text may
            # contain a DSN with a password.
            raise ValueError(
                f"{exc}; expected a list such as "
                '[{"name": "writer", "host": "..."}, {"name": "reader", "host": "..."}]'
            ) from None

    @field_validator("budget_name_template")
    @classmethod
    def _check_name_template(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                NameTemplate(value)
            except SettingsError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("discovery_tag", mode="before")
    @classmethod
    def _split_discovery_tag(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        key, separator, tag_value = value.partition("=")
        if not separator or not key:
            raise ValueError("expected key=value, for example idle-reaper=enabled")
        return {"key": key, "value": tag_value}

    @field_validator("targets")
    @classmethod
    def _unique_target_names(
        cls, targets: tuple[TargetSpec, ...] | None
    ) -> tuple[TargetSpec, ...] | None:
        if targets is None:
            return None
        if not targets:
            raise ValueError("the list is empty; leave REAPER_TARGETS unset for one target")
        validation.require_unique_names((target.name for target in targets), what="target")
        return targets

    @model_validator(mode="after")
    def _check_combinations(self) -> LambdaSettings:
        if self.policy_parameter and self.policy_file:
            raise ValueError(
                "REAPER_POLICY_PARAMETER and REAPER_POLICY_FILE are both set; give one policy "
                "source (the parameter in AWS, the file for local use)"
            )
        logins = {
            "REAPER_DATABASE_URL": self.database_url is not None,
            "REAPER_SECRET_ID": self.secret_id is not None,
            "REAPER_IAM_AUTH": self.iam_auth,
        }
        if several := _several_given(logins):
            raise ValueError(f"{several} are all set; give one way to log in to the database")
        self._check_iam_settings()
        self._check_targets_reachable()
        self._check_tls()
        return self

    def _check_iam_settings(self) -> None:
        given = [
            f"{ENV_PREFIX}{name.upper()}"
            for name in ("db_host", "db_port", "db_name", "db_user")
            if getattr(self, name) is not None
        ]
        if not self.iam_auth:
            if given:
                raise ValueError(
                    f"{', '.join(given)} only apply with REAPER_IAM_AUTH=true; to point a secret "
                    "at another endpoint use REAPER_TARGETS"
                )
        elif self.db_user is None:
            raise ValueError("REAPER_IAM_AUTH=true needs REAPER_DB_USER (the rds_iam user)")
        if self.db_host is not None:
            return
        # A discovered target brings its endpoint; a listed one signing an IAM token needs one.
        signing = [
            t.name
            for t in self.target_entries()
            if t.host is None
            and (t.iam_user is not None or (self.iam_auth and not t.has_own_login()))
        ]
        if signing:
            raise ValueError(
                "IAM authentication needs REAPER_DB_HOST, or a 'host' in every REAPER_TARGETS "
                f"entry that uses it (missing for: {', '.join(signing)})"
            )

    def _check_targets_reachable(self) -> None:
        has_base = self.database_url is not None or self.secret_id is not None or self.iam_auth
        if self.targets is None:
            # Discovered instances without a login of their own (tags) fail one by one.
            if not has_base and self.discovery_tag is None:
                raise ValueError(
                    "no target configured: set REAPER_DATABASE_URL, REAPER_SECRET_ID, or "
                    "REAPER_IAM_AUTH=true with REAPER_DB_HOST and REAPER_DB_USER (or "
                    "REAPER_TARGETS entries that each carry a 'dsn', or REAPER_DISCOVERY_TAG)"
                )
            return
        for index, target in enumerate(self.targets):
            if not target.has_own_login() and not has_base:
                raise ValueError(
                    f"REAPER_TARGETS[{index}] ({target.name!r}) has no 'dsn', 'secret_id' or "
                    "'iam_user' and there is no base connection (REAPER_DATABASE_URL, "
                    "REAPER_SECRET_ID or REAPER_IAM_AUTH) for it to override"
                )

    def _check_tls(self) -> None:
        if self.sslrootcert is not None and self.sslmode in _UNVERIFIED_SSLMODES:
            raise ValueError(
                f"REAPER_SSLROOTCERT is set but REAPER_SSLMODE={self.sslmode} may not even use "
                "TLS; use require (then verify-full applies), verify-ca or verify-full"
            )

    def target_entries(self) -> tuple[TargetSpec, ...]:
        """The listed targets: REAPER_TARGETS, else one target named 'default' (none when
        REAPER_DISCOVERY_TAG is set: the discovered instances are the targets then)."""
        if self.targets is not None:
            return self.targets
        return () if self.discovery_tag is not None else (TargetSpec(name=DEFAULT_TARGET_NAME),)

    def name_template(self) -> NameTemplate | None:
        """The connection budget's session name template; None when the budget is off."""
        template = self.budget_name_template
        return None if template is None else NameTemplate(template)

    def effective_sslmode(self) -> SslMode:
        """The sslmode for secret, IAM and discovered targets: verify-full unless
        REAPER_SSLMODE says otherwise.

        Anything weaker lets a server on the path that presents a certificate of its own
        receive the password or IAM token, so weakening it takes an explicit REAPER_SSLMODE.
        """
        if self.sslrootcert is not None:
            # A CA bundle is given to be used: upgrade require (the template's former default)
            # to a full check; an explicit verify-ca (certificates without the host name) is kept.
            return "verify-ca" if self.sslmode == "verify-ca" else "verify-full"
        return self.sslmode or "verify-full"

    def effective_sslrootcert(self) -> Path | None:
        """The CA bundle the server's certificate is checked against: REAPER_SSLROOTCERT, else
        the RDS bundle shipped in the package; None when the sslmode checks no certificate."""
        if self.sslrootcert is not None:
            return self.sslrootcert
        return RDS_CA_BUNDLE if verifies_server(self.effective_sslmode()) else None


def load_lambda_settings() -> LambdaSettings:
    """Read and validate the function's settings from the environment.

    Raises:
        SettingsError: naming each bad variable and what is wrong (the value is repeated only
            for variables that cannot hold a password), or each REAPER_* variable the function
            does not read, with the nearest name it does.
    """
    known = lambda_variables()
    unknown = _unknown_variables(known)
    if unknown:
        # A misspelt REAPER_POLICY_FIEL would otherwise leave the policy at the built-in
        # default and run a live pass with it.
        raise SettingsError(
            f"unknown variable{'s' if len(unknown) > 1 else ''} "
            f"{_with_nearest(unknown, known)}: the function reads only the REAPER_* variables "
            "of docs/tuning.md, and a misspelt one would leave its setting at the default; "
            "correct or unset it"
        )
    try:
        return LambdaSettings()
    except ValidationError as exc:
        raise SettingsError(
            "invalid settings: "
            + validation.describe_validation_error(
                exc, field_label=_variable_name, hidden_fields=_SECRET_FIELDS
            )
        ) from exc
    except PydanticSettingsError as exc:
        # pydantic-settings' own message names the field and the source, never the value.
        raise SettingsError(f"invalid settings: {exc}") from exc


def unknown_variable_hint(*meant: str) -> str:
    """A clause naming each set REAPER_* variable the product does not know whose nearest
    known name is one of `meant` ("; REAPER_DATABSE_URL is set: did you mean
    REAPER_DATABASE_URL?"), or "" when there is none. For the command line, which reads only
    REAPER_DATABASE_URL and so refuses nothing else (the function's variables, or a test
    harness's, may be set in the same shell)."""
    known = lambda_variables()
    hints = [
        f"; {validation.short_name(name)} is set: did you mean {nearest}?"
        for name in _unknown_variables(known)
        if (nearest := _nearest(name, known)) in meant
    ]
    return "".join(hints[:3])


def _unknown_variables(known: Collection[str]) -> list[str]:
    """The REAPER_* variables set in the environment that are not in `known` (pydantic-settings
    reads the names in any case, so they are compared upper-cased)."""
    return sorted(
        name
        for name in os.environ
        if name.upper().startswith(ENV_PREFIX) and name.upper() not in known
    )


def _nearest(name: str, known: Collection[str]) -> str | None:
    # Compared without the prefix every name shares, which would make any two look alike.
    suffixes = {variable.removeprefix(ENV_PREFIX): variable for variable in known}
    word = name.upper().removeprefix(ENV_PREFIX)
    matches = difflib.get_close_matches(word, suffixes, n=1, cutoff=0.6)
    return suffixes[matches[0]] if matches else None


def _with_nearest(unknown: list[str], known: Collection[str], *, most: int = 10) -> str:
    described = []
    for name in unknown[:most]:
        nearest = _nearest(name, known)
        described.append(
            f"{validation.short_name(name)} (did you mean {nearest}?)"
            if nearest
            else validation.short_name(name)
        )
    if len(unknown) > most:
        described.append(f"and {len(unknown) - most} more")
    return ", ".join(described)


def _variable_name(field_name: str) -> str:
    return f"{ENV_PREFIX}{field_name.upper()}"


def lambda_variables() -> tuple[str, ...]:
    """The function's REAPER_* variables, as `LambdaSettings` reads them (for help texts, the
    template and the tests: derived here so no list is kept by hand)."""
    return tuple(_variable_name(name) for name in LambdaSettings.model_fields)
