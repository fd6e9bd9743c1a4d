"""A pass result from a plan and its signals: what refused means, a pass that stopped, warnings."""

from __future__ import annotations

from dataclasses import fields, replace

import pytest

from reaper.core.planning import plan
from reaper.core.result import (
    _OUTCOME_COUNTS,
    _REASON_COUNTS,
    Counts,
    Outcome,
    Stop,
    refusal_fixes,
    summarize,
)
from tests.unit.planning_data import policy, session, snapshot

# The oldest session may be signalled, the next is another role's (no pg_signal_backend), the
# youngest a superuser's: a policy that allows superuser sessions wants all three.
SNAPSHOT = snapshot(
    session(10, idle_seconds=500),
    session(11, idle_seconds=400, may_signal=False),
    session(12, idle_seconds=300, may_signal=False, is_superuser=True),
)
PLAN = plan(SNAPSHOT, policy(terminate_superuser_sessions=True))


def outcomes(result) -> dict[int, Outcome]:
    return {r.pid: r.outcome for r in result.sessions if r.pid != 1}


def test_a_real_pass_reports_what_it_wanted_and_could_not_do_as_refused() -> None:
    result = summarize(
        "writer", SNAPSHOT, PLAN, {10: Outcome.TERMINATED}, dry_run=False, duration_seconds=0.1
    )
    assert outcomes(result) == {10: Outcome.TERMINATED, 11: Outcome.REFUSED, 12: Outcome.REFUSED}
    assert (result.counts.refused, result.counts.would_refuse) == (2, 0)


def test_every_count_is_tallied_from_the_sessions_or_the_plan() -> None:
    # A field of Counts that no table names would stay 0 whatever the pass did.
    tallied = ["examined", "matched", *_OUTCOME_COUNTS, *_REASON_COUNTS]
    assert sorted(tallied) == sorted(f.name for f in fields(Counts))


def test_a_dry_run_reports_would_refuse_never_refused() -> None:
    result = summarize("writer", SNAPSHOT, PLAN, {}, dry_run=True, duration_seconds=0.1)
    assert outcomes(result) == {
        10: Outcome.WOULD_TERMINATE,
        11: Outcome.WOULD_REFUSE,
        12: Outcome.WOULD_REFUSE,
    }
    assert (result.counts.refused, result.counts.would_refuse) == (0, 2)


def test_sessions_kept_by_the_policy_are_never_counted_refused() -> None:
    # given the same sessions behind a closed pressure gate
    closed = plan(SNAPSHOT, policy(terminate_superuser_sessions=True, min_utilization=0.9))
    result = summarize("writer", SNAPSHOT, closed, {}, dry_run=False, duration_seconds=0.1)
    assert set(outcomes(result).values()) == {Outcome.SPARED}
    assert (result.counts.refused, result.counts.gate_closed) == (0, 3)


def test_a_pass_stopped_before_its_terminate_statement_signalled_nothing() -> None:
    stop = Stop("only 0.10 s were left before its deadline")
    result = summarize("writer", SNAPSHOT, PLAN, {}, dry_run=False, duration_seconds=3, stop=stop)
    # the planned session was not signalled, and what it never tried is not a refusal
    assert outcomes(result) == {
        10: Outcome.STOPPED,
        11: Outcome.WOULD_REFUSE,
        12: Outcome.WOULD_REFUSE,
    }
    assert (result.counts.stopped, result.counts.terminated, result.counts.refused) == (1, 0, 0)
    assert result.stopped_before_terminating == "only 0.10 s were left before its deadline"


def test_a_terminate_statement_cut_off_leaves_each_planned_session_unconfirmed() -> None:
    stop = Stop("the terminate statement failed part way", signals_sent=True)
    result = summarize("writer", SNAPSHOT, PLAN, {}, dry_run=False, duration_seconds=3, stop=stop)
    assert outcomes(result)[10] is Outcome.UNCONFIRMED
    assert result.counts.unconfirmed == 1


@pytest.mark.parametrize(
    ("refused_pids", "fixes"),
    [
        ((), ()),
        ((11,), ("GRANT pg_signal_backend TO idle_reaper",)),
        ((12,), ("1 refused session(s) belong to a superuser: only a superuser",)),
        (
            (11, 12),
            (
                "GRANT pg_signal_backend TO idle_reaper",
                "1 refused session(s) belong to a superuser: only a superuser",
            ),
        ),
    ],
)
def test_each_kind_of_refusal_names_its_own_fix(refused_pids, fixes) -> None:
    # given a real pass in which only these sessions were refused
    others = tuple(s for s in SNAPSHOT.sessions if s.pid not in (11, 12) or s.pid in refused_pids)
    only = replace(SNAPSHOT, sessions=others)
    result = summarize(
        "writer",
        only,
        plan(only, policy(terminate_superuser_sessions=True)),
        {10: Outcome.TERMINATED},
        dry_run=False,
        duration_seconds=0.1,
    )
    found = refusal_fixes(result)
    assert len(found) == len(fixes)
    for fix, start in zip(found, fixes, strict=True):
        assert fix.startswith(start)
    if 12 in refused_pids:
        assert "exclude.users" in found[-1]


def test_a_superuser_reaper_gets_a_warning_with_the_least_privilege_fix() -> None:
    su_snapshot = replace(SNAPSHOT, role="postgres", role_is_superuser=True)
    result = summarize(
        "writer", su_snapshot, plan(su_snapshot, policy()), {}, dry_run=True, duration_seconds=0.1
    )
    (warning,) = result.warnings
    assert warning.startswith("postgres is a superuser: it needs only pg_monitor")
    assert "docs/database-role.md" in warning
    assert summarize("writer", SNAPSHOT, PLAN, {}, dry_run=True, duration_seconds=0).warnings == ()
