"""`reaper doctor`'s decisions: plain facts about the reaper's role and server -> checks.

Pure: the facts are read elsewhere (reaper.pg) and passed in; each check says ok, warn or fail,
what it saw and, unless it is ok, the fix. The fixes for a full database live here too, so the
login error and the doctor name the same remedy in the same words.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from reaper.core.planning import Reason, plan
from reaper.core.snapshot import CLIENT_BACKEND

if TYPE_CHECKING:
    from reaper.core.policy import Policy
    from reaper.core.snapshot import Snapshot

# The majors the project is tested on (README).
OLDEST_MAJOR = 13
NEWEST_MAJOR = 18
# reserved_connections and the pg_use_reserved_connections role exist from this major.
RESERVED_CONNECTIONS_MAJOR = 16
# One reaper connection per pass; a second one for a person running `reaper doctor` or `run`
# while the scheduled pass is on; a third for slack.
RECOMMENDED_ROLE_CONNECTION_LIMIT = 3
# Below this, a scheduled pass and a pass run by a person at the same time cannot both log in.
MIN_ROLE_CONNECTION_LIMIT = 2
RESERVED_WAY_IN_DOC = "docs/database-role.md#a-reserved-way-in"
CLIENT_SIDE_DOC = "docs/client-side.md"
# How many names a check lists before it says "and N more".
MAX_LISTED = 8

# The causes of SQLSTATE 53300 (too_many_connections) at login.
CAUSE_SERVER = "server"
CAUSE_ROLE = "role"
CAUSE_DATABASE = "database"


class Status(StrEnum):
    """A check's verdict; only `fail` makes `reaper doctor` exit non-zero."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the doctor's report."""

    name: str
    status: Status
    summary: str
    fix: str | None = None


@dataclass(frozen=True, slots=True)
class SetupFacts:
    """What the reaper's own connection found out about its role and the server."""

    role: str
    server_version_num: int
    is_superuser: bool
    # Member of RDS's rds_superuser (False where that role does not exist).
    is_rds_superuser: bool
    # pg_read_all_stats (through pg_monitor): sees other roles' session states.
    sees_all_sessions: bool
    # pg_signal_backend: may terminate other (non-superuser) roles' sessions.
    may_signal_others: bool
    # pg_use_reserved_connections; None before PostgreSQL 16, where it does not exist.
    may_use_reserved_connections: bool | None
    max_connections: int
    superuser_reserved_connections: int
    reserved_connections: int
    # The role's own CONNECTION LIMIT; -1 for none.
    role_connection_limit: int
    # statement_timeout set on the role (ALTER ROLE ... SET), None when not set.
    role_statement_timeout: str | None
    # Other login roles, neither superusers nor managed by RDS, without a CONNECTION LIMIT.
    uncapped_login_roles: tuple[str, ...]
    # The sum of the CONNECTION LIMITs of the other login roles that have one.
    capped_login_connections: int
    # The libpq sslmode of the connection, and the TLS version in use (None: no TLS).
    sslmode: str
    tls_version: str | None

    @property
    def major(self) -> int:
        """The server's major version."""
        return self.server_version_num // 10_000

    @property
    def usable_connections(self) -> int:
        """Slots for roles that may not use any reserve."""
        return (
            self.max_connections - self.superuser_reserved_connections - self.reserved_connections
        )


