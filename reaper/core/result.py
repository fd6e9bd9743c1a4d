"""The result of a pass: one record per examined session, the counts and the connection picture.

Built by a pure function from the snapshot, the plan and the signal outcomes; the CLI renders it,
the handler turns it into metrics and audit lines, and both serialise it with `to_dict()`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from reaper.core.checks import least_privilege_warning
from reaper.core.planning import REFUSAL_REASONS, Reason
from reaper.core.snapshot import SessionIdentity
from reaper.core.sql_text import quote_ident

if TYPE_CHECKING:
    from reaper.core.planning import Plan
    from reaper.core.reuse import LearnedThreshold
    from reaper.core.snapshot import Connections, Snapshot


class Outcome(StrEnum):
    """What finally happened to a session in this pass."""

    TERMINATED = "terminated"
    WOULD_TERMINATE = "would_terminate"  # planned, but the pass was a dry run
    # Wanted, but the reaper's role may not signal it (no pg_signal_backend, or a superuser's).
    REFUSED = "refused"
    # What a real pass would have refused: a dry run, or a pass stopped before terminating.
    WOULD_REFUSE = "would_refuse"
    VANISHED = "vanished"  # planned, but gone or replaced before the signal
    CHANGED = "changed"  # planned, but it ran something since the snapshot: spared
    # Planned, but the pass stopped before its terminate statement: not signalled.
    STOPPED = "stopped"
    # Planned and sent in a terminate statement that failed part way: it may have been
    # terminated (the statement's answer, which would say, never came).
    UNCONFIRMED = "unconfirmed"
    SPARED = "spared"


@dataclass(frozen=True, slots=True)
class SessionRecord(SessionIdentity):
    """One examined session, its decision and what happened to it."""

    idle_seconds: float | None
    rule: str | None
    reason: Reason
    outcome: Outcome
    # The threshold the session was held to, "static" or "learned", and what was learned for
    # its application and state when its rule learns (also while the static one applies).
    threshold_seconds: float | None = None
    threshold_source: str | None = None
    learned: LearnedThreshold | None = None


@dataclass(frozen=True, slots=True)
class Counts:
    """How many sessions ended where; `vanished` and `changed` were planned but not signalled."""

    examined: int = 0
    matched: int = 0
    planned: int = 0
    terminated: int = 0
    would_terminate: int = 0
    refused: int = 0
    would_refuse: int = 0
    vanished: int = 0
    changed: int = 0
    stopped: int = 0
    unconfirmed: int = 0
    skipped_by_cap: int = 0
    skipped_by_target: int = 0
    kept_as_newest: int = 0
    gate_closed: int = 0


# The counts that tally one outcome of the examined sessions, and those that tally one reason
# of the plan: every field of Counts but `examined` and `matched`.
_OUTCOME_COUNTS: dict[str, Outcome] = {
    "terminated": Outcome.TERMINATED,
    "would_terminate": Outcome.WOULD_TERMINATE,
    "refused": Outcome.REFUSED,
    "would_refuse": Outcome.WOULD_REFUSE,
    "vanished": Outcome.VANISHED,
    "changed": Outcome.CHANGED,
    "stopped": Outcome.STOPPED,
    "unconfirmed": Outcome.UNCONFIRMED,
}
_REASON_COUNTS: dict[str, Reason] = {
    "planned": Reason.IDLE_TOO_LONG,
    "skipped_by_cap": Reason.OVER_CAP,
    "skipped_by_target": Reason.OVER_TARGET,
    "kept_as_newest": Reason.KEPT_AS_NEWEST,
    "gate_closed": Reason.GATE_CLOSED,
}


@dataclass(frozen=True, slots=True)
class PassResult:
    """Everything a pass did on one target."""

    target: str
    dry_run: bool
    # Another reaper held the pass lock on this database: nothing was examined.
    skipped: bool
    duration_seconds: float
    gate_open: bool | None = None
    server_version_num: int | None = None
    connections: Connections | None = None
    oldest_idle_seconds: float | None = None
    counts: Counts = field(default_factory=Counts)
    sessions: tuple[SessionRecord, ...] = ()
    # The reaper's role on this target, from the snapshot.
    role: str | None = None
    # Why the pass stopped before it had terminated what it planned; None when it did not.
    stopped_before_terminating: str | None = None
    # What the operator should know about how the pass ran (a superuser reaper).
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (enums as their values)."""
        document = asdict(self)
        if self.connections is not None:
            document["connections"] = self.connections.to_dict()
        return document

    def terminated_by_application(self) -> dict[str, int]:
        """Terminations per application_name."""
        totals: dict[str, int] = {}
        for record in self.sessions:
            if record.outcome is Outcome.TERMINATED:
                totals[record.application_name] = totals.get(record.application_name, 0) + 1
        return totals


