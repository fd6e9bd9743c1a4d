"""What the reaper learns between snapshots: how long each application's idle sessions can still
be used again. Pure: a history and a snapshot in, a new history out; no I/O, no clock.

A session is known by its pid and backend_start (pids are reused). Each snapshot notes every
client session's application, state and state_change. When a session seen idle at one snapshot
shows another state_change at the next, it was reused: the idle age it had at the earlier
snapshot is a lower bound of its idle gap, and its query_start (the start of its latest
statement, no earlier than the first one after the gap) an upper bound. A session seen idle
that is gone at the next snapshot ended: terminated by the reaper (the pass says so) or by
anything else. An idle period is kept per application and state; what it teaches is one number,
the idle age at which a snapshot last saw it idle, and whether it was reused after that.

That number is exactly what a threshold is compared with at a pass: a session reused after being
seen idle for S seconds would have been terminated, and reconnected, by any threshold up to S.
So the thresholds learned here spare a chosen quantile of those ages, plus a margin.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, NamedTuple

from reaper.core.snapshot import CLIENT_BACKEND

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from datetime import datetime

    from reaper.core.policy import LearnedThresholds
    from reaper.core.snapshot import Session, Snapshot

# One session: pids are reused, so the backend's start time comes with the pid.
SessionKey = tuple[int, "datetime"]
# Sessions are learned about per application and per state ("idle", "idle in transaction"...).
GroupKey = tuple[str, str]

# Bounds on what is remembered, so a long-lived history stays small: the newest idle periods of
# each application and state, and the applications with the most periods.
MAX_PERIODS_PER_GROUP = 1000
MAX_GROUPS = 500


class PeriodOutcome(StrEnum):
    """How an idle period ended, as far as the snapshots tell."""

    REUSED = "reused"  # the same backend ran something again
    ENDED = "ended"  # gone, not terminated by the reaper: closed, timed out, or another tool
    TERMINATED = "terminated"  # the reaper terminated it
    STILL_IDLE = "still_idle"  # idle when last seen, no longer followed (history carried over)


class Period(NamedTuple):
    """One idle period of one session."""

    # The idle age at the last snapshot that saw it idle: a lower bound of the gap.
    seen_idle_seconds: float
    outcome: PeriodOutcome
    # For a reuse: the latest moment it can have been reused, as seconds after it went idle.
    reused_within_seconds: float | None = None


class Sighting(NamedTuple):
    """What a snapshot showed of one client session."""

    application: str
    state: str | None
    state_change: datetime | None


@dataclass(frozen=True, slots=True)
class History:
    """Everything remembered of one target between snapshots. Treat as immutable."""

    # The server time of the last snapshot observed; None before the first.
    observed_at: datetime | None = None
    # Every client session of that snapshot.
    sessions: Mapping[SessionKey, Sighting] = field(default_factory=dict)
    # Finished idle periods, oldest first, per (application, state).
    periods: Mapping[GroupKey, tuple[Period, ...]] = field(default_factory=dict)
    # Distinct sessions seen per application.
    sessions_seen: Mapping[str, int] = field(default_factory=dict)
    # Sessions the reaper terminated after the last snapshot: gone next time, not "ended".
    terminated: frozenset[SessionKey] = frozenset()


@dataclass(frozen=True, slots=True)
class Observation:
    """A snapshot observed: the new history and the idle periods that finished with it."""

    history: History
    finished: tuple[tuple[GroupKey, Period], ...]

    def reuse_gaps(self) -> dict[str, list[float]]:
        """Per application, the idle ages seen before each reuse found by this snapshot."""
        gaps: dict[str, list[float]] = {}
        for (application, _state), period in self.finished:
            if period.outcome is PeriodOutcome.REUSED:
                gaps.setdefault(application, []).append(period.seen_idle_seconds)
        return gaps


def session_key(session: Session) -> SessionKey | None:
    """The identity a history knows a session by; None when the snapshot did not show it."""
    if session.backend_start is None:
        return None
    return (session.pid, session.backend_start)


def observe(history: History, snapshot: Snapshot) -> Observation:
    """Compare a snapshot with the history: note reuses, ended sessions and new sessions.

    Args:
        history: what was remembered of this target (an empty History the first time).
        snapshot: the new snapshot; its `taken_at` (the server's clock) dates everything.

    Returns:
        The new history, with the sessions of this snapshot and every idle period that finished
        since the last one. A snapshot not later than the last one cannot be compared with it:
        the sessions remembered are then closed as still idle, and following starts again.
    """
    now = snapshot.taken_at
    before = history.observed_at
    if before is None or now <= before:
        history = forget_sessions(history)
        before = None
    previous = history.sessions
    current: dict[SessionKey, Sighting] = {}
    finished: list[tuple[GroupKey, Period]] = []
    new_sessions: Counter[str] = Counter()
    own_pid = snapshot.own_pid
    # The loop runs once per session of every pass (thousands): plain comparisons, in the
    # order that rules most sessions out first.
    for session in snapshot.sessions:
        if (
            session.backend_type != CLIENT_BACKEND
            or session.pid == own_pid
            or session.backend_start is None
        ):
            continue
        key = (session.pid, session.backend_start)
        sighting = Sighting(session.application_name, session.state, session.state_change)
        current[key] = sighting
        earlier = previous.get(key)
        if earlier is None:
            new_sessions[session.application_name] += 1
        elif (
            earlier.state_change != sighting.state_change or earlier.state != sighting.state
        ) and _idle(earlier):
            assert before is not None  # `previous` is empty without an earlier snapshot
            finished.append(_reused(earlier, session, before, now))
    if before is not None:
        for key, earlier in previous.items():
            if key not in current and _idle(earlier):
                outcome = (
                    PeriodOutcome.TERMINATED if key in history.terminated else PeriodOutcome.ENDED
                )
                finished.append(_closed(earlier, before, outcome))
    seen = Counter(history.sessions_seen)
    seen.update(new_sessions)
    return Observation(
        History(
            observed_at=now,
            sessions=current,
            periods=_merged(history.periods, finished),
            sessions_seen=dict(seen),
        ),
        tuple(finished),
    )


def remember_terminations(history: History, sessions: Iterable[Session]) -> History:
    """The history with these sessions noted as terminated by the reaper since its snapshot."""
    keys = {key for session in sessions if (key := session_key(session)) is not None}
    return replace(history, terminated=history.terminated | keys)


def forget_sessions(history: History) -> History:
    """The history without its sessions: each one idle is closed as still idle, at the age it
    was last seen. What was learned stays; following sessions starts again at the next snapshot
    (another server, a clock gone backwards, a history carried to another run)."""
    if history.observed_at is None or not history.sessions:
        return replace(history, sessions={}, terminated=frozenset())
    closed = [
        _closed(sighting, history.observed_at, PeriodOutcome.STILL_IDLE)
        for sighting in history.sessions.values()
        if _idle(sighting)
    ]
    return replace(
        history, sessions={}, terminated=frozenset(), periods=_merged(history.periods, closed)
    )


# -- what the history says ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReuseStats:
    """What the history says of one application's sessions in one state."""

    application: str
    state: str
    # Idle ages seen before each reuse, sorted.
    reuse_gaps: tuple[float, ...]
    # The latest moment of each reuse, seconds after going idle, sorted.
    reuse_bounds: tuple[float, ...]
    # Idle ages last seen of the periods not reused (finished or idle now), sorted.
    unreused_ages: tuple[float, ...]
    ended: int
    terminated: int
    still_idle: int
    # Sessions of this application idle in this state at the last snapshot.
    idle_now: int

    @property
    def reuses(self) -> int:
        """Idle periods that ended in a reuse."""
        return len(self.reuse_gaps)

    @property
    def periods(self) -> int:
        """Idle periods seen, reused or not, finished or not."""
        return len(self.reuse_gaps) + len(self.unreused_ages)

    def observations(self, min_seconds: float) -> int:
        """Periods that tell something about a threshold of at least `min_seconds`: every reuse,
        and every period not reused that was seen idle for `min_seconds` or more."""
        younger = bisect.bisect_left(self.unreused_ages, min_seconds)
        return self.reuses + len(self.unreused_ages) - younger

    def gap_quantile(self, quantile: float) -> float | None:
        """The `quantile` of the idle ages seen before a reuse (nearest rank); None if none."""
        return nearest_rank(self.reuse_gaps, quantile)

    def terminations_before_reuse(self, threshold: float) -> int:
        """Reused periods a pass with this threshold would have terminated first: those seen
        idle for `threshold` seconds or more before their reuse."""
        return len(self.reuse_gaps) - bisect.bisect_left(self.reuse_gaps, threshold)

    def reuse_likelihood(self, idle_seconds: float) -> float | None:
        """Of the periods seen idle at least this long, the share reused later; None if no
        period was seen idle this long."""
        reused = self.terminations_before_reuse(idle_seconds)
        unreused = len(self.unreused_ages) - bisect.bisect_left(self.unreused_ages, idle_seconds)
        if reused + unreused == 0:
            return None
        return reused / (reused + unreused)


def statistics(history: History) -> dict[GroupKey, ReuseStats]:
    """The statistics of every (application, state) the history knows."""
    gaps: dict[GroupKey, list[float]] = {}
    bounds: dict[GroupKey, list[float]] = {}
    unreused: dict[GroupKey, list[float]] = {}
    outcomes: dict[GroupKey, Counter[PeriodOutcome]] = {}
    for group, periods in history.periods.items():
        gaps[group], bounds[group], unreused[group] = [], [], []
        counted = outcomes[group] = Counter()
        for period in periods:
            counted[period.outcome] += 1
            if period.outcome is PeriodOutcome.REUSED:
                gaps[group].append(period.seen_idle_seconds)
                bounds[group].append(period.reused_within_seconds or period.seen_idle_seconds)
            else:
                unreused[group].append(period.seen_idle_seconds)
    idle_now: Counter[GroupKey] = Counter()
    at = history.observed_at
    if at is not None:
        # Once per session of every learning pass: inline, not _idle() and _age().
        for application, state, changed in history.sessions.values():
            if state is not None and changed is not None and state.startswith("idle"):
                group = (application, state)
                unreused.setdefault(group, []).append(max(0.0, (at - changed).total_seconds()))
                idle_now[group] += 1
    stats = {}
    for group in sorted(gaps.keys() | unreused.keys()):
        counted = outcomes.get(group, Counter())
        stats[group] = ReuseStats(
            application=group[0],
            state=group[1],
            reuse_gaps=tuple(sorted(gaps.get(group, ()))),
            reuse_bounds=tuple(sorted(bounds.get(group, ()))),
            unreused_ages=tuple(sorted(unreused.get(group, ()))),
            ended=counted[PeriodOutcome.ENDED],
            terminated=counted[PeriodOutcome.TERMINATED],
            still_idle=counted[PeriodOutcome.STILL_IDLE],
            idle_now=idle_now[group],
        )
    return stats


@dataclass(frozen=True, slots=True)
class LearnedThreshold:
    """A rule's learned threshold for one application and state, and the evidence for it."""

    # The threshold to apply; None while too little was seen (the static threshold applies).
    seconds: float | None
    observations: int
    min_observations: int
    reuses: int
    quantile: float
    # The quantile of the idle ages seen before a reuse; None without reuses.
    gap_quantile_seconds: float | None

    @property
    def never_reused(self) -> bool:
        """Enough was seen, and not one session of the application was used again."""
        return self.seconds is not None and self.reuses == 0

    def why(self) -> str:
        """One line: where the threshold comes from."""
        if self.seconds is None:
            return f"static: {self.observations} of {self.min_observations} idle periods observed"
        if self.never_reused:
            return f"learned: none of {self.observations} idle periods reused"
        assert self.gap_quantile_seconds is not None  # reuses > 0
        return (
            f"learned: p{_percent(self.quantile)} of {self.reuses} reuses after "
            f"{self.gap_quantile_seconds:.1f}s idle"
        )


def learned_threshold(stats: ReuseStats | None, settings: LearnedThresholds) -> LearnedThreshold:
    """The threshold `settings` learn from `stats`: the quantile of the idle ages seen before a
    reuse plus the margin, clamped to the bounds; `min_seconds` when no session was reused;
    None (the static threshold) until `min_observations` periods tell something."""
    observations = 0 if stats is None else stats.observations(settings.min_seconds)
    gap = None if stats is None else stats.gap_quantile(settings.quantile)
    reuses = 0 if stats is None else stats.reuses
    seconds: float | None = None
    if observations >= settings.min_observations:
        # A session idle for exactly the threshold is terminated: the gap itself must be spared.
        wanted = (
            settings.min_seconds
            if gap is None
            else max(gap + settings.margin_seconds, math.nextafter(gap, math.inf))
        )
        seconds = min(settings.max_seconds, max(settings.min_seconds, wanted))
    return LearnedThreshold(
        seconds=seconds,
        observations=observations,
        min_observations=settings.min_observations,
        reuses=reuses,
        quantile=settings.quantile,
        gap_quantile_seconds=gap,
    )


def nearest_rank(values: tuple[float, ...], quantile: float) -> float | None:
    """The nearest-rank `quantile` of sorted `values`: at least that share of them is at or
    below it, and it is one of them. None for no values."""
    if not values:
        return None
    rank = max(1, math.ceil(quantile * len(values) - 1e-9))
    return values[min(rank, len(values)) - 1]


# -- helpers --------------------------------------------------------------------------------


def _idle(sighting: Sighting) -> bool:
    return (
        sighting.state is not None
        and sighting.state.startswith("idle")
        and sighting.state_change is not None
    )


def _age(sighting: Sighting, at: datetime) -> float:
    assert sighting.state_change is not None  # _idle
    return max(0.0, (at - sighting.state_change).total_seconds())


def _reused(
    earlier: Sighting, session: Session, before: datetime, now: datetime
) -> tuple[GroupKey, Period]:
    assert earlier.state is not None  # _idle
    assert earlier.state_change is not None
    went_idle = earlier.state_change
    # The latest statement started no earlier than the first one after the gap.
    latest = session.query_start
    reused_by = latest if latest is not None and went_idle < latest < now else now
    period = Period(
        _age(earlier, before),
        PeriodOutcome.REUSED,
        max(0.0, (reused_by - went_idle).total_seconds()),
    )
    return (earlier.application, earlier.state), period


def _closed(earlier: Sighting, before: datetime, outcome: PeriodOutcome) -> tuple[GroupKey, Period]:
    assert earlier.state is not None  # _idle
    return (earlier.application, earlier.state), Period(_age(earlier, before), outcome)


def _merged(
    periods: Mapping[GroupKey, tuple[Period, ...]], finished: list[tuple[GroupKey, Period]]
) -> Mapping[GroupKey, tuple[Period, ...]]:
    if not finished:
        return periods
    added: dict[GroupKey, list[Period]] = {}
    for group, period in finished:
        added.setdefault(group, []).append(period)
    merged = dict(periods)
    for group, new in added.items():
        merged[group] = (*merged.get(group, ()), *new)[-MAX_PERIODS_PER_GROUP:]
    if len(merged) > MAX_GROUPS:
        # The applications with the least history are forgotten first.
        kept = sorted(merged, key=lambda group: len(merged[group]), reverse=True)[:MAX_GROUPS]
        merged = {group: merged[group] for group in kept}
    return merged


def _percent(quantile: float) -> str:
    return f"{quantile * 100:g}"
