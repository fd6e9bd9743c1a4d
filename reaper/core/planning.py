"""The planner: policy + snapshot -> a decision for every session. Pure: no I/O, no clock.

Protections are checked first and in a fixed order, so a protected session can never be planned
for termination whatever the rules say; only then are rules, thresholds, keep_newest, the pressure
gate, the target and the cap applied, oldest idle first. A session the reaper's role may not
signal is marked so (a refusal) only when it passed all of those: refused means that the pass
wanted the termination, not that the session merely matched.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass, replace
from enum import StrEnum
from fnmatch import translate
from typing import TYPE_CHECKING

from reaper.core.reuse import learned_threshold
from reaper.core.snapshot import CLIENT_BACKEND
from reaper.errors import VisibilityError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping

    from reaper.core.policy import Policy, Rule
    from reaper.core.reuse import GroupKey, LearnedThreshold, ReuseStats
    from reaper.core.snapshot import Session, Snapshot


# keep_newest spares only plain idle sessions: a warm function can reuse those, while a session
# idle in a transaction holds locks and snapshots whatever function owns it.
KEEPABLE_STATE = "idle"


class Reason(StrEnum):
    """Why a session is terminated or spared; values appear in JSON output and logs."""

    IDLE_TOO_LONG = "idle_too_long"
    OWN_BACKEND = "own_backend"
    NOT_CLIENT_BACKEND = "not_client_backend"
    EXCLUDED_USER = "excluded_user"
    EXCLUDED_APPLICATION = "excluded_application"
    EXCLUDED_ADDRESS = "excluded_address"
    SUPERUSER = "superuser"
    NO_RULE_MATCHES = "no_rule_matches"
    STATE_NOT_COVERED = "state_not_covered"
    LISTENER = "listener"
    YOUNGER_THAN_THRESHOLD = "younger_than_threshold"
    NOT_SIGNALLABLE = "not_signallable"
    # A superuser's session the policy would terminate: only a superuser may signal it.
    SUPERUSER_NOT_SIGNALLABLE = "superuser_not_signallable"
    KEPT_AS_NEWEST = "kept_as_newest"
    GATE_CLOSED = "gate_closed"
    OVER_TARGET = "over_target"
    OVER_CAP = "over_cap"


# The reasons of a termination the pass wanted but the reaper's role may not perform.
REFUSAL_REASONS = frozenset({Reason.NOT_SIGNALLABLE, Reason.SUPERUSER_NOT_SIGNALLABLE})


@dataclass(frozen=True, slots=True)
class Decision:
    """What the planner decided for one session, and why."""

    session: Session
    reason: Reason
    rule: str | None = None
    idle_seconds: float | None = None
    threshold_seconds: float | None = None
    # The rule asks for learned thresholds: what was learned for this application and state,
    # also when too little was seen and the static threshold applied.
    learned: LearnedThreshold | None = None

    @property
    def terminate(self) -> bool:
        """True when the session is planned for termination."""
        return self.reason is Reason.IDLE_TOO_LONG

    @property
    def threshold_source(self) -> str | None:
        """Where `threshold_seconds` came from, "learned" or "static"; None without one."""
        if self.threshold_seconds is None:
            return None
        learned = self.learned is not None and self.learned.seconds is not None
        return "learned" if learned else "static"


@dataclass(frozen=True, slots=True)
class Plan:
    """Every session's decision plus the gate and budget that shaped them."""

    decisions: tuple[Decision, ...]
    gate_open: bool
    # Terminations the target utilization asks for; None without a target.
    target_need: int | None

    @property
    def to_terminate(self) -> tuple[Decision, ...]:
        """Planned terminations, oldest idle first."""
        return tuple(sorted((d for d in self.decisions if d.terminate), key=_oldest_first))


def check_visibility(snapshot: Snapshot) -> None:
    """Refuse to plan when the role cannot see other roles' session states.

    Raises:
        VisibilityError: naming the role and how many sessions are hidden from it.
    """
    hidden = snapshot.hidden_sessions
    if hidden:
        raise VisibilityError(
            f"role {snapshot.role!r} cannot see the state of {len(hidden)} session(s) of other "
            "roles, so it cannot tell idle from active; grant it pg_monitor (see "
            "docs/database-role.md). Nothing was terminated."
        )


