"""Shared by the functional tests: the reaper's target, short thresholds and their policies."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from reaper.core.policy import Policy, one_rule_policy, policy_from_mapping, render_policy
from reaper.pg.conninfo import ConnInfo
from tests.fix_db import dsn_for, wait_until

if TYPE_CHECKING:
    from tests.fix_db import PgServer, Role, SessionFactory

# Short enough to keep the suite fast, long enough that a freshly opened session is clearly young.
THRESHOLD = 0.5
# The function's path reads its policy or secret through moto before its snapshot, which can take
# a second on a loaded machine: a session opened just before the invocation must still be young.
FUNCTION_THRESHOLD = 1.0


def wait_past_threshold(threshold: float = THRESHOLD) -> None:
    """Sleep until sessions opened before the call are older than the threshold."""
    time.sleep(threshold + 0.3)


def target_for(pg_server: PgServer, role: Role) -> ConnInfo:
    """The connection of `role` to the test server."""
    return ConnInfo.from_dsn(dsn_for(pg_server, role.name, role.password), name="test")


def policy_for(factory: SessionFactory, **overrides: Any) -> Policy:
    """Reap this test's sessions only (its application prefix), idle past THRESHOLD.

    `overrides` are top-level policy fields; `rule={...}` changes fields of the one rule
    (`states` all with one threshold, `keep_newest`, or any other rule field).
    """
    rule: dict[str, Any] = dict(overrides.pop("rule", {}))
    states: dict[str, float] = rule.pop("states", {"idle": THRESHOLD})
    (threshold,) = set(states.values())
    policy = one_rule_policy(
        [f"{factory.prefix}*"],
        idle_seconds=threshold,
        states=tuple(states),
        rule_name="test",
        keep_newest=rule.pop("keep_newest", 0),
        source="test",
        allow_short_thresholds=True,
        **overrides,
    )
    if not rule:
        return policy
    # Rule fields one_rule_policy does not take (databases, client_addresses) are laid over it.
    document = policy.model_dump(mode="json")
    document["rules"][0].update(rule)
    return policy_from_mapping(document, source="test")


def policy_document(application_names: list[str], threshold: float) -> str:
    """A policy as JSON text: reap these applications idle past `threshold`."""
    return render_policy(
        one_rule_policy(
            application_names,
            idle_seconds=threshold,
            source="test",
            allow_short_thresholds=True,
        )
    )


def alive(factory: SessionFactory, pid: int) -> bool:
    return factory.state_of(pid) is not None


def ended(factory: SessionFactory, pid: int) -> bool:
    """Wait for a signalled backend to exit (it does so asynchronously); True once it has."""
    wait_until(lambda: not alive(factory, pid), message=f"backend {pid} ended")
    return True
