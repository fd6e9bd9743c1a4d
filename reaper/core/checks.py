"""The doctor's checks: plain facts about the reaper's role and server -> one verdict each.

Pure: the facts (`core.setup_facts.SetupFacts`) are read elsewhere and passed in; each check
says ok, warn or fail, what it saw and, unless it is ok, the fix. The remedies for a full
database come from `core.full_database`, so the login error and the doctor word them alike.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from reaper.core.full_database import (
    RECOMMENDED_ROLE_CONNECTION_LIMIT,
    RESERVED_WAY_IN_DOC,
    connection_limits_fix,
    reserved_slots_fix,
)
from reaper.core.planning import Reason, plan
from reaper.core.snapshot import CLIENT_BACKEND
from reaper.core.versions import NEWEST_MAJOR, OLDEST_MAJOR

if TYPE_CHECKING:
    from collections.abc import Mapping

    from reaper.core.planning import Plan
    from reaper.core.policy import Policy
    from reaper.core.reuse import GroupKey, ReuseStats
    from reaper.core.setup_facts import SetupFacts
    from reaper.core.snapshot import Snapshot

# Below this, a scheduled pass and a pass run by a person at the same time cannot both log in.
MIN_ROLE_CONNECTION_LIMIT = 2
CLIENT_SIDE_DOC = "docs/client-side.md"
# How many names a check lists before it says "and N more".
MAX_LISTED = 8


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
class DoctorReport:
    """Every check on one target."""

    target: str
    checks: tuple[Check, ...]

    @classmethod
    def unreachable(cls, target: str, message: str) -> DoctorReport:
        """The report on a target the reaper could not log in to, or check to the end: one
        failed connection check saying why."""
        return cls(
            target, (Check("connection", Status.FAIL, message + " (nothing else was checked)"),)
        )

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


def policy_checks(
    snapshot: Snapshot, policy: Policy, reuse: Mapping[GroupKey, ReuseStats] | None = None
) -> tuple[Check, ...]:
    """What the policy would do to the sessions of this snapshot, and what it cannot see; with
    rules that learn, the thresholds `reuse` (a history's statistics, None: no history) gives."""
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
    decided = plan(snapshot, policy, reuse)
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
    checks: tuple[Check, ...] = (
        Check("policy", Status.OK, summary),
        _unnamed_sessions(unnamed),
        _uncovered_applications(unmatched),
    )
    if policy.learns:
        checks += (_learned_thresholds(decided, has_history=reuse is not None),)
    return checks


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


def _learned_thresholds(decided: Plan, *, has_history: bool) -> Check:
    """Which applications of the sessions now are held to a learned threshold, and why not."""
    fix = (
        "keep a history: the function does in its memory; on the command line "
        "`reaper run --history FILE`, or `reaper observe` first"
    )
    if not has_history:
        return Check(
            "learned thresholds",
            Status.WARN,
            "no reuse history: every rule holds sessions to its static thresholds until enough "
            "idle periods are seen",
            fix,
        )
    by_group = {
        (d.session.application_name, d.session.state): d
        for d in decided.decisions
        if d.learned is not None
    }
    learned = [(group, d) for group, d in by_group.items() if d.threshold_source == "learned"]
    static = [(group, d) for group, d in by_group.items() if d.threshold_source == "static"]
    described = [
        f"{application or '(none)'} {state}: {d.threshold_seconds:g}s ({d.learned.why()})"
        for (application, state), d in [*learned, *static][:MAX_LISTED]
        if d.learned is not None
    ]
    if len(by_group) > MAX_LISTED:
        described.append(f"and {len(by_group) - MAX_LISTED} more")
    summary = f"learned for {len(learned)} of {len(by_group)} application(s) with sessions now" + (
        ": " + "; ".join(described) if described else ""
    )
    if static and not learned:
        return Check("learned thresholds", Status.WARN, summary, fix)
    return Check("learned thresholds", Status.OK, summary)