def plan(
    snapshot: Snapshot, policy: Policy, reuse: Mapping[GroupKey, ReuseStats] | None = None
) -> Plan:
    """Decide, for every session in the snapshot, whether to terminate it and why.

    Args:
        snapshot: the sessions and connection picture, with the server's clock as `taken_at`.
        policy: the validated policy.
        reuse: what was learned of each application's reuse (`core.reuse.statistics`); only
            the rules with `learned` use it. None: every rule's static thresholds.

    Returns:
            A Plan with one decision per session, in snapshot order. Terminations never exceed
        `max_terminations` or the target's need, and go to the oldest idle sessions first; with
        learned thresholds, to the sessions least likely to be reused first.
    """
    now = snapshot.taken_at
    globs = GlobMatchers(policy)
    learning = None if reuse is None or not policy.learns else _Learning(reuse)
    decided: dict[int, Decision] = {}
    eligible: list[Decision] = []
    covered: dict[tuple[str, str], list[Session]] = {}

    for session in snapshot.sessions:
        protection = _protection(session, snapshot, policy, globs)
        if protection is not None:
            decided[session.pid] = Decision(session, protection)
            continue
        identity_rules = [rule for rule in policy.rules if _rule_matches(rule, session, globs)]
        if not identity_rules:
            decided[session.pid] = Decision(session, Reason.NO_RULE_MATCHES)
            continue
        rule, threshold = _first_covering(identity_rules, session.state)
        if threshold is None:
            decided[session.pid] = Decision(session, Reason.STATE_NOT_COVERED, rule.name)
            continue
        if learning is not None:
            threshold = learning.threshold(rule, session, threshold)
        idle_seconds = session.idle_seconds(now)
        if policy.spare_listeners and session.is_listening:
            decided[session.pid] = Decision(
                session, Reason.LISTENER, rule.name, idle_seconds, threshold
            )
            continue
        if session.state == KEEPABLE_STATE:
            covered.setdefault((rule.name, session.application_name), []).append(session)
        if idle_seconds is None or idle_seconds < threshold:
            decided[session.pid] = Decision(
                session, Reason.YOUNGER_THAN_THRESHOLD, rule.name, idle_seconds, threshold
            )
            continue
        eligible.append(Decision(session, Reason.IDLE_TOO_LONG, rule.name, idle_seconds, threshold))

    kept = _newest_to_keep(covered, {rule.name: rule.keep_newest for rule in policy.rules})
    if learning is not None:
        kept = learning.unkeep_never_reused(kept, covered)
    gate_open = snapshot.connections.utilization_before >= policy.min_utilization
    target_need = _target_need(snapshot, policy.target_utilization)
    budget = (
        policy.max_terminations
        if target_need is None
        else min(policy.max_terminations, target_need)
    )
    over_budget = (
        Reason.OVER_TARGET
        if target_need is not None and target_need < policy.max_terminations
        else Reason.OVER_CAP
    )

    granted = 0
    for decision in sorted(eligible, key=_oldest_first if learning is None else learning.order):
        pid = decision.session.pid
        if pid in kept:
            decided[pid] = _with_reason(decision, Reason.KEPT_AS_NEWEST)
        elif not gate_open:
            decided[pid] = _with_reason(decision, Reason.GATE_CLOSED)
        elif granted >= budget:
            decided[pid] = _with_reason(decision, over_budget)
        elif not decision.session.may_signal:
            # Wanted but not allowed: a refusal, which takes no place under the cap or the
            # target (it frees no connection), so the next session is still considered.
            decided[pid] = _with_reason(decision, _refusal(decision.session))
        else:
            decided[pid] = decision
            granted += 1

    decisions = tuple(decided[session.pid] for session in snapshot.sessions)
    if learning is not None:
        decisions = learning.annotate(decisions)
    return Plan(decisions, gate_open, target_need)


