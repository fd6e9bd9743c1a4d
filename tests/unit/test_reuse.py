"""Learning reuse from snapshots: each outcome by example, then properties against a model of
sessions whose every statement is known, and the history file's strict round trip."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reaper.core.history_document import parse_history, render_history
from reaper.core.policy import LearnedThresholds
from reaper.core.reuse import (
    History,
    Period,
    PeriodOutcome,
    ReuseStats,
    forget_sessions,
    learned_threshold,
    nearest_rank,
    observe,
    remember_terminations,
    statistics,
)
from reaper.errors import HistoryError
from tests.unit.planning_data import NOW, session, snapshot

if TYPE_CHECKING:
    from reaper.core.snapshot import Session, Snapshot

API = "lambda:api"
CRON = "lambda:cron"


def at(seconds: float, *sessions: Session) -> Snapshot:
    """A snapshot taken `seconds` after NOW holding these sessions."""
    return replace(snapshot(*sessions), taken_at=NOW + timedelta(seconds=seconds))


def idle_since(pid: int, seconds: float, *, app: str = API, **kwargs: object) -> Session:
    """Session `pid` idle since `seconds` after NOW (its backend started a day before NOW)."""
    changed = NOW + timedelta(seconds=seconds)
    return replace(session(pid, application_name=app, **kwargs), state_change=changed)


def history_of(*snapshots: Snapshot, terminated: tuple[Session, ...] = ()) -> History:
    history = History()
    for index, snap in enumerate(snapshots):
        history = observe(history, snap).history
        if index == 0 and terminated:
            history = remember_terminations(history, terminated)
    return history


def test_session_used_again_between_snapshots_is_a_reuse_bounded_by_both_snapshots() -> None:
    # given a session idle since t=0, seen idle at t=10, then showing a statement started at t=14
    first = at(10, idle_since(5, 0))
    used = replace(idle_since(5, 15), query_start=NOW + timedelta(seconds=14))
    # when the second snapshot at t=20 is observed
    observation = observe(observe(History(), first).history, at(20, used))
    # then one reuse: seen idle for 10 s, used again within 14 s of going idle
    [(group, period)] = observation.finished
    assert group == (API, "idle")
    assert period.outcome is PeriodOutcome.REUSED
    assert period.seen_idle_seconds == pytest.approx(10)
    assert period.reused_within_seconds == pytest.approx(14)
    assert observation.reuse_gaps() == {API: [pytest.approx(10)]}


def test_session_gone_is_ended_unless_the_reaper_terminated_it() -> None:
    first = at(10, idle_since(5, 0), idle_since(6, 0, app=CRON))
    terminated = idle_since(6, 0, app=CRON)
    history = history_of(first, at(20), terminated=(terminated,))
    outcomes = {group: [p.outcome for p in periods] for group, periods in history.periods.items()}
    assert outcomes == {
        (API, "idle"): [PeriodOutcome.ENDED],
        (CRON, "idle"): [PeriodOutcome.TERMINATED],
    }
    assert history.terminated == frozenset()  # used once, then forgotten


def test_a_new_backend_on_a_reused_pid_is_a_new_session_not_a_reuse() -> None:
    first = at(10, idle_since(5, 0))
    reborn = replace(idle_since(5, 15), backend_start=NOW + timedelta(seconds=12))
    history = history_of(first, at(20, reborn))
    [period] = history.periods[(API, "idle")]
    assert period.outcome is PeriodOutcome.ENDED
    assert history.sessions_seen == {API: 2}


def test_active_sessions_and_other_backends_finish_no_period() -> None:
    active = session(5, state="active", idle_seconds=0)
    worker = session(6, backend_type="autovacuum worker")
    history = history_of(at(10, active, worker), at(20))
    assert history.periods == {}
    assert history.sessions_seen == {"lambda:orders": 1}


def test_a_snapshot_older_than_the_history_restarts_following_and_keeps_what_was_learned() -> None:
    learned = history_of(at(10, idle_since(5, 0)), at(20))
    # the clock went backwards: the session idle at t=10 cannot be compared, it is not "ended"
    again = history_of(at(30, idle_since(7, 25)))
    restarted = observe(replace(again, periods=learned.periods), at(5, idle_since(7, 0)))
    outcomes = [p.outcome for p in restarted.history.periods[(API, "idle")]]
    assert outcomes == [PeriodOutcome.ENDED, PeriodOutcome.STILL_IDLE]


def test_forgetting_sessions_closes_each_idle_one_as_still_idle_at_its_last_age() -> None:
    history = forget_sessions(history_of(at(10, idle_since(5, 4), session(6, state="active"))))
    assert history.sessions == {}
    [period] = history.periods[(API, "idle")]
    assert period == (pytest.approx(6), PeriodOutcome.STILL_IDLE, None)


LEARN = LearnedThresholds(quantile=0.9, margin_seconds=5, min_seconds=60, max_seconds=600)


def stats_from(reused: list[float], unreused: list[float]) -> ReuseStats:
    periods = tuple(Period(g, PeriodOutcome.REUSED, g + 1) for g in reused) + tuple(
        Period(a, PeriodOutcome.TERMINATED) for a in unreused
    )
    history = History(periods={(API, "idle"): periods})
    return statistics(history)[(API, "idle")]


def test_learned_threshold_is_the_quantile_of_gaps_before_reuse_plus_the_margin() -> None:
    stats = stats_from([float(g) for g in range(100, 200)], [900.0] * 10)
    learned = learned_threshold(stats, LEARN)
    assert learned.gap_quantile_seconds == 189
    assert learned.seconds == 194
    assert learned.reuses == 100
    assert "p90 of 100 reuses" in learned.why()


def test_learned_threshold_is_clamped_to_its_bounds() -> None:
    assert learned_threshold(stats_from([1.0] * 30, []), LEARN).seconds == 60
    assert learned_threshold(stats_from([5000.0] * 30, []), LEARN).seconds == 600


def test_application_never_reused_gets_the_minimum_once_enough_was_seen() -> None:
    learned = learned_threshold(stats_from([], [61.0] * 20), LEARN)
    assert learned.seconds == 60
    assert learned.never_reused
    assert "none of 20" in learned.why()


def test_too_few_observations_leave_the_static_threshold() -> None:
    # idle periods seen for less than min_seconds tell nothing about a threshold that long
    learned = learned_threshold(stats_from([], [59.0] * 50 + [61.0] * 19), LEARN)
    assert learned.seconds is None
    assert learned.observations == 19
    assert not learned.never_reused
    assert learned.why() == "static: 19 of 20 idle periods observed"
    assert learned_threshold(None, LEARN).seconds is None


def test_reuse_likelihood_is_the_share_reused_among_periods_seen_that_old() -> None:
    stats = stats_from([10.0, 20.0, 30.0], [25.0, 100.0])
    assert stats.reuse_likelihood(0) == pytest.approx(3 / 5)
    assert stats.reuse_likelihood(21) == pytest.approx(1 / 3)
    assert stats.reuse_likelihood(50) == 0
    assert stats.reuse_likelihood(101) is None
    assert stats.terminations_before_reuse(20) == 2


@given(
    values=st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=50),
    quantile=st.floats(min_value=0.01, max_value=1.0),
)
def test_nearest_rank_is_a_value_with_at_least_that_share_at_or_below_it(values, quantile) -> None:
    ordered = tuple(sorted(values))
    value = nearest_rank(ordered, quantile)
    assert value in ordered
    assert sum(1 for v in ordered if v <= value) >= quantile * len(ordered) - 1e-9


# -- properties against a model --------------------------------------------------------------


@dataclass(frozen=True)
class ModelSession:
    """A backend whose statements are all known: started at `start`, each query at an offset
    in `queries` lasting `duration`; gone at `end` (None: never)."""

    pid: int
    start: float
    queries: tuple[float, ...]
    duration: float
    end: float | None
    app: str

    def at(self, time: float) -> Session | None:
        if time < self.start or (self.end is not None and time >= self.end):
            return None
        started = [self.start + q for q in self.queries if self.start + q <= time]
        last = started[-1]  # the first query starts with the backend
        running = time < last + self.duration
        return replace(
            session(self.pid, application_name=self.app),
            backend_start=NOW + timedelta(seconds=self.start),
            state="active" if running else "idle",
            state_change=NOW + timedelta(seconds=last if running else last + self.duration),
            query_start=NOW + timedelta(seconds=last),
        )

    def gaps(self) -> list[tuple[float, float]]:
        """Each idle period as (went idle, used again), in seconds after NOW."""
        starts = [self.start + q for q in self.queries]
        return [(a + self.duration, b) for a, b in itertools.pairwise(starts)]


@st.composite
def model_sessions(draw: st.DrawFn) -> list[ModelSession]:
    count = draw(st.integers(min_value=1, max_value=6))
    models = []
    for index in range(count):
        offsets = draw(st.lists(st.integers(1, 40), min_size=0, max_size=6, unique=True))
        duration = draw(st.sampled_from((0.25, 0.5)))
        start = draw(st.integers(0, 60))
        end = draw(st.one_of(st.none(), st.integers(start + 1, 130)))
        queries = (0.0, *sorted(o * 2.0 for o in offsets))
        if end is not None:
            queries = tuple(q for q in queries if start + q + duration < end) or (0.0,)
        app = draw(st.sampled_from((API, CRON)))
        # pids are reused: the same pid for two backends never alive at once
        models.append(ModelSession(100 + index, start, queries, duration, end, app))
    return models


@settings(max_examples=150, deadline=None)
@given(
    models=model_sessions(),
    times=st.lists(st.integers(1, 140), min_size=2, max_size=12, unique=True),
)
def test_observed_reuses_bound_the_true_gaps_and_every_outcome_matches_the_model(
    models, times
) -> None:
    times = sorted(t + 0.1 for t in times)
    history = History()
    for time in times:
        sessions = [s for m in models if (s := m.at(time)) is not None]
        history = observe(history, at(time, *sessions)).history

    expected: Counter[tuple[str, PeriodOutcome]] = Counter()
    for model in models:
        gaps = model.gaps()
        for earlier, later in itertools.pairwise(times):
            seen, after = model.at(earlier), model.at(later)
            if seen is None or seen.state != "idle":
                continue
            if after is None:
                expected[(model.app, PeriodOutcome.ENDED)] += 1
            elif after.state_change != seen.state_change:
                expected[(model.app, PeriodOutcome.REUSED)] += 1
                # the true gap of this idle period lies within the bounds the history noted
                went_idle = (seen.state_change - NOW).total_seconds()
                [used_again] = [b for a, b in gaps if a == pytest.approx(went_idle)]
                assert went_idle <= earlier < used_again <= later
    found = Counter(
        (app, period.outcome)
        for (app, _state), periods in history.periods.items()
        for period in periods
    )
    assert found == expected

    bounds = {
        app: sorted(
            (b - a for m in models if m.app == app for a, b in m.gaps()),
        )
        for app in (API, CRON)
    }
    for (app, _state), periods in history.periods.items():
        for period in periods:
            if period.outcome is PeriodOutcome.REUSED:
                assert period.reused_within_seconds is not None
                assert period.seen_idle_seconds <= period.reused_within_seconds
                # some true gap of the application lies within [seen, within]
                assert any(
                    period.seen_idle_seconds - 1e-6 <= gap <= period.reused_within_seconds + 1e-6
                    for gap in bounds[app]
                )
    assert sum(history.sessions_seen.values()) == sum(
        1 for m in models if any(m.at(t) is not None for t in times)
    )


learned_settings = st.builds(
    LearnedThresholds,
    quantile=st.floats(min_value=0.5, max_value=1.0),
    margin_seconds=st.floats(min_value=0, max_value=600),
    min_seconds=st.floats(1, 1500),
    max_seconds=st.floats(1500, 3000),
    min_observations=st.integers(1, 40),
)


@settings(max_examples=100, deadline=None)
@given(
    reused=st.lists(st.floats(min_value=0, max_value=5000), max_size=60),
    unreused=st.lists(st.floats(min_value=0, max_value=5000), max_size=60),
    learn=learned_settings,
)
def test_a_learned_threshold_stays_within_its_bounds_and_needs_enough_observations(
    reused, unreused, learn
) -> None:
    bounds = (learn.min_seconds, learn.max_seconds)
    quantile = learn.quantile
    learned = learned_threshold(stats_from(reused, unreused), learn)
    if learned.observations < learn.min_observations:
        assert learned.seconds is None
    else:
        assert learned.seconds is not None
        assert bounds[0] <= learned.seconds <= bounds[1]
        if reused:
            # the threshold spares at least `quantile` of the reuses, unless clamped below
            spared = sum(1 for gap in reused if gap < learned.seconds)
            assert spared >= quantile * len(reused) - 1e-9 or learned.seconds == bounds[1]
        else:
            assert learned.seconds == bounds[0]


# -- the history file --------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(models=model_sessions(), times=st.lists(st.integers(1, 140), min_size=1, max_size=6))
def test_a_history_file_gives_back_the_same_history(models, times) -> None:
    history = History()
    for time in sorted(set(times)):
        sessions = [s for m in models if (s := m.at(time)) is not None]
        history = observe(history, at(time, *sessions)).history
    history = remember_terminations(history, [s for m in models if (s := m.at(200)) is not None])
    text = render_history(history, target="app@db:5432/postgres")
    parsed = parse_history(text, source="f", target="app@db:5432/postgres")
    assert parsed.history == history
    assert parse_history(text, source="f", target=None).target == "app@db:5432/postgres"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not valid JSON"),
        ('{"version": 2, "target": "t", "observed_at": null}', "version"),
        ('{"version": 1, "target": "t", "observed_at": "2026-01-01T00:00:00"}', "timezone"),
        ('{"version": 1, "target": "t", "observed_at": null, "extra": 1}', "extra"),
        (
            '{"version": 1, "target": "t", "observed_at": null, "groups": [{"application": "a",'
            ' "state": "idle", "periods": [[1, "forgotten", null]]}]}',
            "groups[0].periods[0][1]",
        ),
        ('{"version": 1, "target": "another", "observed_at": null}', "history of another"),
    ],
)
def test_a_history_file_that_is_not_this_targets_history_is_refused(text, message) -> None:
    with pytest.raises(HistoryError, match="history") as raised:
        parse_history(text, source="history file h.json", target="t")
    assert message in str(raised.value)
    assert "h.json" in str(raised.value)