@dataclass(frozen=True, slots=True)
class DoctorReport:
    """Every check on one target."""

    target: str
    checks: tuple[Check, ...]

    @property
    def status(self) -> Status:
        """The worst status among the checks."""
        statuses = {check.status for check in self.checks}
        for status in (Status.FAIL, Status.WARN):
            if status in statuses:
                return status
        return Status.OK

    @property
    def failed(self) -> bool:
        """True when at least one check failed."""
        return self.status is Status.FAIL

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the target, the overall status and every check."""
        return {
            "target": self.target,
            "status": self.status.value,
            "checks": [{**asdict(check), "status": check.status.value} for check in self.checks],
        }


def full_database_fix(cause: str, role: str | None, *, reserve_major: int | None = None) -> str:
    """The remedy for a login refused with SQLSTATE 53300, for each cause.

    The server's major cannot be asked before login; `reserve_major` is what the refusal itself
    told (16 when it named the 16+ reserve, 15 when only a superuser reserve exists), else None,
    and a full server then gets both remedies.
    """
    who = role or "the reaper's role"
    if cause == CAUSE_ROLE:
        return (
            f"{who} is at its own CONNECTION LIMIT: another reaper or a stuck pass holds its "
            f"connections (look for usename = '{who}' in pg_stat_activity), or raise it: "
            f"ALTER ROLE {who} CONNECTION LIMIT {RECOMMENDED_ROLE_CONNECTION_LIMIT}"
        )
    if cause == CAUSE_DATABASE:
        return (
            "the database is at its own CONNECTION LIMIT: point the reaper at another database "
            "of the cluster (pg_stat_activity covers them all), or raise ALTER DATABASE ... "
            "CONNECTION LIMIT"
        )
    if reserve_major is None:
        return (
            f"{reserved_slots_fix(who)}; on PostgreSQL 15 and older, {connection_limits_fix()}. "
            f"See {RESERVED_WAY_IN_DOC}"
        )
    if reserve_major >= RESERVED_CONNECTIONS_MAJOR:
        return f"{reserved_slots_fix(who)}. See {RESERVED_WAY_IN_DOC}"
    return (
        "this server (PostgreSQL 15 or older) keeps no slots for non-superusers, so "
        f"{connection_limits_fix()}; PostgreSQL 16 adds reserved_connections. "
        f"See {RESERVED_WAY_IN_DOC}"
    )


def reserved_slots_fix(role: str) -> str:
    """The 16+ remedy: a reserve the reaper's role may use."""
    return (
        "on PostgreSQL 16 and later, set reserved_connections (for example 3; it needs a "
        f"restart) and GRANT pg_use_reserved_connections TO {role}"
    )


def connection_limits_fix() -> str:
    """The remedy before 16, which has no reserve for non-superusers."""
    return (
        "cap every application role with ALTER ROLE ... CONNECTION LIMIT so that together they "
        "leave slots free, and let the reaper act before the limit (min_utilization, and an "
        "alarm below 100%)"
    )


def unreachable_check(message: str) -> Check:
    """The connection check of a target the reaper could not log in to."""
    return Check("connection", Status.FAIL, message + " (nothing else was checked)")


def setup_checks(facts: SetupFacts) -> tuple[Check, ...]:
    """The checks of the role and server, in the order the report shows them."""
    return (
        _connection(facts),
        _server_version(facts),
        _sees_sessions(facts),
        _signals_others(facts),
        _reserved_way_in(facts),
        _not_superuser(facts),
        _statement_timeout(facts),
        _connection_limit(facts),
    )


def policy_checks(snapshot: Snapshot, policy: Policy) -> tuple[Check, ...]:
    """What the policy would do to the sessions of this snapshot, and what it cannot see."""
    hidden = snapshot.hidden_sessions
    if hidden:
        return (
            Check(
                "policy",
                Status.FAIL,
                f"not evaluated: role {snapshot.role} cannot see the state of {len(hidden)} "
                "session(s)",
                f"GRANT pg_monitor TO {snapshot.role}",
            ),
        )
    decided = plan(snapshot, policy)
    clients = snapshot.connections.client_connections
    summary = f"would terminate {len(decided.to_terminate)} of {clients} client session(s) now"
    if not decided.gate_open:
        summary += (
            f" (the pressure gate is closed: utilization "
            f"{snapshot.connections.utilization_before:.0%} is below "
            f"min_utilization {policy.min_utilization:.0%})"
        )
    if policy.dry_run:
        summary += "; the policy is in dry run, so it would only report them"
    unmatched = Counter(
        decision.session.application_name
        for decision in decided.decisions
        if decision.reason is Reason.NO_RULE_MATCHES
        and decision.session.backend_type == CLIENT_BACKEND
        and (decision.session.state or "").startswith("idle")
    )
    unnamed = unmatched.pop("", 0)
    return (
        Check("policy", Status.OK, summary),
        _unnamed_sessions(unnamed),
        _uncovered_applications(unmatched),
    )