class GlobMatchers:
    """Every pattern list of one policy compiled once, for one plan over many sessions.

    Built per plan() call, not cached per pattern list: a policy has as many lists as it has
    rules (up to 200, three lists each), and a bounded cache of them (fnmatch's, or an
    lru_cache) is refilled for every session once the lists outnumber it.
    """

    def __init__(self, policy: Policy) -> None:
        self._compiled: dict[tuple[str, ...], Callable[[str], re.Match[str] | None]] = {}
        for patterns in _pattern_lists(policy):
            if patterns not in self._compiled:
                self._compiled[patterns] = compile_globs(patterns)

    def matches_any(self, value: str, patterns: tuple[str, ...]) -> bool:
        """Whether `value` matches one of `patterns` (a list of the policy)."""
        return self._compiled[patterns](value) is not None


def compile_globs(patterns: tuple[str, ...]) -> Callable[[str], re.Match[str] | None]:
    """One compiled alternation for a list of globs: the same match as any(fnmatchcase(...)),
    without a Python-level loop and cache lookup per pattern per session."""
    if not patterns:
        return lambda _value: None
    return re.compile("|".join(f"(?:{translate(pattern)})" for pattern in patterns)).match


def _pattern_lists(policy: Policy) -> Iterator[tuple[str, ...]]:
    yield policy.exclude.users
    yield policy.exclude.application_names
    for rule in policy.rules:
        yield rule.application_names
        if rule.users is not None:
            yield rule.users
        if rule.databases is not None:
            yield rule.databases


def _protection(
    session: Session, snapshot: Snapshot, policy: Policy, globs: GlobMatchers
) -> Reason | None:
    """The reason a session may never be terminated by this policy, or None."""
    if session.pid == snapshot.own_pid:
        return Reason.OWN_BACKEND
    if session.backend_type != CLIENT_BACKEND:
        return Reason.NOT_CLIENT_BACKEND
    if session.user is not None and globs.matches_any(session.user, policy.exclude.users):
        return Reason.EXCLUDED_USER
    if globs.matches_any(session.application_name, policy.exclude.application_names):
        return Reason.EXCLUDED_APPLICATION
    # A pooler's server connections carry the application_name of whichever client used them
    # last, so their address is what tells them apart. A Unix-socket session has no address and
    # is never covered. Checked only when the policy lists blocks: no address parse otherwise.
    if policy.exclude.client_addresses and _address_in(
        session.client_addr, policy.exclude.client_addresses
    ):
        return Reason.EXCLUDED_ADDRESS
    if session.is_superuser and not policy.terminate_superuser_sessions:
        return Reason.SUPERUSER
    return None


def _refusal(session: Session) -> Reason:
    return Reason.SUPERUSER_NOT_SIGNALLABLE if session.is_superuser else Reason.NOT_SIGNALLABLE


def _rule_matches(rule: Rule, session: Session, globs: GlobMatchers) -> bool:
    """Whether the session's identity (application, user, database, address) fits the rule."""
    if not globs.matches_any(session.application_name, rule.application_names):
        return False
    if rule.users is not None and (
        session.user is None or not globs.matches_any(session.user, rule.users)
    ):
        return False
    if rule.databases is not None and (
        session.database is None or not globs.matches_any(session.database, rule.databases)
    ):
        return False
    return rule.client_addresses is None or _address_in(session.client_addr, rule.client_addresses)


def _first_covering(rules: list[Rule], state: str | None) -> tuple[Rule, float | None]:
    """The first rule covering the state with its threshold, else the first rule and None."""
    for rule in rules:
        threshold = _threshold(rule, state)
        if threshold is not None:
            return rule, threshold
    return rules[0], None


def _threshold(rule: Rule, state: str | None) -> float | None:
    for covered_state, seconds in rule.states.items():
        if covered_state == state:
            return seconds
    return None


