"""The connection budget: each Lambda function's concurrency against the database's slots. Pure.

A function whose environments each hold `c` connections, capped at `n` concurrent executions,
can hold `n * c` connections at worst. The database is safe from exhaustion only when the sum of
those worst cases, plus the sessions of every other client, stays within the usable slots
(max_connections minus the reserves). A function without reserved concurrency is capped only by
the account's unreserved pool (1,000 executions in a new account), far above any
max_connections: it is unbounded.

The shells read the facts (the snapshot's sessions by application, and from AWS each function's
reserved and provisioned concurrency, the account's pool and the observed peaks) and pass them
here; `plan_budget` returns the worst cases, the verdict and reserves that fit (docs/budget.md).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from reaper.core.checks import Check, Status, listed
from reaper.core.planning import Reason
from reaper.core.sql_text import quote_ident
from reaper.errors import SettingsError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from reaper.core.policy import Policy
    from reaper.core.result import PassResult
    from reaper.core.snapshot import Connections, Snapshot

FUNCTION_PLACEHOLDER = "{function}"
# The convention of docs/client-side.md: each function names its sessions lambda:<its name>.
DEFAULT_NAME_TEMPLATE = f"lambda:{FUNCTION_PLACEHOLDER}"
# The server cuts every name to NAMEDATALEN - 1 bytes (docs/policy.md, the pattern rules): a
# long function name shows cut, and is matched cut.
SHOWN_NAME_BYTES = 63
# A new account's concurrency quota (Lambda's documented default), assumed when the account's
# settings cannot be read; Lambda keeps this many executions unreserved whatever is asked.
DEFAULT_ACCOUNT_LIMIT = 1000
MIN_UNRESERVED = 100
# The share of the usable slots the proposed reserves may fill when the policy names no
# target_utilization: the same 80 % as the utilization alarm's default threshold.
DEFAULT_BUDGET_UTILIZATION = 0.8
DEFAULT_WINDOW_DAYS = 14
# One period covers the whole window; beyond 63 days CloudWatch keeps only hourly data points.
MAX_WINDOW_DAYS = 63
BUDGET_DOC = "docs/budget.md"


class Verdict(StrEnum):
    """Whether the worst case fits the usable slots."""

    FITS = "fits"
    # Every function is capped, but the caps add up to more than the slots.
    OVER = "over"
    # At least one function with sessions on the target has no reserved concurrency.
    UNBOUNDED = "unbounded"
    # The functions could not be listed: nothing is known of the worst case.
    UNKNOWN = "unknown"


class NameTemplate:
    """How a function's sessions are named: `lambda:{function}` by default.

    Raises:
        SettingsError: the template has no `{function}`, more than one, or is not ASCII (the
            server rewrites non-ASCII bytes, so such a name could never match).
    """

    def __init__(self, template: str) -> None:
        if template.count(FUNCTION_PLACEHOLDER) != 1:
            raise SettingsError(
                f"the session name template {template!r} must hold {FUNCTION_PLACEHOLDER} "
                f"exactly once, as in {DEFAULT_NAME_TEMPLATE!r}"
            )
        if not template.isascii():
            raise SettingsError(
                f"the session name template {template!r} is not ASCII: PostgreSQL rewrites "
                "non-ASCII bytes of application_name, so it could never match"
            )
        self.template = template

    def __str__(self) -> str:
        return self.template

    def shown_name(self, function: str) -> str:
        """The application_name pg_stat_activity shows for `function`'s sessions."""
        name = self.template.replace(FUNCTION_PLACEHOLDER, function)
        return name.encode()[:SHOWN_NAME_BYTES].decode("ascii", errors="ignore")

    def map_sessions(self, applications: Mapping[str, int], functions: Iterable[str]) -> SessionMap:
        """Which function holds each application's sessions; the rest are other clients.

        Args:
            applications: client sessions per application_name.
            functions: the names of the functions the account has.
        """
        by_shown: dict[str, list[str]] = {}
        for function in functions:
            by_shown.setdefault(self.shown_name(function), []).append(function)
        mapped: dict[str, int] = {}
        other: dict[str, int] = {}
        ambiguous: list[str] = []
        for application, count in applications.items():
            owners = by_shown.get(application, [])
            if len(owners) == 1:
                mapped[owners[0]] = mapped.get(owners[0], 0) + count
            else:
                other[application] = other.get(application, 0) + count
                if len(owners) > 1:
                    ambiguous.append(
                        f"{application} could be any of {', '.join(sorted(owners))} (names cut "
                        f"to {SHOWN_NAME_BYTES} bytes): counted as another client"
                    )
        return SessionMap(
            dict(sorted(mapped.items())), dict(sorted(other.items())), tuple(ambiguous)
        )


