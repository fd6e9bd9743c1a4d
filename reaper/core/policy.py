"""The policy document: which sessions the reaper may terminate, and when.

One JSON document, the same schema on the command line (`--policy FILE`), in SSM Parameter Store
and in `reaper policy schema`. Pure validation, no I/O: callers read the text and hand it here.
"""

from __future__ import annotations

import ipaddress
import json
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from reaper.core.validation import describe_validation_error, require_unique_names
from reaper.errors import PolicyError

if TYPE_CHECKING:
    from collections.abc import Sequence

SessionState = Literal["idle", "idle in transaction", "idle in transaction (aborted)"]
IDLE_STATES: tuple[SessionState, ...] = get_args(SessionState)

# A threshold shorter than this is almost always a unit mistake (minutes typed as seconds) and
# would churn connections that warm functions are about to reuse.
THRESHOLD_FLOOR_SECONDS = 60.0

# The defaults of a rule's threshold and of the cap per pass: one source for the policy
# document, the command line's flags and the function's built-in policy.
DEFAULT_IDLE_SECONDS = 900.0
DEFAULT_MAX_TERMINATIONS = 50
# The longest threshold a rule may state.
MAX_IDLE_SECONDS = 31 * 24 * 3600

# Never terminated, whatever the document says: RDS's own management sessions.
ALWAYS_EXCLUDED_USERS: tuple[str, ...] = ("rdsadmin",)

Pattern = Annotated[str, Field(min_length=1, max_length=256)]
Seconds = Annotated[float, Field(gt=0, le=MAX_IDLE_SECONDS)]


def _default_states() -> dict[SessionState, float]:
    return {"idle": DEFAULT_IDLE_SECONDS}


# The defaults of a rule's `learned` bounds: the longest learned threshold is an hour, since a
# warm Lambda environment is rarely kept longer; 20 idle periods before trusting what was seen.
DEFAULT_LEARNED_MAX_SECONDS = 3600.0
DEFAULT_MIN_OBSERVATIONS = 20


class _Document(BaseModel):
    # Unknown keys are refused: a misspelt "max_terminatons" must not silently fall back to a
    # default on a production database.
    model_config = ConfigDict(extra="forbid", frozen=True)


class LearnedThresholds(_Document):
    """A rule's request for thresholds learned from how its applications reuse idle sessions.

    Per application and state: the `quantile` of the idle ages at which sessions were last seen
    idle before they were used again, plus `margin_seconds`, clamped to [`min_seconds`,
    `max_seconds`]; an application whose sessions were never reused gets `min_seconds`. Used only
    once `min_observations` idle periods were seen; until then the rule's static threshold.
    """

    quantile: float = Field(
        default=0.99,
        ge=0.5,
        le=1.0,
        description="Share of the observed reuses the threshold must spare (0.5 to 1).",
    )
    margin_seconds: float = Field(
        default=60.0,
        ge=0,
        le=MAX_IDLE_SECONDS,
        description="Seconds added to the quantile: covers reuses slower than any seen so far.",
    )
    min_seconds: Seconds = Field(
        default=THRESHOLD_FLOOR_SECONDS,
        description="The shortest threshold learned; also the threshold of an application whose "
        "sessions were never reused.",
    )
    max_seconds: Seconds = Field(
        default=DEFAULT_LEARNED_MAX_SECONDS, description="The longest threshold learned."
    )
    min_observations: int = Field(
        default=DEFAULT_MIN_OBSERVATIONS,
        ge=1,
        le=100_000,
        description="Idle periods of an application (in that state) that must have been seen "
        "before its learned threshold is used.",
    )

    @model_validator(mode="after")
    def _bounds_in_order(self) -> LearnedThresholds:
        if self.min_seconds > self.max_seconds:
            raise ValueError(
                f"min_seconds ({self.min_seconds:g}) is above max_seconds ({self.max_seconds:g})"
            )
        return self


class Rule(_Document):
    """Sessions a rule covers, and how long each state may stay idle before termination."""

    name: str = Field(
        default="",
        max_length=100,
        description="Shown in results, logs and metrics; defaults to rule-<position>.",
    )
    application_names: tuple[Pattern, ...] = Field(
        min_length=1,
        description="Glob patterns (fnmatch, case-sensitive) on application_name, e.g. 'lambda:*'.",
    )
    users: tuple[Pattern, ...] | None = Field(
        default=None, description="Glob patterns on the session's user name; any user if absent."
    )
    databases: tuple[Pattern, ...] | None = Field(
        default=None, description="Glob patterns on the database name; any database if absent."
    )
    client_addresses: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None = Field(
        default=None,
        description="CIDR blocks the client address must fall in; absent means any address, "
        "including Unix-socket sessions (which have none).",
    )
    states: dict[SessionState, Seconds] = Field(
        default_factory=_default_states,
        min_length=1,
        description="Idle threshold in seconds per covered state; idle age is now() - "
        "state_change.",
    )
    keep_newest: int = Field(
        default=0,
        ge=0,
        le=10_000,
        description="Leave this many most recently active sessions in state 'idle' of each "
        "application alone: warm functions will reuse them.",
    )
    learned: LearnedThresholds | None = Field(
        default=None,
        description="Use thresholds learned per application from how its idle sessions were "
        "reused, within these bounds, once enough was seen; absent: the static states only.",
    )

    @field_validator("client_addresses", mode="before")
    @classmethod
    def _strict_networks(cls, value: Any) -> Any:
        # ip_network(strict=True) refuses "10.0.0.1/8": host bits set usually means a typo.
        if isinstance(value, list | tuple):
            return tuple(
                ipaddress.ip_network(v, strict=True) if isinstance(v, str) else v for v in value
            )
        return value


