"""The policy document: which sessions the reaper may terminate, and when.

One JSON document, the same schema on the command line (`--policy FILE`), in SSM Parameter Store
and in `reaper policy schema`. Pure validation, no I/O: callers read the text and hand it here.

Read one way only: a duplicated key, a value of another type than the field's ("yes" or 1 for
true, "900" for 900), a pattern PostgreSQL can never show, or a document beyond its limits is
refused with the reason, never coerced: the reaper acts on production databases, and a policy
that means one thing to its reviewer and another to the reaper terminates the wrong sessions.
"""

from __future__ import annotations

import ipaddress
import json
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from reaper.core.validation import (
    JsonDocumentError,
    describe_validation_error,
    parse_json,
    require_unique_names,
)
from reaper.errors import PolicyError

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

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

# The longest name pg_stat_activity shows: the server cuts every name (application_name, role,
# database) to NAMEDATALEN - 1 bytes.
MAX_NAME_BYTES = 63

# Limits on the document, which bound the work of every pass. 64 KiB is eight times the largest
# SSM parameter (8 KB, advanced tier; 4 KB standard), so no policy SSM can hold is refused; the
# costliest document within it (8,400 '*x*' patterns) planned 3,000 sessions in 2.3 s on two
# cores. 200 rules and 100 patterns per list are far beyond a hand-written policy: a longer one
# is generated, and its generator is better told than obeyed.
MAX_POLICY_BYTES = 64 * 1024
MAX_RULES = 200
MAX_LIST_ITEMS = 100


def _fits_a_name(pattern: str) -> str:
    size = len(pattern.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        raise ValueError(
            f"the pattern is {size} bytes, but PostgreSQL cuts names to {MAX_NAME_BYTES} bytes, "
            "so no name in pg_stat_activity can match it; use its first "
            f"{MAX_NAME_BYTES} bytes (the name as pg_stat_activity shows it)"
        )
    return pattern


def _printable_ascii(pattern: str) -> str:
    # application_name alone is rewritten by the server: every byte outside printable ASCII
    # becomes '?' (PostgreSQL 15 and older) or a '\xNN' escape (16 and later). Role and
    # database names are kept as created, so their patterns may hold any character.
    rewritten = next((char for char in pattern if not " " <= char <= "~"), None)
    if rewritten is not None:
        raise ValueError(
            f"the pattern holds {rewritten!r}, and PostgreSQL rewrites every character of "
            "application_name outside printable ASCII ('?' up to 15, '\\xNN' from 16), so "
            "it can never match; put '*' in its place"
        )
    return pattern


# A glob (fnmatch, case-sensitive) on a role or database name, as pg_stat_activity shows it.
NamePattern = Annotated[
    str,
    Field(min_length=1, json_schema_extra={"maxLength": MAX_NAME_BYTES}),
    AfterValidator(_fits_a_name),
]
# A glob on application_name: printable ASCII only, as pg_stat_activity shows it.
ApplicationPattern = Annotated[
    str,
    # The schema says what the validators check, for editors; the validators give the reason.
    Field(min_length=1, json_schema_extra={"maxLength": MAX_NAME_BYTES, "pattern": "^[ -~]+$"}),
    AfterValidator(_printable_ascii),
    AfterValidator(_fits_a_name),
]
Seconds = Annotated[float, Field(gt=0, le=MAX_IDLE_SECONDS)]
# A share of the usable connection slots (client connections / usable max_connections).
Utilization = Annotated[float, Field(ge=0.0, le=1.0)]


def _strict_network(value: Any) -> Any:
    # ip_network(strict=True) refuses "10.0.0.1/8": host bits set usually means a typo, and a
    # typo in a block that selects or spares sessions must not silently widen or narrow it.
    # Only strings: ip_network(167772160) would read a number as 10.0.0.0/32.
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a CIDR block as a string, such as '10.0.0.0/8'")
    return ipaddress.ip_network(value, strict=True)


# A CIDR block, as rules and exclusions both take it.
Network = Annotated[ipaddress.IPv4Network | ipaddress.IPv6Network, BeforeValidator(_strict_network)]

_Item = TypeVar("_Item")
# A list of patterns or blocks in a rule or the exclusions: a JSON array of at most
# MAX_LIST_ITEMS, read as a tuple (strict=False for the container only: its items stay strict).
Listed = Annotated[tuple[_Item, ...], Field(max_length=MAX_LIST_ITEMS, strict=False)]


def _default_states() -> dict[SessionState, float]:
    return {"idle": DEFAULT_IDLE_SECONDS}


# The defaults of a rule's `learned` bounds: the longest learned threshold is an hour, since a
# warm Lambda environment is rarely kept longer; 20 idle periods before trusting what was seen.
DEFAULT_LEARNED_MAX_SECONDS = 3600.0
DEFAULT_MIN_OBSERVATIONS = 20


class _Document(BaseModel):
    # Unknown keys are refused: a misspelt "max_terminatons" must not silently fall back to a
    # default on a production database. Strict: no value changes type ("yes" or 1 for true,
    # true for 1, "900" for 900, a number for a network), except an integer where seconds or a
    # fraction are asked for. Lists are declared strict=False for the container only (a JSON
    # array becomes a tuple; `Listed` says so for the patterns and blocks); their items stay
    # strict.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


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


def _name_patterns(subject: str, name: str) -> Any:
    """An optional list of glob patterns on a role's or a database's name, matching any when
    absent (PostgreSQL keeps these names as created: any character, at most 63 bytes)."""
    return Field(
        default=None,
        description=f"Glob patterns on {subject} (at most 63 bytes in UTF-8); any {name} if "
        "absent.",
    )


class Rule(_Document):
    """Sessions a rule covers, and how long each state may stay idle before termination."""

    name: str = Field(
        default="",
        max_length=100,
        description="Shown in results, logs and metrics; defaults to rule-<position>.",
    )
    application_names: Listed[ApplicationPattern] = Field(
        min_length=1,
        description="Glob patterns (fnmatch, case-sensitive) on application_name, e.g. "
        "'lambda:*'; printable ASCII, at most 63 bytes.",
    )
    users: Listed[NamePattern] | None = _name_patterns("the session's user name", "user")
    databases: Listed[NamePattern] | None = _name_patterns("the database name", "database")
    client_addresses: Listed[Network] | None = Field(
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


class Exclusions(_Document):
    """Sessions never terminated, whatever rule matches them."""

    users: Listed[NamePattern] = Field(
        default=ALWAYS_EXCLUDED_USERS,
        description="Glob patterns on user names (at most 63 bytes in UTF-8); 'rdsadmin' is "
        "always included.",
    )
    application_names: Listed[ApplicationPattern] = Field(
        default=(),
        description="Glob patterns on application_name; printable ASCII, at most 63 bytes.",
    )
    client_addresses: Listed[Network] = Field(
        default=(),
        description="CIDR blocks, e.g. a connection pooler's address: sessions whose client "
        "address falls in one are never terminated. Unix-socket sessions have no address and "
        "are not covered.",
    )

    @field_validator("users")
    @classmethod
    def _keep_always_excluded(cls, users: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*ALWAYS_EXCLUDED_USERS, *users)))