@dataclass(frozen=True, slots=True)
class Stop:
    """Why a pass stopped before it had terminated what it planned."""

    reason: str
    # The terminate statement had been sent when the pass stopped: what it signalled is unknown.
    signals_sent: bool = False


def skipped_result(target: str, *, dry_run: bool, duration_seconds: float) -> PassResult:
    """The result of a pass that found another reaper holding the lock."""
    return PassResult(
        target=target, dry_run=dry_run, skipped=True, duration_seconds=duration_seconds
    )


def refusal_fixes(result: PassResult) -> tuple[str, ...]:
    """What makes the refused terminations of `result` possible, or unwanted: one line per
    kind of refusal, none when nothing was refused."""
    refused = [r for r in result.sessions if r.outcome is Outcome.REFUSED]
    superuser_sessions = sum(1 for r in refused if r.reason is Reason.SUPERUSER_NOT_SIGNALLABLE)
    fixes = []
    if len(refused) > superuser_sessions:
        role = "<the reaper's role>" if result.role is None else quote_ident(result.role)
        fixes.append(f"GRANT pg_signal_backend TO {role}")
    if superuser_sessions:
        fixes.append(
            f"{superuser_sessions} refused session(s) belong to a superuser: only a superuser "
            "may terminate them; exclude them in the policy (exclude.users, or "
            "terminate_superuser_sessions: false)"
        )
    return tuple(fixes)


def summarize(
    target: str,
    snapshot: Snapshot,
    plan: Plan,
    signals: dict[int, Outcome],
    *,
    dry_run: bool,
    duration_seconds: float,
    stop: Stop | None = None,
) -> PassResult:
    """Combine the plan and the signal outcomes into the pass result.

    Args:
        signals: the outcome of each planned session the terminate statement answered for.
        stop: why the pass stopped before terminating what it planned; its planned sessions
            are then stopped (not signalled) or unconfirmed (sent in a statement that failed).
    """
    records = []
    for decision in plan.decisions:
        session = decision.session
        if decision.terminate:
            outcome = _planned_outcome(signals.get(session.pid), dry_run=dry_run, stop=stop)
        elif decision.reason in REFUSAL_REASONS:
            # Only a pass that went on to terminate was refused; the others would have been.
            outcome = Outcome.WOULD_REFUSE if dry_run or stop else Outcome.REFUSED
        else:
            outcome = Outcome.SPARED
        records.append(
            SessionRecord(
                **session.identity(),
                idle_seconds=decision.idle_seconds,
                rule=decision.rule,
                reason=decision.reason,
                outcome=outcome,
                threshold_seconds=decision.threshold_seconds,
                threshold_source=decision.threshold_source,
                learned=decision.learned,
            )
        )

    # One pass each over records and decisions (a pass may examine thousands of sessions).
    outcomes = Counter(r.outcome for r in records)
    reasons = Counter(d.reason for d in plan.decisions)

    counts = Counts(
        examined=len(records),
        matched=sum(1 for d in plan.decisions if d.rule is not None),
        **{name: outcomes[outcome] for name, outcome in _OUTCOME_COUNTS.items()},
        **{name: reasons[reason] for name, reason in _REASON_COUNTS.items()},
    )
    idle_ages = [
        age
        for s in snapshot.other_clients
        if (age := s.idle_seconds(snapshot.taken_at)) is not None
    ]
    return PassResult(
        target=target,
        dry_run=dry_run,
        skipped=False,
        duration_seconds=duration_seconds,
        gate_open=plan.gate_open,
        server_version_num=snapshot.server_version_num,
        connections=replace(snapshot.connections, terminated=counts.terminated),
        oldest_idle_seconds=max(idle_ages, default=None),
        counts=counts,
        sessions=tuple(records),
        role=snapshot.role,
        stopped_before_terminating=None if stop is None else stop.reason,
        warnings=(
            (least_privilege_warning(snapshot.role, "a superuser"),)
            if snapshot.role_is_superuser
            else ()
        ),
    )


def _planned_outcome(signalled: Outcome | None, *, dry_run: bool, stop: Stop | None) -> Outcome:
    if dry_run:
        return Outcome.WOULD_TERMINATE
    if signalled is not None:
        return signalled
    # The terminate statement never answered for this session: it was not sent, or failed.
    assert stop is not None, "a planned session of a pass that did not stop has an outcome"
    return Outcome.UNCONFIRMED if stop.signals_sent else Outcome.STOPPED
