"""Shared by the functional tests: a reaper role, its target, short-threshold policies."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from reaper.core.policy import Policy, policy_from_mapping
from reaper.pg.target import Target
from tests.fix_db import dsn_for, wait_until

if TYPE_CHECKING:
    from tests.fix_db import PgServer, Role, RoleFactory, SessionFactory

# Short enough to keep the suite fast, long enough that a freshly opened session is clearly young.
THRESHOLD = 0.5


def wait_past_threshold(threshold: float = THRESHOLD) -> None:
    """Sleep until sessions opened before the call are older than the threshold."""
    time.sleep(threshold + 0.3)


def reaper_role(role_factory: RoleFactory, *grants: str) -> Role:
    """A non-superuser role for the reaper; by default with pg_monitor and pg_signal_backend."""
    return role_factory("reaper", grants=grants or ("pg_monitor", "pg_signal_backend"))


def target_for(pg_server: PgServer, role: Role) -> Target:
    return Target.from_dsn(dsn_for(pg_server, role.name, role.password), name="test")


def policy_for(factory: SessionFactory, **overrides: Any) -> Policy:
    """Reap this test's sessions only (its application prefix), idle past THRESHOLD."""
    rule: dict[str, Any] = {
        "name": "test",
        "application_names": [f"{factory.prefix}*"],
        "states": {"idle": THRESHOLD},
    }
    rule.update(overrides.pop("rule", {}))
    return policy_from_mapping(
        {"rules": [rule], "allow_short_thresholds": True, **overrides}, source="test"
    )


def policy_document(application_names: list[str], threshold: float) -> str:
    """A policy as JSON text: reap these applications idle past `threshold`."""
    return json.dumps(
        {
            "rules": [{"application_names": application_names, "states": {"idle": threshold}}],
            "allow_short_thresholds": True,
        }
    )


def alive(factory: SessionFactory, pid: int) -> bool:
    return factory.state_of(pid) is not None


def ended(factory: SessionFactory, pid: int) -> bool:
    """Wait for a signalled backend to exit (it does so asynchronously); True once it has."""
    wait_until(lambda: not alive(factory, pid), message=f"backend {pid} ended")
    return True
