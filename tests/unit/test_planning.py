"""The planner on plain snapshots: each rule and protection, then properties over random inputs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings

from reaper.core import planning
from reaper.core.planning import KEEPABLE_STATE, Reason, check_visibility, plan
from reaper.errors import VisibilityError
from tests.unit.planning_data import (
    OWN_PID,
    assert_planned_safely,
    assert_within_budget,
    own_session,
    policies_strategy,
    policy,
    session,
    snapshot,
    snapshots_strategy,
)


def reasons(result_plan: object) -> dict[int, Reason]:
    return {d.session.pid: d.reason for d in result_plan.decisions}  # type: ignore[attr-defined]


def test_idle_lambda_session_past_threshold_is_planned() -> None:
    # given a Lambda session idle for an hour under a 60 s rule
    decisions = plan(snapshot(session(10)), policy())
    # then it is planned, with the rule and its idle age
    [planned] = decisions.to_terminate
    assert planned.session.pid == 10
    assert planned.rule == "lambda"
    assert planned.idle_seconds == pytest.approx(3600.0)


@pytest.mark.parametrize(
    ("sess", "expected"),
    [
        (own_session(), Reason.OWN_BACKEND),
        (session(10, backend_type="autovacuum worker"), Reason.NOT_CLIENT_BACKEND),
        (session(10, backend_type="walsender"), Reason.NOT_CLIENT_BACKEND),
        (session(10, backend_type="background worker"), Reason.NOT_CLIENT_BACKEND),
        (session(10, backend_type="parallel worker"), Reason.NOT_CLIENT_BACKEND),
        (session(10, user="rdsadmin"), Reason.EXCLUDED_USER),
        (session(10, is_superuser=True), Reason.SUPERUSER),
        (session(10, application_name="metabase"), Reason.NO_RULE_MATCHES),
        (session(10, state="active"), Reason.STATE_NOT_COVERED),
        (session(10, state="idle in transaction"), Reason.STATE_NOT_COVERED),
        (session(10, is_listening=True), Reason.LISTENER),
        (session(10, idle_seconds=59.9), Reason.YOUNGER_THAN_THRESHOLD),
        (session(10, may_signal=False), Reason.NOT_SIGNALLABLE),
    ],
    ids=lambda value: getattr(value, "value", None) or "",
)
def test_protected_or_unmatched_session_is_spared_with_its_reason(sess, expected) -> None:
    decisions = plan(snapshot(sess) if sess.pid != OWN_PID else snapshot(), policy())
    assert reasons(decisions)[sess.pid] is expected
    assert decisions.to_terminate == ()


def test_excluded_application_wins_over_a_matching_rule() -> None:
    decisions = plan(
        snapshot(session(10, application_name="lambda:admin")),
        policy(exclude={"application_names": ["lambda:admin"]}),
    )
    assert reasons(decisions)[10] is Reason.EXCLUDED_APPLICATION


@pytest.mark.parametrize(
    ("blocks", "client_addr"),
    [
        (["10.0.3.7/32"], "10.0.3.7"),
        (["10.0.3.0/24", "192.168.0.0/16"], "192.168.9.9"),
        (["fd00::/8"], "fd00::17"),
    ],
)
def test_excluded_address_wins_over_a_matching_rule(blocks, client_addr) -> None:
    # given a pooler's idle server connection under a Lambda's name, and one Lambda elsewhere
    decisions = plan(
        snapshot(session(10, client_addr=client_addr), session(11, client_addr="10.0.1.5")),
        policy(exclude={"client_addresses": blocks}),
    )
    # then the excluded address is spared and only the other session is planned
    assert reasons(decisions)[10] is Reason.EXCLUDED_ADDRESS
    assert [d.session.pid for d in decisions.to_terminate] == [11]


def test_address_exclusions_never_cover_unix_socket_sessions() -> None:
    # given a session over the Unix socket (no client address) and blocks covering every address
    decisions = plan(
        snapshot(session(10, client_addr=None)),
        policy(exclude={"client_addresses": ["0.0.0.0/0", "::/0"]}),
    )
    # then it is governed by the rules as usual: an address exclusion cannot name it
    assert reasons(decisions)[10] is Reason.IDLE_TOO_LONG


def test_superuser_session_is_planned_only_when_the_policy_allows_it() -> None:
    decisions = plan(
        snapshot(session(10, is_superuser=True)), policy(terminate_superuser_sessions=True)
    )
    assert [d.session.pid for d in decisions.to_terminate] == [10]


def test_listener_is_planned_when_listeners_are_not_spared() -> None:
    decisions = plan(snapshot(session(10, is_listening=True)), policy(spare_listeners=False))
    assert [d.session.pid for d in decisions.to_terminate] == [10]


def test_each_state_has_its_own_threshold() -> None:
    rules = [
        {
            "application_names": ["lambda:*"],
            "states": {"idle": 600, "idle in transaction": 60},
        }
    ]
    decisions = plan(
        snapshot(
            session(10, state="idle", idle_seconds=120),
            session(11, state="idle in transaction", idle_seconds=120),
        ),
        policy(rules=rules),
    )
    assert reasons(decisions) == {
        OWN_PID: Reason.OWN_BACKEND,
        10: Reason.YOUNGER_THAN_THRESHOLD,
        11: Reason.IDLE_TOO_LONG,
    }


def test_first_rule_covering_the_state_governs() -> None:
    rules = [
        {"name": "slow", "application_names": ["lambda:*"], "states": {"idle": 7200}},
        {"name": "txn", "application_names": ["lambda:*"], "states": {"idle in transaction": 60}},
    ]
    decisions = plan(
        snapshot(
            session(10, state="idle", idle_seconds=3600),
            session(11, state="idle in transaction", idle_seconds=3600),
        ),
        policy(rules=rules),
    )
    by_pid = {d.session.pid: d for d in decisions.decisions}
    assert (by_pid[10].rule, by_pid[10].reason) == ("slow", Reason.YOUNGER_THAN_THRESHOLD)
    assert (by_pid[11].rule, by_pid[11].reason) == ("txn", Reason.IDLE_TOO_LONG)


@pytest.mark.parametrize(
    ("field", "values", "matching", "other"),
    [
        ("users", ["app"], {"user": "app"}, {"user": "report"}),
        ("databases", ["app*"], {"database": "appdb"}, {"database": "postgres"}),
        ("client_addresses", ["10.0.0.0/8"], {"client_addr": "10.0.1.5"}, {"client_addr": "::1"}),
        ("client_addresses", ["10.0.0.0/8"], {"client_addr": "10.9.9.9"}, {"client_addr": None}),
    ],
)
def test_rule_filters_select_only_matching_sessions(field, values, matching, other) -> None:
    rules = [{"application_names": ["lambda:*"], "states": {"idle": 60}, field: values}]
    decisions = plan(snapshot(session(10, **matching), session(11, **other)), policy(rules=rules))
    assert reasons(decisions)[10] is Reason.IDLE_TOO_LONG
    assert reasons(decisions)[11] is Reason.NO_RULE_MATCHES


def test_cap_terminates_the_oldest_idle_first() -> None:
    sessions = [session(10 + i, idle_seconds=100 + i * 10) for i in range(5)]
    decisions = plan(snapshot(*sessions), policy(max_terminations=2))
    assert [d.session.pid for d in decisions.to_terminate] == [14, 13]
    assert [reasons(decisions)[pid] for pid in (10, 11, 12)] == [Reason.OVER_CAP] * 3


def test_keep_newest_spares_the_most_recently_active_idle_sessions_per_application() -> None:
    rules = [{"application_names": ["lambda:*"], "states": {"idle": 60}, "keep_newest": 2}]
    sessions = [
        session(10, idle_seconds=400),
        session(11, idle_seconds=300),
        session(12, idle_seconds=200),
        session(13, idle_seconds=100),
        session(20, application_name="lambda:payments", idle_seconds=500),
    ]
    decisions = plan(snapshot(*sessions), policy(rules=rules))
    assert reasons(decisions)[12] is Reason.KEPT_AS_NEWEST
    assert reasons(decisions)[13] is Reason.KEPT_AS_NEWEST
    assert reasons(decisions)[20] is Reason.KEPT_AS_NEWEST
    assert sorted(d.session.pid for d in decisions.to_terminate) == [10, 11]


def test_keep_newest_counts_young_idle_sessions_as_the_warm_ones() -> None:
    rules = [{"application_names": ["lambda:*"], "states": {"idle": 60}, "keep_newest": 1}]
    decisions = plan(
        snapshot(session(10, idle_seconds=400), session(11, idle_seconds=5)), policy(rules=rules)
    )
    assert reasons(decisions)[11] is Reason.YOUNGER_THAN_THRESHOLD
    assert [d.session.pid for d in decisions.to_terminate] == [10]


def test_keep_newest_never_keeps_a_session_idle_in_a_transaction() -> None:
    rules = [
        {
            "application_names": ["lambda:*"],
            "states": {"idle in transaction": 60},
            "keep_newest": 5,
        }
    ]
    decisions = plan(snapshot(session(10, state="idle in transaction")), policy(rules=rules))
    assert [d.session.pid for d in decisions.to_terminate] == [10]


def test_closed_pressure_gate_plans_nothing() -> None:
    # 2 clients of 97 usable slots is about 2 %, below the 50 % gate
    decisions = plan(snapshot(session(10)), policy(min_utilization=0.5))
    assert not decisions.gate_open
    assert reasons(decisions)[10] is Reason.GATE_CLOSED


def test_open_pressure_gate_plans_as_usual() -> None:
    sessions = [session(10 + i) for i in range(60)]
    decisions = plan(snapshot(*sessions), policy(min_utilization=0.5, max_terminations=100))
    assert decisions.gate_open
    assert len(decisions.to_terminate) == 60


def test_target_utilization_terminates_only_what_brings_it_down() -> None:
    # 60 clients (the reaper's own connection is not one) of 97 usable; 50 % allows 48, so 12
    # must go
    sessions = [session(10 + i, idle_seconds=1000 + i) for i in range(60)]
    decisions = plan(snapshot(*sessions), policy(target_utilization=0.5, max_terminations=100))
    assert decisions.target_need == 12
    assert len(decisions.to_terminate) == 12
    assert {d.session.pid for d in decisions.to_terminate} == set(range(58, 70))
    assert reasons(decisions)[10] is Reason.OVER_TARGET


def test_target_already_met_plans_nothing() -> None:
    decisions = plan(snapshot(session(10)), policy(target_utilization=0.9))
    assert decisions.target_need == 0
    assert reasons(decisions)[10] is Reason.OVER_TARGET


def test_each_pattern_list_is_compiled_once_per_plan_whatever_the_number_of_sessions(
    monkeypatch,
) -> None:
    # given 150 rules, each with its own application and user lists (300 lists: more than a
    # 256-entry cache holds), and the exclusions' two lists
    rules = [
        {"name": f"r{i}", "application_names": [f"lambda:app{i}-*"], "users": [f"user{i}"]}
        for i in range(150)
    ]
    big_policy = policy(rules=rules, allow_short_thresholds=True)
    compiled: list[tuple[str, ...]] = []
    real_compile = planning.compile_globs

    def counting_compile(patterns: tuple[str, ...]) -> object:
        compiled.append(patterns)
        return real_compile(patterns)

    monkeypatch.setattr(planning, "compile_globs", counting_compile)
    # when it plans over 10 sessions, then over 1,000 matching ones
    counts = []
    for size in (10, 1_000):
        sessions = [
            session(10 + i, application_name=f"lambda:app{i % 150}-x", user=f"user{i % 150}")
            for i in range(size)
        ]
        compiled.clear()
        decided = plan(snapshot(*sessions), big_policy)
        assert len(decided.to_terminate) == min(size, 50)
        counts.append(len(compiled))
    # then every list was compiled exactly once, however many sessions were matched
    assert counts == [302, 302]
    assert len(set(compiled)) == 302


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {
                "rules": [
                    {"application_names": ["lambda:*"], "states": {"idle": 60}, "keep_newest": 1}
                ]
            },
            Reason.KEPT_AS_NEWEST,
        ),
        ({"min_utilization": 0.5}, Reason.GATE_CLOSED),
        ({"target_utilization": 0.9}, Reason.OVER_TARGET),
    ],
    ids=lambda value: getattr(value, "value", None) or "",
)
def test_a_session_the_role_may_not_signal_is_not_refused_when_no_termination_was_wanted(
    overrides, expected
) -> None:
    # given a session the reaper's role may not signal, which the policy would keep anyway
    decisions = plan(snapshot(session(10, may_signal=False)), policy(**overrides))
    # then it is spared for that reason, not refused
    assert reasons(decisions)[10] is expected


def test_a_session_over_the_cap_is_not_refused() -> None:
    # given two signallable sessions older than one the role may not signal, and a cap of 2
    sessions = [
        session(10, idle_seconds=500),
        session(11, idle_seconds=400),
        session(12, idle_seconds=300, may_signal=False),
    ]
    decisions = plan(snapshot(*sessions), policy(max_terminations=2))
    # then the cap was reached before it: it is over the cap, not refused
    assert reasons(decisions)[12] is Reason.OVER_CAP
    assert [d.session.pid for d in decisions.to_terminate] == [10, 11]


def test_a_refusal_takes_no_place_under_the_cap() -> None:
    # given the oldest session is one the role may not signal, and a cap of 1
    sessions = [session(10, idle_seconds=500, may_signal=False), session(11, idle_seconds=400)]
    decisions = plan(snapshot(*sessions), policy(max_terminations=1))
    # then it is refused (the pass wanted it) and the next one is still terminated
    assert reasons(decisions)[10] is Reason.NOT_SIGNALLABLE
    assert [d.session.pid for d in decisions.to_terminate] == [11]


def test_a_superuser_session_the_policy_would_terminate_is_refused_as_a_superusers() -> None:
    su = session(10, is_superuser=True, may_signal=False)
    decisions = plan(snapshot(su), policy(terminate_superuser_sessions=True))
    assert reasons(decisions)[10] is Reason.SUPERUSER_NOT_SIGNALLABLE
    assert decisions.to_terminate == ()


def test_role_that_cannot_see_other_sessions_is_refused_before_planning() -> None:
    hidden = session(10, state=None, backend_type=None, client_addr=None)
    with pytest.raises(VisibilityError, match="pg_monitor"):
        check_visibility(snapshot(hidden))


# --- properties over random snapshots and policies ----------------------------------------


@settings(max_examples=300, deadline=None)
@given(snap=snapshots_strategy(), pol=policies_strategy())
@pytest.mark.slow
def test_no_protected_session_is_ever_planned(snap, pol) -> None:
    for decision in plan(snap, pol).to_terminate:
        s = decision.session
        assert_planned_safely(decision, snap, pol)
        assert s.state == next(
            state
            for rule in pol.rules
            if rule.name == decision.rule
            for state in rule.states
            if state == s.state
        )


@settings(max_examples=300, deadline=None)
@given(snap=snapshots_strategy(), pol=policies_strategy())
@pytest.mark.slow
def test_cap_and_target_are_never_exceeded_and_the_oldest_go_first(snap, pol) -> None:
    decisions = plan(snap, pol)
    planned = decisions.to_terminate
    assert_within_budget(decisions, pol)
    budget_skipped = [
        d for d in decisions.decisions if d.reason in (Reason.OVER_CAP, Reason.OVER_TARGET)
    ]
    if planned and budget_skipped:
        youngest_planned = min(d.idle_seconds or 0 for d in planned)
        oldest_skipped = max(d.idle_seconds or 0 for d in budget_skipped)
        assert youngest_planned >= oldest_skipped


@settings(max_examples=300, deadline=None)
@given(snap=snapshots_strategy(), pol=policies_strategy())
@pytest.mark.slow
def test_every_session_gets_exactly_one_decision(snap, pol) -> None:
    decisions = plan(snap, pol)
    assert [d.session.pid for d in decisions.decisions] == [s.pid for s in snap.sessions]


@settings(max_examples=300, deadline=None)
@given(snap=snapshots_strategy(), pol=policies_strategy())
@pytest.mark.slow
def test_keep_newest_sessions_of_each_application_survive(snap, pol) -> None:
    decisions = plan(snap, pol)
    planned = {d.session.pid for d in decisions.to_terminate}
    by_group: dict[tuple[str, str], list] = {}
    for d in decisions.decisions:
        covered = d.reason in (
            Reason.IDLE_TOO_LONG,
            Reason.YOUNGER_THAN_THRESHOLD,
            Reason.NOT_SIGNALLABLE,
            Reason.SUPERUSER_NOT_SIGNALLABLE,
            Reason.KEPT_AS_NEWEST,
            Reason.GATE_CLOSED,
            Reason.OVER_CAP,
            Reason.OVER_TARGET,
        )
        if covered and d.session.state == KEEPABLE_STATE:
            by_group.setdefault((d.rule, d.session.application_name), []).append(d.session)
    keep = {rule.name: rule.keep_newest for rule in pol.rules}
    for (rule_name, _app), sessions in by_group.items():
        newest = sorted(sessions, key=lambda s: (-s.state_change.timestamp(), -s.pid))
        for s in newest[: keep[rule_name]]:
            assert s.pid not in planned
