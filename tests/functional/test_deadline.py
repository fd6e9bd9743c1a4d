"""A pass's deadline against real sessions: a pass out of time or given up terminates nothing,
not even when its thread resumes later, and every session it may have terminated is audited.

The first tests stop a pass at a chosen step through its step observer (the bench's hook), so
they need no timing; the last ones reproduce the probe that found the fault, through the Lambda
handler: a plan that keeps a CPU busy longer than the budget (the planner wrapped in a busy loop:
the policy limits and the compiled matchers keep a real policy's plan short) and a budget it
overruns.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from reaper.actions.run import PassDeadline, run_pass
from reaper.core.planning import plan
from reaper.core.result import Outcome
from reaper.errors import TargetsFailedError
from reaper.pg import gateway
from reaper.pg.timeouts import Timeouts
from tests.fix_aws import invoke, load_event, log_records, metric
from tests.functional.reaping import (
    THRESHOLD,
    policy_document,
    policy_for,
    wait_past_threshold,
)
from tests.functional.test_faults import lock_the_role_catalog

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.functional.conftest import Apps

# Long enough that only the event under test ends the reaper's statement.
PATIENT = Timeouts(statement_ms=60_000, lock_ms=60_000)


def outcome_of(result, pid: int) -> Outcome:
    return next(r.outcome for r in result.sessions if r.pid == pid)


def after_planning(action: Callable[[], None]) -> Callable[[str, float], None]:
    """A step observer that runs `action` when the pass has planned, before it terminates."""

    def observe(step: str, _seconds: float) -> None:
        if step == "plan":
            action()

    return observe


@pytest.fixture
def stale_pid(apps: Apps) -> int:
    """A session idle past THRESHOLD, which `policy_for(session_factory)` reaps: its pid."""
    return apps.open_stale("orders", threshold=THRESHOLD)


@pytest.mark.safety
def test_a_pass_given_up_while_it_plans_terminates_nothing_when_it_resumes(
    stale_pid, session_factory, apps, reaper
) -> None:
    # given a stale session, and a pass that stops after planning until the test resumes it
    deadline = PassDeadline()
    planned, resume = threading.Event(), threading.Event()
    results = []

    def hold() -> None:
        planned.set()
        resume.wait(timeout=60)

    worker = threading.Thread(
        target=lambda: results.append(
            run_pass(
                reaper, policy_for(session_factory), on_step=after_planning(hold), deadline=deadline
            )
        )
    )
    worker.start()
    assert planned.wait(timeout=60)
    # when its caller gives it up (the invocation's time ran out), then the thread resumes, as a
    # frozen Lambda sandbox's does at its next thaw
    assert deadline.give_up()
    resume.set()
    worker.join(timeout=60)
    # then it stopped before terminating, says so, and the session lives
    (result,) = results
    assert "gave it up" in (result.stopped_before_terminating or "")
    assert outcome_of(result, stale_pid) is Outcome.STOPPED
    assert result.counts.terminated == 0
    assert apps.alive(stale_pid)


@pytest.mark.safety
def test_a_pass_whose_deadline_passes_while_it_plans_stops_before_terminating(
    stale_pid, session_factory, apps, reaper
) -> None:
    # given a stale session and a pass whose plan outlasts its deadline
    deadline = PassDeadline(time.monotonic() + 1.0)

    def outlast() -> None:
        time.sleep(max(0.0, deadline.seconds_left() or 0.0))

    # when it runs
    result = run_pass(
        reaper, policy_for(session_factory), on_step=after_planning(outlast), deadline=deadline
    )
    # then it terminated nothing and says why
    assert (result.stopped_before_terminating or "").startswith("only ")
    assert outcome_of(result, stale_pid) is Outcome.STOPPED
    assert apps.alive(stale_pid)


def test_the_terminate_statement_gets_the_time_left_as_its_statement_timeout(
    stale_pid, session_factory, apps, reaper
) -> None:
    with gateway.connect(reaper) as conn:
        snapshot = gateway.take_snapshot(conn)
        planned = [d.session for d in plan(snapshot, policy_for(session_factory)).to_terminate]
        assert gateway.terminate(conn, planned, timeout_ms=1234) == {stale_pid: Outcome.TERMINATED}
        shown = conn.execute("SELECT current_setting('statement_timeout')").fetchone()
    assert shown == ("1234ms",)


@pytest.mark.safety
def test_a_terminate_statement_cut_off_reports_every_planned_session_unconfirmed(
    stale_pid, session_factory, apps, reaper, admin_conn
) -> None:
    # given a stale session, and a pass whose terminate statement waits behind a catalog lock
    lockers = []
    deadline = PassDeadline(time.monotonic() + 2.0)
    try:
        # when its deadline (its statement_timeout) cuts the statement off
        result = run_pass(
            reaper,
            policy_for(session_factory),
            timeouts=PATIENT,
            on_step=after_planning(lambda: lockers.append(lock_the_role_catalog(admin_conn))),
            deadline=deadline,
        )
    finally:
        for locker in lockers:
            locker.close()
    # then its result names every session the statement may have signalled, and why
    assert outcome_of(result, stale_pid) is Outcome.UNCONFIRMED
    assert result.counts.unconfirmed == 1
    assert "statement_timeout" in (result.stopped_before_terminating or "")
    # (here the statement never reached the signal)
    assert apps.alive(stale_pid)


# -- the probe: a slow plan and a small budget, through the Lambda handler -------------------

SESSIONS = 40
# Longer than both budgets below (2.5 s and 3 s), short enough for the suite.
PLAN_SECONDS = 6.0


def busy_planner(seconds: float) -> Callable[..., Any]:
    """The planner, after keeping this thread busy on the CPU for `seconds` (a CPU-bound plan:
    no sleep the interpreter could cut short)."""

    def slow_plan(*args: Any, **kwargs: Any) -> Any:
        until = time.perf_counter() + seconds
        while time.perf_counter() < until:
            pass
        return plan(*args, **kwargs)

    return slow_plan


@dataclass
class SlowFunction:
    """The function of `slow_function`, and the stale sessions its passes may not terminate."""

    pids: list[int]
    apps: Apps
    env: pytest.MonkeyPatch

    def fail(
        self, capsys: pytest.CaptureFixture[str], *, timeout_seconds: int, **variables: str
    ) -> str:
        """Invoke it with these environment `variables` on a scheduled event, which fails, then
        wait for any pass it did not wait for to end: what the function printed."""
        for name, value in variables.items():
            self.env.setenv(name, value)
        capsys.readouterr()
        with pytest.raises(TargetsFailedError):
            invoke(load_event("scheduled.json"), timeout_seconds=timeout_seconds)
        wait_for_abandoned_passes()
        return capsys.readouterr().out

    def assert_terminated_nothing(self, out: str) -> None:
        """None of its sessions was terminated: first none without an audit line (what the
        probe found), then none at all."""
        audited = {
            r["pid"]
            for r in log_records(out)
            if r.get("audit") == "session" and r["outcome"] in ("terminated", "unconfirmed")
        }
        alive = {pid for pid in self.pids if self.apps.alive(pid)}
        assert [pid for pid in self.pids if pid not in audited and pid not in alive] == []
        assert alive == set(self.pids)


@pytest.fixture
def slow_function(database_url, apps, function_env, tmp_path, monkeypatch) -> SlowFunction:
    """The function (REAPER_DATABASE_URL: `database_url`) with a policy in a file, a planner
    that takes PLAN_SECONDS, and SESSIONS stale 'orders' sessions."""
    policy = tmp_path / "policy.json"
    policy.write_text(policy_document([apps.name("orders")], THRESHOLD))
    function_env.setenv("REAPER_POLICY_FILE", str(policy))
    monkeypatch.setattr("reaper.actions.run.plan", busy_planner(PLAN_SECONDS))
    pids = [apps.open("orders") for _ in range(SESSIONS)]
    wait_past_threshold()
    return SlowFunction(pids, apps, function_env)


def wait_for_abandoned_passes() -> None:
    """Join the fan-out's workers the handler did not wait for: what they do next is done."""
    for thread in threading.enumerate():
        if thread.name.startswith("reaper-target"):
            thread.join(timeout=120)
            assert not thread.is_alive(), f"{thread.name} still runs"