def _connection(facts: SetupFacts) -> Check:
    if facts.tls_version is None:
        return Check(
            "connection",
            Status.WARN,
            f"connected without TLS (sslmode={facts.sslmode})",
            "sslmode=require, or verify-full with the server's CA bundle "
            "(docs/deploying.md#tls-verification)",
        )
    verified = facts.sslmode in ("verify-ca", "verify-full")
    return Check(
        "connection",
        Status.OK,
        f"{facts.tls_version}, certificate "
        + ("verified" if verified else "not verified")
        + f" (sslmode={facts.sslmode})",
    )


def _server_version(facts: SetupFacts) -> Check:
    major = facts.major
    summary = f"PostgreSQL {major} (server_version_num {facts.server_version_num})"
    if major < OLDEST_MAJOR:
        return Check(
            "server version",
            Status.FAIL,
            summary + f"; the reaper supports {OLDEST_MAJOR} to {NEWEST_MAJOR}",
            "upgrade the server",
        )
    if major > NEWEST_MAJOR:
        return Check(
            "server version",
            Status.WARN,
            summary + f"; tested on {OLDEST_MAJOR} to {NEWEST_MAJOR} only",
            "run the reaper in dry run first",
        )
    return Check("server version", Status.OK, summary)


def _sees_sessions(facts: SetupFacts) -> Check:
    if facts.sees_all_sessions:
        return Check("sees sessions", Status.OK, f"{facts.role} sees every session's state")
    return Check(
        "sees sessions",
        Status.FAIL,
        f"{facts.role} lacks pg_monitor: other roles' sessions show no state, so the reaper "
        "refuses to act",
        f"GRANT pg_monitor TO {facts.role}",
    )


def _signals_others(facts: SetupFacts) -> Check:
    if facts.may_signal_others:
        return Check(
            "signals others", Status.OK, f"{facts.role} may terminate other roles' sessions"
        )
    return Check(
        "signals others",
        Status.FAIL,
        f"{facts.role} lacks pg_signal_backend: terminations of other roles' sessions would be "
        "refused",
        f"GRANT pg_signal_backend TO {facts.role}",
    )


def _reserved_way_in(facts: SetupFacts) -> Check:
    name = "reserved way in"
    role = facts.role
    if facts.is_superuser:
        return Check(
            name,
            Status.OK,
            f"a superuser logs in through superuser_reserved_connections "
            f"({facts.superuser_reserved_connections})",
        )
    reserved = facts.reserved_connections
    if facts.may_use_reserved_connections is None:
        return _connection_limits(facts)
    if facts.may_use_reserved_connections and reserved > 0:
        return Check(
            name,
            Status.OK,
            f"{reserved} reserved slot(s) (reserved_connections), and {role} may use them",
        )
    if reserved > 0:
        return Check(
            name,
            Status.FAIL,
            f"{reserved} reserved slot(s), but {role} lacks pg_use_reserved_connections: a full "
            "database refuses its login",
            f"GRANT pg_use_reserved_connections TO {role}",
        )
    if facts.may_use_reserved_connections:
        return Check(
            name,
            Status.WARN,
            f"{role} holds pg_use_reserved_connections, but the server reserves no slots "
            "(reserved_connections = 0): a full database refuses its login",
            "set reserved_connections (for example 3; it needs a restart); " + RESERVED_WAY_IN_DOC,
        )
    return Check(
        name,
        Status.WARN,
        "no reserved slots (reserved_connections = 0) and no pg_use_reserved_connections: a "
        f"full database refuses {role}'s login",
        reserved_slots_fix(role) + "; " + RESERVED_WAY_IN_DOC,
    )


