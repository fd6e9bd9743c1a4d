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
from reaper.core.sql_text import quote_ident
from reaper.core.tls import TLS_DOC, is_local_host, verifies_server
from reaper.core.versions import NEWEST_MAJOR, OLDEST_MAJOR

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from reaper.core.planning import Decision, Plan
    from reaper.core.policy import Policy
    from reaper.core.reuse import GroupKey, ReuseStats
    from reaper.core.setup_facts import SetupFacts
    from reaper.core.snapshot import Snapshot

# Below this, a scheduled pass and a pass run by a person at the same time cannot both log in.
MIN_ROLE_CONNECTION_LIMIT = 2
CLIENT_SIDE_DOC = "docs/client-side.md"
POOLERS_DOC = "docs/poolers.md"
# How many names a check lists before it says "and N more".
MAX_LISTED = 8
_TLS_FIX = (
    "verify the server: sslmode=verify-full, the default for secret, IAM and discovered targets "
    "and for a DSN that names no sslmode (the package's RDS CA bundle; another CA with "
    f"REAPER_SSLROOTCERT or the DSN's sslrootcert); {TLS_DOC}"
)


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
        _pass_lock(facts),
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
                f"GRANT pg_monitor TO {quote_ident(snapshot.role)}",
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
        _shared_addresses(decided.decisions),
    )
    if policy.learns:
        checks += (_learned_thresholds(decided, has_history=reuse is not None),)
    return checks


def _connection(facts: SetupFacts) -> Check:
    if facts.tls_version is not None and verifies_server(facts.sslmode):
        return Check(
            "connection",
            Status.OK,
            f"{facts.tls_version} to {facts.host}, certificate verified (sslmode={facts.sslmode})",
        )
    if facts.tls_version is None:
        summary = f"connected to {facts.host} without TLS (sslmode={facts.sslmode})"
    else:
        summary = (
            f"{facts.tls_version} to {facts.host}, certificate not verified "
            f"(sslmode={facts.sslmode})"
        )
    if is_local_host(facts.host):
        # Traffic that stays on this machine: worth fixing, not worth failing a local setup.
        return Check("connection", Status.WARN, summary, _TLS_FIX)
    return Check(
        "connection",
        Status.FAIL,
        summary + ": any server on the path could pose as it and receive the password or token",
        _TLS_FIX,
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
        f"GRANT pg_monitor TO {quote_ident(facts.role)}",
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
        f"GRANT pg_signal_backend TO {quote_ident(facts.role)}",
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
            f"GRANT pg_use_reserved_connections TO {quote_ident(role)}",
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
        reserved_slots_fix(quote_ident(role)) + "; " + RESERVED_WAY_IN_DOC,
    )