class Exclusions(_Document):
    """Sessions never terminated, whatever rule matches them."""

    users: tuple[Pattern, ...] = Field(
        default=ALWAYS_EXCLUDED_USERS,
        description="Glob patterns on user names; 'rdsadmin' is always included.",
    )
    application_names: tuple[Pattern, ...] = Field(
        default=(), description="Glob patterns on application_name."
    )

    @field_validator("users")
    @classmethod
    def _keep_always_excluded(cls, users: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*ALWAYS_EXCLUDED_USERS, *users)))


class Policy(_Document):
    """The whole policy document."""

    version: Literal[1] = Field(default=1, description="Schema version of this document.")
    rules: tuple[Rule, ...] = Field(
        description="Checked in order; a session is governed by the first rule that matches "
        "its application, user, database and address and covers its state."
    )
    exclude: Exclusions = Field(default_factory=Exclusions)
    terminate_superuser_sessions: bool = Field(
        default=False,
        description="Superuser sessions are spared unless this is true (and the reaper's role "
        "is itself a superuser).",
    )
    spare_listeners: bool = Field(
        default=True,
        description="Spare idle sessions whose last statement was LISTEN: they are waiting for "
        "notifications.",
    )
    max_terminations: int = Field(
        default=DEFAULT_MAX_TERMINATIONS,
        ge=0,
        le=100_000,
        description="At most this many terminations per pass, oldest idle first.",
    )
    dry_run: bool = Field(default=False, description="Plan and report, terminate nothing.")
    min_utilization: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Act only while client connections / usable max_connections is at or "
        "above this.",
    )
    target_utilization: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Terminate only as many sessions as bring utilization down to this.",
    )
    allow_short_thresholds: bool = Field(
        default=False,
        description=f"Accept thresholds below {THRESHOLD_FLOOR_SECONDS:g} seconds.",
    )

    @field_validator("rules")
    @classmethod
    def _name_rules(cls, rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
        if not rules:
            raise ValueError("at least one rule is required")
        named = tuple(
            rule if rule.name else rule.model_copy(update={"name": f"rule-{position}"})
            for position, rule in enumerate(rules, start=1)
        )
        require_unique_names((rule.name for rule in named), what="rule")
        return named

    @model_validator(mode="after")
    def _check_threshold_floor(self) -> Policy:
        if self.allow_short_thresholds:
            return self
        for index, rule in enumerate(self.rules):
            for state, seconds in rule.states.items():
                if seconds < THRESHOLD_FLOOR_SECONDS:
                    raise ValueError(
                        f"rules[{index}].states.{state!r} = {seconds:g} seconds is below the "
                        f"floor of {THRESHOLD_FLOOR_SECONDS:g} seconds; set "
                        "allow_short_thresholds: true (CLI: --allow-short-thresholds) if that is "
                        "really meant"
                    )
        return self

    @model_validator(mode="after")
    def _check_learned_floor(self) -> Policy:
        # A learned threshold can go as low as min_seconds: the same floor as a static one.
        if self.allow_short_thresholds:
            return self
        for index, rule in enumerate(self.rules):
            if rule.learned is not None and rule.learned.min_seconds < THRESHOLD_FLOOR_SECONDS:
                raise ValueError(
                    f"rules[{index}].learned.min_seconds = {rule.learned.min_seconds:g} seconds "
                    f"is below the floor of {THRESHOLD_FLOOR_SECONDS:g} seconds; set "
                    "allow_short_thresholds: true if that is really meant"
                )
        return self

    @property
    def learns(self) -> bool:
        """Whether any rule asks for learned thresholds (then a pass keeps a history)."""
        return any(rule.learned is not None for rule in self.rules)


def parse_policy(text: str | bytes, *, source: str) -> Policy:
    """Parse and validate a JSON policy document.

    Args:
        text: the document.
        source: where it came from (a file path, an SSM parameter name), for the error message.

    Raises:
        PolicyError: naming the source, each bad field and its value.
    """
    try:
        return Policy.model_validate_json(text)
    except ValidationError as exc:
        raise PolicyError(f"invalid policy in {source}: {describe_validation_error(exc)}") from exc


def policy_from_mapping(document: Any, *, source: str) -> Policy:
    """Validate an already-decoded policy document (a dict); see parse_policy."""
    try:
        return Policy.model_validate(document)
    except ValidationError as exc:
        raise PolicyError(f"invalid policy in {source}: {describe_validation_error(exc)}") from exc


def one_rule_policy(
    application_names: Sequence[str],
    *,
    idle_seconds: float,
    source: str,
    states: Sequence[str] = ("idle",),
    rule_name: str = "cli",
    keep_newest: int = 0,
    **settings: Any,
) -> Policy:
    """The policy of one rule: these applications, idle in these states past `idle_seconds`.

    The shape `reaper run --application-name GLOB --idle-seconds N` builds; the demo, the bench
    and the tests build theirs here too. `settings` are further top-level fields
    (`max_terminations`, `allow_short_thresholds`, `dry_run`, ...), validated like a document.

    Raises:
        PolicyError: naming `source` and each bad field.
    """
    rule = {
        "name": rule_name,
        "application_names": list(application_names),
        "states": dict.fromkeys(states, idle_seconds),
        "keep_newest": keep_newest,
    }
    return policy_from_mapping({"rules": [rule], **settings}, source=source)


def policy_schema() -> dict[str, Any]:
    """The JSON Schema of the policy document, for editors and hand-written SSM parameters."""
    schema = Policy.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "idle-reaper policy"
    return schema


def render_policy(policy: Policy) -> str:
    """The normalised document: defaults filled in, rules named, as stable indented JSON."""
    return json.dumps(policy.model_dump(mode="json"), indent=2)