class Policy(_Document):
    """The whole policy document."""

    version: Literal[1] = Field(default=1, description="Schema version of this document.")
    rules: tuple[Rule, ...] = Field(
        max_length=MAX_RULES,
        strict=False,
        description="Checked in order; a session is governed by the first rule that matches "
        "its application, user, database and address and covers its state.",
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
    min_utilization: Utilization = Field(
        default=0.0,
        description="Act only while client connections / usable max_connections is at or "
        "above this.",
    )
    target_utilization: Utilization | None = Field(
        default=None,
        description="Terminate only as many sessions as bring utilization down to this.",
    )
    allow_short_thresholds: bool = Field(
        default=False,
        description=f"Accept thresholds below {THRESHOLD_FLOOR_SECONDS:g} seconds.",
    )

    @field_validator("version", mode="before")
    @classmethod
    def _version_is_a_number(cls, value: Any) -> Any:
        # Literal[1] alone takes true, which equals 1 in Python.
        if isinstance(value, bool):
            raise ValueError("Input should be the number 1")
        return value

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
        for path, seconds in self._thresholds():
            if seconds < THRESHOLD_FLOOR_SECONDS:
                raise ValueError(
                    f"{path} = {seconds:g} seconds is below the floor of "
                    f"{THRESHOLD_FLOOR_SECONDS:g} seconds; set allow_short_thresholds: true "
                    "(CLI: --allow-short-thresholds) if that is really meant"
                )
        return self

    def _thresholds(self) -> Iterator[tuple[str, float]]:
        """Every threshold the policy states, with its path in the document: each state's, and
        each learned minimum (a learned threshold can go as low as that: the same floor)."""
        for index, rule in enumerate(self.rules):
            for state, seconds in rule.states.items():
                yield f"rules[{index}].states.{state!r}", seconds
            if rule.learned is not None:
                yield f"rules[{index}].learned.min_seconds", rule.learned.min_seconds

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
        PolicyError: naming the source, each bad field and its value, a duplicated key and its
            path, or the size limit (MAX_POLICY_BYTES).
    """
    try:
        document = parse_json(text, max_bytes=MAX_POLICY_BYTES)
    except JsonDocumentError as exc:
        raise PolicyError(f"invalid policy in {source}: {exc}") from exc
    return policy_from_mapping(document, source=source)


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