def _connection_limits(facts: SetupFacts) -> Check:
    name = "reserved way in"
    usable = facts.usable_connections
    uncapped = facts.uncapped_login_roles
    if uncapped:
        return Check(
            name,
            Status.WARN,
            f"PostgreSQL {facts.major} has no reserve for non-superusers, and these login roles "
            f"have no CONNECTION LIMIT: {listed(uncapped)}",
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


LEAST_PRIVILEGE_FIX = "create the least-privilege role of docs/database-role.md and use it"


def least_privilege_warning(role: str, kind: str) -> str:
    """What is wrong with a reaper whose role is `kind` (a superuser...), and the fix: what
    `reaper run` and the function say at every pass, as `reaper doctor` does."""
    return f"{_more_than_needed(role, kind)}; {LEAST_PRIVILEGE_FIX}"


def _more_than_needed(role: str, kind: str) -> str:
    return (
        f"{role} is {kind}: it needs only pg_monitor and pg_signal_backend (and "
        "pg_use_reserved_connections)"
    )


def _not_superuser(facts: SetupFacts) -> Check:
    if facts.is_superuser or facts.is_rds_superuser:
        kind = "a superuser" if facts.is_superuser else "a member of rds_superuser"
        return Check(
            "least privilege",
            Status.WARN,
            _more_than_needed(facts.role, kind),
            LEAST_PRIVILEGE_FIX,
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
        f"ALTER ROLE {quote_ident(facts.role)} SET statement_timeout = '30s'",
    )


def _connection_limit(facts: SetupFacts) -> Check:
    limit = facts.role_connection_limit
    fix = (
        f"ALTER ROLE {quote_ident(facts.role)} CONNECTION LIMIT {RECOMMENDED_ROLE_CONNECTION_LIMIT}"
    )
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


def _pass_lock(facts: SetupFacts) -> Check:
    lock = facts.pass_lock
    if lock is None or not lock.holders:
        return Check("pass lock", Status.OK, "free: no pass is running on this database")
    if not lock.squatters:
        running = ", ".join(str(holder.pid) for holder in lock.holders)
        return Check(
            "pass lock",
            Status.OK,
            f"held by a pass of the reaper as {lock.own_role}, or one ending (pid {running})",
        )
    return Check(
        "pass lock",
        Status.FAIL,
        f"held by {lock.describe_squatters()}: every pass fails until it lets go",
        lock.fix(),
    )


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
    listed = _counted(unmatched)
    return Check(
        "rule coverage",
        Status.WARN,
        f"idle sessions of applications no rule covers: {listed}",
        "add a rule for them, or list them in exclude.application_names to keep them on purpose",
    )


def _shared_addresses(decisions: Iterable[Decision]) -> Check:
    """Addresses holding sessions a rule matches beside sessions of other applications.

    Behind a pooler (PgBouncer in transaction mode, RDS Proxy) a server connection carries the
    application_name of the client that used it last and goes to any client next, so a rule
    that matches it may terminate a connection another application is about to use. From one
    snapshot a pooler looks like any host that several applications share (a NAT, a bastion),
    so this warns and names them. Several applications the rules all match on one address is
    not warned about: Lambda functions that share subnets and security groups share one
    address too.
    """
    matched: dict[str | None, Counter[str]] = {}
    unmatched: dict[str | None, Counter[str]] = {}
    for decision in decisions:
        session = decision.session
        if session.backend_type != CLIENT_BACKEND or decision.reason is Reason.OWN_BACKEND:
            continue
        side = unmatched if decision.rule is None else matched
        side.setdefault(session.client_addr, Counter())[session.application_name] += 1
    shared = {
        address: others
        for address, names in matched.items()
        if (others := _without(unmatched.get(address, Counter()), names))
    }
    if not shared:
        return Check(
            "shared addresses",
            Status.OK,
            "no address holds both sessions the rules match and other applications' sessions",
        )
    addresses = sorted(shared, key=lambda address: (address is None, address or ""))
    described = [
        f"{_address_label(address)}: {_counted(matched[address])} beside "
        f"{_counted(shared[address])}"
        for address in addresses[:MAX_LISTED]
    ]
    if len(addresses) > MAX_LISTED:
        described.append(f"and {len(addresses) - MAX_LISTED} more addresses")
    fix = (
        "if an address is a connection pooler (PgBouncer, RDS Proxy), list it in "
        "exclude.client_addresses (--exclude-client-address): a connection terminated there "
        "may be the one it hands another client next; if it is a NAT or a shared host, "
        f"nothing needs changing ({POOLERS_DOC})"
    )
    if None in shared:
        fix += (
            "; Unix-socket sessions have no address: give a pooler on the database host its "
            "own login and list it in exclude.users"
        )
    return Check(
        "shared addresses",
        Status.WARN,
        "sessions the rules match share an address with other applications' sessions: "
        + "; ".join(described),
        fix,
    )


def _without(names: Counter[str], matched: Counter[str]) -> Counter[str]:
    """The applications of `names` other than those in `matched`."""
    return Counter({name: count for name, count in names.items() if name not in matched})


def _address_label(address: str | None) -> str:
    return "the Unix socket" if address is None else address


def _counted(names: Counter[str]) -> str:
    """Each as "name (count)", most common first; at most MAX_LISTED of them."""
    return listed(
        [f"{name or '(empty application_name)'} ({count})" for name, count in names.most_common()]
    )


def listed(items: Sequence[str]) -> str:
    """The first MAX_LISTED items, comma-separated, then "and N more" (every check's lists)."""
    listed = ", ".join(items[:MAX_LISTED])
    if len(items) > MAX_LISTED:
        listed += f" and {len(items) - MAX_LISTED} more"
    return listed


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
