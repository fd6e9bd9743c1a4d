"""The planner with learned thresholds: rules that ask for them, the evidence each decision
carries, keep_newest and the order under pressure; then the planner's safety properties again
with random histories."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reaper.core.planning import Reason, plan
from reaper.core.reuse import History, Period, PeriodOutcome, ReuseStats, statistics
from tests.unit.planning_data import (
    APPLICATIONS,
    IDLE_STATES,
    assert_planned_safely,
    assert_within_budget,
    policies_strategy,
    policy,
    session,
    snapshot,
    snapshots_strategy,
)

API = "lambda:orders"
CRON = "lambda:payments"
LEARNED = {"quantile": 0.9, "margin_seconds": 30, "min_seconds": 60, "max_seconds": 1800}


def learned_rule(**fields: Any) -> dict[str, Any]:
    return {
        "name": "lambda",
        "application_names": ["lambda:*"],
        "states": {"idle": 900},
        "learned": {**LEARNED, **fields.pop("learned", {})},
        **fields,
    }


def reuse_of(**groups: tuple[list[float], list[float]]) -> dict[tuple[str, str], ReuseStats]:
    """Statistics from (gaps before reuse, ages of periods not reused) per application."""
    periods = {
        (application.replace("_", ":"), "idle"): (
            *(Period(gap, PeriodOutcome.REUSED, gap) for gap in reused),
            *(Period(age, PeriodOutcome.TERMINATED) for age in unreused),
        )
        for application, (reused, unreused) in groups.items()
    }
    return statistics(History(periods=periods))


def by_pid(result_plan: Any) -> dict[int, Any]:
    return {d.session.pid: d for d in result_plan.decisions}


# the API's sessions are mostly reused within 100 s of going idle, a few after 1,000 s or more;
# the cron's never
API_GAPS = [*map(float, range(1, 101)), 1000, 1100, 1200, 1300, 1400]
REUSE = reuse_of(lambda_orders=(API_GAPS, [2000.0] * 10), lambda_payments=([], [700.0] * 25))


def test_learned_threshold_replaces_the_static_one_once_enough_was_seen() -> None:
    # given an API session idle 135 s and a cron session idle 65 s, under a 900 s static rule
    snap = snapshot(
        session(10, idle_seconds=135), session(20, application_name=CRON, idle_seconds=65)
    )
    # when the rule learns: p90 of the API's gaps is 95 s, plus 30 s; the cron is never reused
    decisions = by_pid(plan(snap, policy(rules=[learned_rule()]), REUSE))
    # then both are planned, each with the threshold it was held to and why
    api, cron = decisions[10], decisions[20]
    assert (api.reason, api.threshold_seconds, api.threshold_source) == (
        Reason.IDLE_TOO_LONG, 125, "learned"
    )  # fmt: skip
    assert api.learned.reuses == 105
    assert api.learned.gap_quantile_seconds == 95
    assert (cron.reason, cron.threshold_seconds, cron.threshold_source) == (
        Reason.IDLE_TOO_LONG, 60, "learned"
    )  # fmt: skip
    assert cron.learned.never_reused


def test_static_threshold_applies_while_too_little_was_seen_and_says_so() -> None:
    snap = snapshot(session(10, idle_seconds=135))
    decision = by_pid(
        plan(snap, policy(rules=[learned_rule(learned={"min_observations": 500})]), REUSE)
    )[10]
    assert decision.reason is Reason.YOUNGER_THAN_THRESHOLD
    assert (decision.threshold_seconds, decision.threshold_source) == (900, "static")
    assert decision.learned.seconds is None
    assert decision.learned.why() == "static: 115 of 500 idle periods observed"


def test_rule_without_learned_ignores_what_was_learned() -> None:
    snap = snapshot(session(10, idle_seconds=135))
    static = policy(rules=[{"application_names": ["lambda:*"], "states": {"idle": 900}}])
    assert plan(snap, static, REUSE) == plan(snap, static)
    decision = plan(snap, static, REUSE).decisions[1]
    assert (decision.threshold_source, decision.learned) == ("static", None)


def test_keep_newest_keeps_nothing_of_an_application_never_reused() -> None:
    sessions = [session(20 + i, application_name=CRON, idle_seconds=600 + i) for i in range(3)]
    sessions += [session(10, idle_seconds=3000)]
    decisions = by_pid(
        plan(snapshot(*sessions), policy(rules=[learned_rule(keep_newest=1)]), REUSE)
    )
    assert {pid for pid, d in decisions.items() if d.terminate} == {20, 21, 22}
    # the API's newest idle session is still kept warm
    assert decisions[10].reason is Reason.KEPT_AS_NEWEST


def test_under_pressure_the_least_likely_to_be_reused_go_first() -> None:
    # given API sessions idle 1,300 s (2 of the 12 API periods seen that old were reused) and
    # younger cron sessions (never reused), 39 clients (the reaper's own is not one) of 97
    # usable, and a target that allows 36
    api = [session(10 + i, idle_seconds=1300 + i) for i in range(3)]
    cron = [session(30 + i, application_name=CRON, idle_seconds=100 + i) for i in range(3)]
    filler = [session(50 + i, application_name="metabase") for i in range(33)]
    rules = [learned_rule()]
    decisions = plan(
        snapshot(*api, *cron, *filler), policy(rules=rules, target_utilization=36 / 97), REUSE
    )
    assert decisions.target_need == 3
    # then the cron's sessions go, though the API's have been idle longer
    assert {d.session.pid for d in decisions.to_terminate} == {30, 31, 32}
    # without what was learned, the oldest idle go first
    static = plan(snapshot(*api, *cron, *filler), policy(rules=rules, target_utilization=36 / 97))
    assert {d.session.pid for d in static.to_terminate} == {10, 11, 12}


# -- properties ----------------------------------------------------------------------------------


@st.composite
def reuse_strategy(draw: st.DrawFn) -> dict[tuple[str, str], ReuseStats]:
    periods = {}
    for application in draw(st.lists(st.sampled_from(APPLICATIONS), unique=True)):
        for state in draw(st.lists(st.sampled_from(IDLE_STATES), unique=True, min_size=1)):
            outcomes = st.sampled_from(list(PeriodOutcome))
            ages = st.floats(min_value=0, max_value=10_000)
            periods[(application, state)] = tuple(
                Period(age, outcome, age if outcome is PeriodOutcome.REUSED else None)
                for age, outcome in draw(st.lists(st.tuples(ages, outcomes), max_size=40))
            )
    return statistics(History(periods=periods))


@st.composite
def learning_policies(draw: st.DrawFn) -> Any:
    base = draw(policies_strategy())
    rules = []
    for rule in base.model_dump(mode="json")["rules"]:
        if draw(st.booleans()):
            low = draw(st.floats(min_value=1, max_value=500))
            rule["learned"] = {
                "quantile": draw(st.floats(min_value=0.5, max_value=1)),
                "margin_seconds": draw(st.floats(min_value=0, max_value=300)),
                "min_seconds": low,
                "max_seconds": low + draw(st.floats(min_value=0, max_value=3000)),
                "min_observations": draw(st.integers(min_value=1, max_value=10)),
            }
        rules.append(rule)
    return base.model_validate({**base.model_dump(mode="json"), "rules": rules})


@settings(max_examples=300, deadline=None)
@given(snap=snapshots_strategy(), pol=learning_policies(), reuse=reuse_strategy())
@pytest.mark.slow
def test_learning_never_plans_a_protected_session_nor_breaks_a_bound(snap, pol, reuse) -> None:
    decisions = plan(snap, pol, reuse)
    assert [d.session.pid for d in decisions.decisions] == [s.pid for s in snap.sessions]
    planned = decisions.to_terminate
    assert_within_budget(decisions, pol)
    rules = {rule.name: rule for rule in pol.rules}
    for decision in planned:
        assert_planned_safely(decision, snap, pol)
    for decision in decisions.decisions:
        rule = rules.get(decision.rule)
        if decision.threshold_source == "learned":
            # a learned threshold only where the rule asked, within its bounds, with evidence
            assert rule is not None
            assert rule.learned is not None
            assert (
                rule.learned.min_seconds <= decision.threshold_seconds <= rule.learned.max_seconds
            )
            assert decision.learned.observations >= rule.learned.min_observations
        elif decision.threshold_source == "static":
            assert decision.threshold_seconds == rule.states[decision.session.state]


@settings(max_examples=200, deadline=None)
@given(snap=snapshots_strategy(), pol=policies_strategy(), reuse=reuse_strategy())
@pytest.mark.slow
def test_a_policy_that_does_not_learn_plans_the_same_with_or_without_a_history(
    snap, pol, reuse
) -> None:
    assert plan(snap, pol, reuse) == plan(snap, pol)
