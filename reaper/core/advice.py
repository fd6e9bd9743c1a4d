"""`reaper advise`: what a reuse history says of each application, against a policy. Pure.

Per application and state: how many sessions and idle periods were seen, how many were reused
and after how long (the idle age a snapshot last saw before the reuse), how many ended, were
terminated or are idle now; how many reused sessions a pass at the current threshold would
have terminated first; and the threshold the rule's `learned` bounds (or the default bounds)
recommend.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from reaper.core.planning import rule_for_application
from reaper.core.policy import LearnedThresholds
from reaper.core.reuse import learned_threshold, nearest_rank, statistics

if TYPE_CHECKING:
    from datetime import datetime

    from reaper.core.policy import Policy
    from reaper.core.reuse import History, LearnedThreshold, ReuseStats

# The quantiles of the idle age before a reuse that `reaper advise` shows.
SHOWN_QUANTILES = (0.5, 0.9, 0.99)


@dataclass(frozen=True, slots=True)
class GapSummary:
    """Idle ages seen before a reuse, in seconds: quantiles (nearest rank) and the largest."""

    p50: float
    p90: float
    p99: float
    max: float
    # The largest upper bound: the latest moment a reuse can have come after going idle.
    max_upper_bound: float


@dataclass(frozen=True, slots=True)
class ApplicationAdvice:
    """What the history says of one application in one state, and the threshold it suggests."""

    application: str
    state: str
    sessions_seen: int
    idle_periods: int
    reuses: int
    ended: int
    terminated: int
    still_idle: int
    idle_now: int
    gap_before_reuse: GapSummary | None
    # The rule a pass would hold these sessions to (matched on the application only), or None.
    rule: str | None
    current_threshold_seconds: float | None
    current_threshold_source: str | None
    # Reused sessions a pass at the current threshold would have terminated before their reuse.
    reused_after_termination_at_current: int | None
    recommended: LearnedThreshold
    reused_after_termination_at_recommended: int | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, with the recommendation's reason as text."""
        document = asdict(self)
        document["recommended"]["why"] = self.recommended.why()
        return document


@dataclass(frozen=True, slots=True)
class Advice:
    """Every application and state a history knows."""

    target: str
    observed_at: datetime | None
    applications: tuple[ApplicationAdvice, ...]

    def to_dict(self) -> dict[str, Any]:
        """The document of `reaper advise --json`."""
        return {
            "target": self.target,
            "observed_at": None if self.observed_at is None else self.observed_at.isoformat(),
            "applications": [advice.to_dict() for advice in self.applications],
        }


def advise(history: History, policy: Policy | None, *, target: str) -> Advice:
    """What `history` says of each application and state; with `policy`, against its rules.

    The recommendation uses the bounds of the rule's `learned` field, or the default bounds
    when the rule has none or there is no policy.
    """
    applications = []
    for (application, state), stats in statistics(history).items():
        found = None if policy is None else rule_for_application(policy, application, state)
        settings = LearnedThresholds()
        current: LearnedThreshold | None = None
        threshold: float | None = None
        if found is not None:
            rule, threshold = found
            if rule.learned is not None:
                settings = rule.learned
                current = learned_threshold(stats, settings)
                threshold = threshold if current.seconds is None else current.seconds
        recommended = learned_threshold(stats, settings)
        applications.append(
            ApplicationAdvice(
                application=application,
                state=state,
                sessions_seen=history.sessions_seen.get(application, 0),
                idle_periods=stats.periods,
                reuses=stats.reuses,
                ended=stats.ended,
                terminated=stats.terminated,
                still_idle=stats.still_idle,
                idle_now=stats.idle_now,
                gap_before_reuse=_gaps(stats),
                rule=None if found is None else found[0].name,
                current_threshold_seconds=threshold,
                current_threshold_source=_source(found, current),
                reused_after_termination_at_current=(
                    None if threshold is None else stats.terminations_before_reuse(threshold)
                ),
                recommended=recommended,
                reused_after_termination_at_recommended=(
                    None
                    if recommended.seconds is None
                    else stats.terminations_before_reuse(recommended.seconds)
                ),
            )
        )
    return Advice(target, history.observed_at, tuple(applications))


def _gaps(stats: ReuseStats) -> GapSummary | None:
    if not stats.reuse_gaps:
        return None
    p50, p90, p99 = (nearest_rank(stats.reuse_gaps, q) or 0.0 for q in SHOWN_QUANTILES)
    return GapSummary(
        p50=p50,
        p90=p90,
        p99=p99,
        max=stats.reuse_gaps[-1],
        max_upper_bound=stats.reuse_bounds[-1],
    )


def _source(found: object, current: LearnedThreshold | None) -> str | None:
    if found is None:
        return None
    return "learned" if current is not None and current.seconds is not None else "static"
