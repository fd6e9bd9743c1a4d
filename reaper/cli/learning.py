"""`reaper observe` (build a reuse history, terminating nothing) and `reaper advise` (what a
history says of each application, and the threshold it suggests)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from reaper.actions.observe import (
    observe_for,
    read_any_history_file,
    read_history_file,
    write_history_file,
)
from reaper.cli.render import age, table
from reaper.core.advice import advise
from reaper.core.reuse import PeriodOutcome

if TYPE_CHECKING:
    from pathlib import Path

    from reaper.core.advice import Advice
    from reaper.core.policy import Policy
    from reaper.core.reuse import Observation
    from reaper.pg.conninfo import ConnInfo
    from reaper.pg.timeouts import Timeouts


def observe_main(
    target: ConnInfo,
    history_path: Path,
    *,
    interval_seconds: float,
    duration_seconds: float,
    timeouts: Timeouts,
    as_json: bool,
) -> Advice:
    """Observe the target, saving the history after every snapshot; print a line per snapshot
    (not with `as_json`), then what the history says. Returns that advice."""
    history = read_history_file(history_path, target=target.name)

    def saved(observation: Observation) -> None:
        write_history_file(history_path, observation.history, target=target.name)
        if not as_json:
            print(render_observation(observation), flush=True)

    history = observe_for(
        target,
        history,
        interval_seconds=interval_seconds,
        duration_seconds=duration_seconds,
        on_snapshot=saved,
        timeouts=timeouts,
    )
    advice = advise(history, None, target=target.name)
    print(json.dumps(advice.to_dict(), indent=2) if as_json else render_advice(advice))
    return advice


def advise_main(history_path: Path, policy: Policy | None, *, as_json: bool) -> Advice:
    """Print what the history file says, against `policy` when given; returns it."""
    found = read_any_history_file(history_path)
    advice = advise(found.history, policy, target=found.target)
    print(json.dumps(advice.to_dict(), indent=2) if as_json else render_advice(advice))
    return advice


def render_observation(observation: Observation) -> str:
    """One line per snapshot: when, how many sessions, and what finished since the last."""
    history = observation.history
    outcomes = [period.outcome for _group, period in observation.finished]
    when = history.observed_at.isoformat(timespec="seconds") if history.observed_at else "?"
    return f"{when}: {len(history.sessions)} client sessions; since the last snapshot " + ", ".join(
        f"{outcomes.count(outcome)} {outcome.value.replace('_', ' ')}"
        for outcome in (PeriodOutcome.REUSED, PeriodOutcome.ENDED, PeriodOutcome.TERMINATED)
    )


def render_advice(advice: Advice) -> str:
    """What was seen per application and state, then the thresholds: current and recommended."""
    when = advice.observed_at.isoformat(timespec="seconds") if advice.observed_at else "never"
    lines = [f"{advice.target}: reuse history, last snapshot {when}"]
    if not advice.applications:
        lines.append("no idle session seen yet: observe longer (reaper observe)")
        return "\n".join(lines)
    seen = []
    thresholds = []
    for one in advice.applications:
        gaps = one.gap_before_reuse
        seen.append(
            (
                one.application or "(none)",
                one.state,
                one.sessions_seen,
                one.idle_periods,
                one.reuses,
                one.ended,
                one.terminated,
                one.idle_now,
                *(
                    ("", "", "", "")
                    if gaps is None
                    else (age(gaps.p50), age(gaps.p90), age(gaps.p99), age(gaps.max))
                ),
            )
        )
        current = (
            ""
            if one.current_threshold_seconds is None
            else f"{age(one.current_threshold_seconds)} {one.current_threshold_source}"
        )
        recommended = one.recommended
        thresholds.append(
            (
                one.application or "(none)",
                one.state,
                one.rule or "(no rule)",
                current,
                _count(one.reused_after_termination_at_current),
                age(recommended.seconds) or "-",
                _count(one.reused_after_termination_at_recommended),
                recommended.why(),
            )
        )
    lines += [
        "",
        "idle periods seen; idle age last seen before a reuse (p50, p90, p99, max)",
        table(
            (
                "application",
                "state",
                "sessions",
                "periods",
                "reused",
                "ended",
                "terminated",
                "idle now",
                "p50",
                "p90",
                "p99",
                "max",
            ),
            seen,
        ),
        "",
        "thresholds; hits: reused sessions a pass at that threshold would have terminated first",
        table(
            (
                "application",
                "state",
                "rule",
                "current",
                "hits",
                "recommended",
                "hits",
                "why",
            ),
            thresholds,
        ),
    ]
    return "\n".join(lines)


def _count(value: int | None) -> str:
    return "" if value is None else str(value)