@dataclass(frozen=True, slots=True)
class SessionMap:
    """A target's client sessions: per function, and per application of no function."""

    functions: Mapping[str, int]
    other_applications: Mapping[str, int]
    notes: tuple[str, ...] = ()

    @property
    def other_clients(self) -> int:
        """Sessions of no known function: they take slots too."""
        return sum(self.other_applications.values())


@dataclass(frozen=True, slots=True)
class FunctionConcurrency:
    """What AWS says about one function's concurrency."""

    name: str
    # ReservedConcurrentExecutions; None when the function has no reserve.
    reserved: int | None = None
    # False when the reserve could not be read: the function is then treated as unbounded.
    reserved_read: bool = True
    # Provisioned concurrency over its versions and aliases; None when unknown.
    provisioned: int | None = None
    # The highest ConcurrentExecutions over the window; None without data points.
    peak: int | None = None


@dataclass(frozen=True, slots=True)
class LambdaFacts:
    """Everything the shells read from AWS for one budget, and what they could not read."""

    # False when the functions could not be listed: no session can be mapped then.
    listed: bool
    functions: Mapping[str, FunctionConcurrency] = field(default_factory=dict)
    # The account's concurrency quota and its unreserved part (GetAccountSettings).
    account_limit: int | None = None
    unreserved: int | None = None
    window_days: int = DEFAULT_WINDOW_DAYS
    # One line per fact that could not be read, with AWS's reason.
    unread: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FunctionBudget:
    """One function's worst case on one target, and the reserve proposed for it."""

    name: str
    application_name: str
    sessions: int
    reserved: int | None
    provisioned: int | None
    peak: int | None
    connections_per_environment: int
    # The executions its worst case assumes: its reserve, or the account's unreserved pool.
    cap: int
    unbounded: bool
    worst_case: int
    proposed: int | None = None

    @property
    def proposed_below_peak(self) -> bool:
        """True when the proposed reserve is under the observed peak: it would throttle."""
        return self.proposed is not None and self.peak is not None and self.proposed < self.peak

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values: the fields in their order, then `proposed_below_peak`."""
        return {**asdict(self), "proposed_below_peak": self.proposed_below_peak}


@dataclass(frozen=True, slots=True)
class Budget:
    """The connection budget of one target."""

    target: str
    connections: Connections
    verdict: Verdict
    functions: tuple[FunctionBudget, ...]
    other_applications: Mapping[str, int]
    # The worst case of every function plus the other clients; None when unknown.
    worst_case_connections: int | None
    # The unreserved executions an uncapped function may take, and whether that was read.
    pool: int
    pool_read: bool
    target_utilization: float
    proposal_fits: bool
    window_days: int
    notes: tuple[str, ...] = ()

    @property
    def usable_connections(self) -> int:
        """Slots for ordinary roles (max_connections minus the reserves)."""
        return self.connections.usable_connections

    @property
    def other_clients(self) -> int:
        """Sessions of no known function."""
        return sum(self.other_applications.values())

    @property
    def budget_connections(self) -> int:
        """Slots the proposed reserves may fill (see reserve_slots)."""
        return reserve_slots(self.target_utilization, self.connections, self.other_clients)

    @property
    def utilization(self) -> float | None:
        """The worst case as a fraction of the usable slots; None when unknown."""
        if self.worst_case_connections is None:
            return None
        return self.worst_case_connections / self.usable_connections

    @property
    def unbounded_functions(self) -> tuple[str, ...]:
        """The functions without a (readable) reserve."""
        return tuple(f.name for f in self.functions if f.unbounded)

    @property
    def proposed_connections(self) -> int:
        """What the proposed reserves would hold at worst, other clients included."""
        return self.other_clients + sum(
            (f.proposed or 0) * f.connections_per_environment for f in self.functions
        )

    def commands(self) -> list[str]:
        """The `aws lambda put-function-concurrency` commands that apply the proposal, for the
        functions whose reserve it changes."""
        return [
            "aws lambda put-function-concurrency "
            f"--function-name {f.name} --reserved-concurrent-executions {f.proposed}"
            for f in self.functions
            if f.proposed is not None and f.proposed != f.reserved
        ]

    def to_dict(self) -> dict[str, Any]:
        """The document of `reaper budget --json`."""
        utilization = self.utilization
        return {
            "target": self.target,
            "verdict": self.verdict.value,
            "max_connections": self.connections.max_connections,
            "superuser_reserved_connections": self.connections.superuser_reserved_connections,
            "reserved_connections": self.connections.reserved_connections,
            "usable_connections": self.usable_connections,
            "worst_case_connections": self.worst_case_connections,
            "utilization": None if utilization is None else round(utilization, 4),
            "unbounded_functions": list(self.unbounded_functions),
            "other_clients": self.other_clients,
            "other_applications": dict(self.other_applications),
            "account_pool": {"unreserved": self.pool, "read": self.pool_read},
            "window_days": self.window_days,
            "functions": [f.to_dict() for f in self.functions],
            "proposal": {
                "target_utilization": self.target_utilization,
                "budget_connections": self.budget_connections,
                "connections": self.proposed_connections,
                "fits": self.proposal_fits,
                "commands": self.commands(),
            },
            "notes": list(self.notes),
        }


def budget_utilization(policy: Policy | None) -> float:
    """The share of the usable slots proposed reserves may fill: the policy's
    target_utilization, where the reaper trims to anyway, else DEFAULT_BUDGET_UTILIZATION."""
    if policy is None or policy.target_utilization is None:
        return DEFAULT_BUDGET_UTILIZATION
    return policy.target_utilization


def reserve_slots(target_utilization: float, connections: Connections, other_clients: int) -> int:
    """Slots the proposed reserves may fill: `target_utilization` of the usable slots, less the
    other clients (negative when they alone take more)."""
    return math.floor(target_utilization * connections.usable_connections) - other_clients


def connections_per_environment(sessions: int, peak: int | None) -> int:
    """Connections one environment holds: the sessions seen now over the observed peak of
    concurrent executions, rounded up (the worst case errs high), and at least one.

    Without a peak (no data points in the window) one connection per environment is assumed,
    as docs/client-side.md advises.
    """
    if not peak or peak <= 0:
        return 1
    return max(1, math.ceil(sessions / peak))


def plan_budget(
    target: str,
    connections: Connections,
    sessions: SessionMap,
    facts: LambdaFacts,
    names: NameTemplate,
    *,
    target_utilization: float = DEFAULT_BUDGET_UTILIZATION,
) -> Budget:
    """The worst case of each function with sessions on the target, the verdict, and reserves
    that fit.

    Args:
        target: the target's printable name.
        connections: the target's connection limits (from the snapshot).
        sessions: its client sessions per function and per other application.
        facts: what AWS said (and could not say) about those functions and the account.
        names: the session name template (for the table's application names).
        target_utilization: the share of the usable slots the proposed reserves may fill.
    """
    notes = [*sessions.notes, *facts.unread]
    known_reserves = sum(f.reserved or 0 for f in facts.functions.values())
    pool_read = facts.unreserved is not None
    if facts.unreserved is not None:
        pool = facts.unreserved
    else:
        pool = max(MIN_UNRESERVED, DEFAULT_ACCOUNT_LIMIT - known_reserves)
        notes.append(
            f"the account's unreserved concurrency is unknown: {pool} assumed (a new account's "
            f"quota of {DEFAULT_ACCOUNT_LIMIT}, less the reserves seen)"
        )
    functions = []
    for name, count in sessions.functions.items():
        concurrency = facts.functions.get(name, FunctionConcurrency(name, reserved_read=False))
        per_environment = connections_per_environment(count, concurrency.peak)
        if concurrency.peak is None:
            notes.append(
                f"{name}: no ConcurrentExecutions data in {facts.window_days} days; one "
                "connection per environment assumed"
            )
        unbounded = concurrency.reserved is None
        cap = pool if concurrency.reserved is None else concurrency.reserved
        functions.append(
            FunctionBudget(
                name=name,
                application_name=names.shown_name(name),
                sessions=count,
                reserved=concurrency.reserved,
                provisioned=concurrency.provisioned,
                peak=concurrency.peak,
                connections_per_environment=per_environment,
                cap=cap,
                unbounded=unbounded,
                worst_case=cap * per_environment,
            )
        )
    other_clients = sessions.other_clients
    budget_connections = reserve_slots(target_utilization, connections, other_clients)
    proposed = propose_reserves(functions, budget_connections)
    if proposed is None:
        notes.append(
            f"no reserves fit: {budget_connections} slots are left for the functions at "
            f"target_utilization {target_utilization:.0%}, and each needs at least one "
            "environment (or its provisioned concurrency)"
        )
        planned = tuple(functions)
    else:
        planned = tuple(replace(f, proposed=proposed[f.name]) for f in functions)
    fits = proposed is not None
    verdict, worst = _verdict(facts, planned, other_clients, connections.usable_connections)
    return Budget(
        target=target,
        connections=connections,
        verdict=verdict,
        functions=planned,
        other_applications=sessions.other_applications,
        worst_case_connections=worst,
        pool=pool,
        pool_read=pool_read,
        target_utilization=target_utilization,
        proposal_fits=fits,
        window_days=facts.window_days,
        notes=tuple(notes),
    )


def _verdict(
    facts: LambdaFacts, functions: tuple[FunctionBudget, ...], other_clients: int, usable: int
) -> tuple[Verdict, int | None]:
    if not facts.listed:
        return Verdict.UNKNOWN, None
    capped = sum(f.worst_case for f in functions if not f.unbounded)
    # Uncapped functions share one pool: together they cannot run more than it holds, so the
    # worst of them is the pool filled by the one with the most connections per environment.
    uncapped = max((f.worst_case for f in functions if f.unbounded), default=0)
    worst = capped + uncapped + other_clients
    if any(f.unbounded for f in functions):
        return Verdict.UNBOUNDED, worst
    return (Verdict.FITS if worst <= usable else Verdict.OVER), worst


def propose_reserves(
    functions: Iterable[FunctionBudget], budget_connections: int
) -> dict[str, int] | None:
    """Reserved concurrency for each function such that their worst cases fit the budget.

    Each function first gets what it cannot go below (one environment, or its provisioned
    concurrency, which Lambda requires the reserve to cover); the slots left are shared in
    proportion to the connections each held at its observed peak (a function without data
    weighs as one environment), in whole environments, and what rounding leaves goes to the
    largest remainders. The sum of reserve x connections per environment never exceeds
    `budget_connections`.

    Returns:
        function name -> proposed reserve; None when even the minimums do not fit.
    """
    listed = list(functions)
    minimum = {f.name: max(1, f.provisioned or 0) for f in listed}
    needed = sum(minimum[f.name] * f.connections_per_environment for f in listed)
    if needed > budget_connections:
        return None
    left = budget_connections - needed
    weights = {f.name: max(1, f.peak or 0) * f.connections_per_environment for f in listed}
    total_weight = sum(weights.values())
    proposed = dict(minimum)
    remainders = []
    spent = 0
    for f in listed:
        # Integer arithmetic: share = left * weight / total_weight connections, in environments.
        numerator = left * weights[f.name]
        denominator = total_weight * f.connections_per_environment
        extra, remainder = divmod(numerator, denominator)
        proposed[f.name] += extra
        spent += extra * f.connections_per_environment
        remainders.append((-remainder / denominator, f.name, f.connections_per_environment))
    left -= spent
    for _, name, per_environment in sorted(remainders):
        if per_environment <= left:
            proposed[name] += 1
            left -= per_environment
    return proposed


def sessions_by_application(snapshot: Snapshot) -> Counter[str]:
    """The snapshot's client sessions per application_name, the reaper's own left out."""
    return Counter(session.application_name for session in snapshot.other_clients)


def sessions_by_application_in_result(result: PassResult) -> Counter[str]:
    """The same for the snapshot a pass examined, terminated sessions included."""
    not_clients = (Reason.OWN_BACKEND, Reason.NOT_CLIENT_BACKEND)
    return Counter(r.application_name for r in result.sessions if r.reason not in not_clients)


BUDGET_CHECK = "connection budget"


def snapshot_budget_check(
    snapshot: Snapshot, budget_for: Callable[[Connections, Mapping[str, int]], Budget]
) -> Check:
    """The doctor's budget check of a snapshot: `budget_for(its limits, its sessions by
    application)` judged by `budget_check`, unless the role cannot see every session."""
    hidden = snapshot.hidden_sessions
    if hidden:
        return Check(
            BUDGET_CHECK,
            Status.WARN,
            f"not evaluated: role {snapshot.role} cannot see {len(hidden)} session(s)",
            f"GRANT pg_monitor TO {quote_ident(snapshot.role)}",
        )
    return budget_check(budget_for(snapshot.connections, sessions_by_application(snapshot)))


def budget_check(budget: Budget) -> Check:
    """The doctor's verdict on the budget: ok when the worst case fits, warn otherwise."""
    name = BUDGET_CHECK
    usable = budget.usable_connections
    if budget.verdict is Verdict.UNKNOWN:
        return Check(
            name,
            Status.WARN,
            "not evaluated: " + "; ".join(budget.notes),
            f"allow lambda:ListFunctions (see {BUDGET_DOC})",
        )
    utilization = budget.utilization or 0.0
    summary = (
        f"worst case {budget.worst_case_connections} connections for {usable} usable slots "
        f"({utilization:.0%}) from {len(budget.functions)} function(s) and "
        f"{budget.other_clients} other client session(s)"
    )
    if budget.verdict is Verdict.FITS:
        return Check(name, Status.OK, summary + ": it fits")
    if budget.verdict is Verdict.UNBOUNDED:
        summary += f"; unbounded (no reserved concurrency): {listed(budget.unbounded_functions)}"
    else:
        summary += ": the reserves add up to more than the slots"
    return Check(name, Status.WARN, summary, _proposal_fix(budget))


def _proposal_fix(budget: Budget) -> str:
    if not budget.proposal_fits:
        return (
            f"no reserves fit {budget.budget_connections} slots: lower the other clients' "
            f"sessions, pool through RDS Proxy, or raise max_connections ({BUDGET_DOC})"
        )
    proposed = listed([f"{f.name} {f.proposed}" for f in budget.functions if f.proposed])
    return (
        f"reserve concurrency that fits (`reaper budget` prints the commands): {proposed}; "
        f"{BUDGET_DOC}"
    )