def the_line(out: str, audit: str) -> dict[str, Any]:
    """The one log line of this `audit` kind in `out`."""
    (line,) = [r for r in log_records(out) if r.get("audit") == audit]
    return line


@pytest.mark.slow
def test_a_pass_given_up_at_the_invocation_deadline_never_terminates_afterwards(
    slow_function, capsys
) -> None:
    # given stale sessions, a plan slower than the invocation's budget (8 s - 5.5 s margin)
    # when the function runs, reports the target out of time and returns, and the pass it gave
    # up has gone on to finish its plan
    out = slow_function.fail(capsys, timeout_seconds=8, REAPER_DEADLINE_MARGIN_SECONDS="5.5")
    assert "given up before its terminate step" in the_line(out, "target_error")["error"], (
        "the plan must outlast the budget for this test to mean anything: raise PLAN_SECONDS"
    )
    assert metric(out, "DeadlineExceeded", Target="default").value == 1
    # then that pass has terminated nothing
    slow_function.assert_terminated_nothing(out)


@pytest.mark.slow
def test_a_cpu_bound_plan_past_the_target_timeout_terminates_nothing(slow_function, capsys) -> None:
    # given stale sessions, a plan slower than REAPER_TARGET_TIMEOUT_SECONDS, and plenty of
    # time left in the invocation
    # when the function runs
    out = slow_function.fail(capsys, timeout_seconds=120, REAPER_TARGET_TIMEOUT_SECONDS="3")
    # then the pass stopped itself before terminating, and its summary line says so
    summary = the_line(out, "summary")
    assert summary["status"] == "stopped", "the plan must outlast REAPER_TARGET_TIMEOUT_SECONDS"
    assert summary["counts"]["stopped"] == SESSIONS
    assert the_line(out, "target_error")["error_type"] == "DeadlineExceededError"
    slow_function.assert_terminated_nothing(out)