def _connection_limits(facts: SetupFacts) -> Check:
    name = "reserved way in"
    usable = facts.usable_connections
    uncapped = facts.uncapped_login_roles
    if uncapped:
        listed = ", ".join(uncapped[:MAX_LISTED])
        if len(uncapped) > MAX_LISTED:
            listed += f" and {len(uncapped) - MAX_LISTED} more"
        return Check(
            name,
            Status.WARN,
            f"PostgreSQL {facts.major} has no reserve for non-superusers, and these login roles "
            f"have no CONNECTION LIMIT: {listed}",
            f"{connection_limits_fix()}; {usable} slots are usable; {RESERVED_WAY_IN_DOC}",
        )
    if facts.capped_login_connections >= usable:
        return Check(
            name,
            Status.WARN,
            f"the other login roles' CONNECTION LIMITs add up to "
            f"{facts.capped_login_connections}, which leaves none of the {usable} usable slots "
            "for the reaper",
            f"lower them; {RESERVED_WAY_IN_DOC}",
        )
    return Check(
        name,
        Status.OK,
        f"the other login roles' CONNECTION LIMITs add up to {facts.capped_login_connections} "
        f"of {usable} usable slots",
    )


def _not_superuser(facts: SetupFacts) -> Check:
    if facts.is_superuser or facts.is_rds_superuser:
        kind = "a superuser" if facts.is_superuser else "a member of rds_superuser"
        return Check(
            "least privilege",
            Status.WARN,
            f"{facts.role} is {kind}: it needs only pg_monitor and pg_signal_backend (and "
            "pg_use_reserved_connections)",
            "create the least-privilege role of docs/database-role.md and use it",
        )
    return Check("least privilege", Status.OK, f"{facts.role} is not a superuser")


def _statement_timeout(facts: SetupFacts) -> Check:
    if facts.role_statement_timeout is not None:
        return Check(
            "statement timeout",
            Status.OK,
            f"statement_timeout = {facts.role_statement_timeout} on {facts.role}",
        )
    return Check(
        "statement timeout",
        Status.WARN,
        f"no statement_timeout on {facts.role}: the reaper sets its own per connection, but "
        "nothing bounds another client logging in as it",
        f"ALTER ROLE {facts.role} SET statement_timeout = '30s'",
    )


def _connection_limit(facts: SetupFacts) -> Check:
    limit = facts.role_connection_limit
    fix = f"ALTER ROLE {facts.role} CONNECTION LIMIT {RECOMMENDED_ROLE_CONNECTION_LIMIT}"
    if facts.is_superuser:
        return Check("connection limit", Status.OK, "superusers are not held to a limit")
    if limit < 0:
        return Check(
            "connection limit",
            Status.WARN,
            f"{facts.role} has no CONNECTION LIMIT: a runaway of reapers could take slots",
            fix,
        )
    if limit < MIN_ROLE_CONNECTION_LIMIT:
        return Check(
            "connection limit",
            Status.WARN,
            f"CONNECTION LIMIT {limit} on {facts.role}: a second reaper (a person's `reaper "
            "run` during a scheduled pass) would be refused",
            fix,
        )
    return Check("connection limit", Status.OK, f"CONNECTION LIMIT {limit} on {facts.role}")


def _unnamed_sessions(count: int) -> Check:
    if not count:
        return Check("application names", Status.OK, "every idle session has an application_name")
    return Check(
        "application names",
        Status.WARN,
        f"{count} idle session(s) have an empty application_name: no rule can tell whose they are",
        f"set application_name in every client ({CLIENT_SIDE_DOC})",
    )


def _uncovered_applications(unmatched: Counter[str]) -> Check:
    if not unmatched:
        return Check(
            "rule coverage",
            Status.OK,
            "every idle session's application is covered by a rule or excluded",
        )
    listed = ", ".join(f"{name} ({count})" for name, count in unmatched.most_common(MAX_LISTED))
    if len(unmatched) > MAX_LISTED:
        listed += f" and {len(unmatched) - MAX_LISTED} more"
    return Check(
        "rule coverage",
        Status.WARN,
        f"idle sessions of applications no rule covers: {listed}",
        "add a rule for them, or list them in exclude.application_names to keep them on purpose",
    )