def _address_in(
    address: str | None,
    networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> bool:
    # A Unix-socket session has no client address: a rule that names networks cannot match it.
    if address is None:
        return False
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(parsed in network for network in networks)


def _newest_to_keep(
    covered: dict[tuple[str, str], list[Session]], keep_newest: dict[str, int]
) -> set[int]:
    """Pids of the N most recently active idle sessions per (rule, application)."""
    kept: set[int] = set()
    for (rule_name, _application), sessions in covered.items():
        count = keep_newest.get(rule_name, 0)
        if count <= 0:
            continue
        newest_first = sorted(sessions, key=_most_recent_first)
        kept.update(session.pid for session in newest_first[:count])
    return kept


def _target_need(snapshot: Snapshot, target_utilization: float | None) -> int | None:
    """How many terminations bring utilization down to the target (0 if already there)."""
    if target_utilization is None:
        return None
    picture = snapshot.connections
    allowed_connections = math.floor(target_utilization * picture.usable_connections + 1e-9)
    return max(0, picture.client_connections - allowed_connections)


def _oldest_first(decision: Decision) -> tuple[float, int]:
    return (-(decision.idle_seconds or 0.0), decision.session.pid)


def _most_recent_first(session: Session) -> tuple[float, int]:
    changed = session.state_change.timestamp() if session.state_change else 0.0
    return (-changed, -session.pid)


def _with_reason(decision: Decision, reason: Reason) -> Decision:
    return replace(decision, reason=reason)


class _Learning:
    """The learned side of one plan: thresholds per (rule, application, state), worked out once
    each, and what they change in keep_newest and in the order of the candidates."""

    def __init__(self, reuse: Mapping[GroupKey, ReuseStats]) -> None:
        self._reuse = reuse
        self._thresholds: dict[tuple[str, str, str], LearnedThreshold] = {}
        # Per pid, what was learned for the session's rule, application and state.
        self._by_pid: dict[int, LearnedThreshold] = {}

    def threshold(self, rule: Rule, session: Session, static: float) -> float:
        """The threshold for `session` under `rule`: the learned one once enough was seen."""
        if rule.learned is None or session.state is None:
            return static
        key = (rule.name, session.application_name, session.state)
        learned = self._thresholds.get(key)
        if learned is None:
            stats = self._reuse.get((session.application_name, session.state))
            learned = self._thresholds[key] = learned_threshold(stats, rule.learned)
        self._by_pid[session.pid] = learned
        return static if learned.seconds is None else learned.seconds

    def unkeep_never_reused(
        self, kept: set[int], covered: dict[tuple[str, str], list[Session]]
    ) -> set[int]:
        """`kept` without the sessions of applications never reused: keeping them warm only
        holds slots (a cron whose environments die right after use)."""
        never_reused = {
            session.pid
            for sessions in covered.values()
            for session in sessions
            if (learned := self._by_pid.get(session.pid)) is not None and learned.never_reused
        }
        return kept - never_reused

    def order(self, decision: Decision) -> tuple[float, float, int]:
        """Least likely to be reused first, then oldest idle first. A session whose rule does
        not learn, or of which nothing is known at its age, counts as surely reused."""
        likelihood = 1.0
        session = decision.session
        if session.pid in self._by_pid and session.state is not None:
            stats = self._reuse.get((session.application_name, session.state))
            if stats is not None:
                known = stats.reuse_likelihood(decision.idle_seconds or 0.0)
                likelihood = 1.0 if known is None else known
        return (likelihood, *_oldest_first(decision))

    def annotate(self, decisions: tuple[Decision, ...]) -> tuple[Decision, ...]:
        """The decisions, each with what was learned for its session."""
        return tuple(
            replace(decision, learned=learned)
            if (learned := self._by_pid.get(decision.session.pid)) is not None
            else decision
            for decision in decisions
        )


def rule_for_application(policy: Policy, application: str, state: str) -> tuple[Rule, float] | None:
    """The first rule whose application patterns match and that covers `state`, with its static
    threshold; None if no rule does. Rules that also name users, databases or addresses are
    taken as matching: a history knows sessions by application only (`reaper advise`)."""
    globs = GlobMatchers(policy)
    rules = [r for r in policy.rules if globs.matches_any(application, r.application_names)]
    if not rules:
        return None
    rule, threshold = _first_covering(rules, state)
    return None if threshold is None else (rule, threshold)
