"""Builders for planner and budget inputs: plain snapshots without a database, and hypothesis
strategies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from ipaddress import ip_address
from typing import Any

from hypothesis import strategies as st

from reaper.core.budget import NameTemplate
from reaper.core.policy import IDLE_STATES, Policy, one_rule_policy, policy_from_mapping
from reaper.core.snapshot import CLIENT_BACKEND, Connections, Session, Snapshot

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
OWN_PID = 1

# The budget's session names: application_name lambda:<function>.
NAMES = NameTemplate("lambda:{function}")
# max_connections 100, superuser_reserved_connections 3: 97 usable slots.
HUNDRED = Connections(
    client_connections=0,
    max_connections=100,
    superuser_reserved_connections=3,
    reserved_connections=0,
)


def session(
    pid: int,
    *,
    application_name: str = "lambda:orders",
    idle_seconds: float = 3600.0,
    state: str | None = "idle",
    user: str | None = "app",
    database: str | None = "appdb",
    client_addr: str | None = "10.0.1.5",
    backend_type: str | None = CLIENT_BACKEND,
    is_superuser: bool = False,
    is_listening: bool = False,
    may_signal: bool = True,
) -> Session:
    """A session whose state changed `idle_seconds` before NOW."""
    return Session(
        pid=pid,
        backend_start=NOW - timedelta(days=1),
        backend_type=backend_type,
        user=user,
        database=database,
        application_name=application_name,
        client_addr=client_addr,
        state=state,
        state_change=NOW - timedelta(seconds=idle_seconds),
        is_superuser=is_superuser,
        is_listening=is_listening,
        may_signal=may_signal,
    )


def own_session() -> Session:
    return session(OWN_PID, application_name="idle-reaper", state="active", idle_seconds=0)


def snapshot(
    *sessions: Session, max_connections: int = 100, client_connections: int | None = None
) -> Snapshot:
    """A snapshot holding the reaper's own backend plus the given sessions."""
    everything = (own_session(), *sessions)
    clients = sum(1 for s in sessions if s.backend_type == CLIENT_BACKEND)
    return Snapshot(
        taken_at=NOW,
        own_pid=OWN_PID,
        role="idle_reaper",
        server_version_num=180000,
        connections=Connections(
            client_connections=clients if client_connections is None else client_connections,
            max_connections=max_connections,
            superuser_reserved_connections=3,
            reserved_connections=0,
        ),
        sessions=everything,
    )


def assert_planned_safely(decision: Any, snap: Snapshot, pol: Policy) -> None:
    """A planned termination breaks no protection and is idle at least its threshold."""
    s = decision.session
    assert s.pid != snap.own_pid
    assert s.backend_type == CLIENT_BACKEND
    assert s.may_signal
    assert s.user is None or not any(fnmatchcase(s.user, p) for p in pol.exclude.users)
    assert not any(fnmatchcase(s.application_name, p) for p in pol.exclude.application_names)
    assert s.client_addr is None or not any(
        ip_address(s.client_addr) in block for block in pol.exclude.client_addresses
    )
    assert pol.terminate_superuser_sessions or not s.is_superuser
    assert not (pol.spare_listeners and s.is_listening)
    assert decision.idle_seconds is not None
    assert decision.threshold_seconds is not None
    assert decision.idle_seconds >= decision.threshold_seconds


def assert_within_budget(decisions: Any, pol: Policy) -> None:
    """No more terminations than the cap and the target allow, none with the gate closed."""
    planned = decisions.to_terminate
    assert len(planned) <= pol.max_terminations
    if decisions.target_need is not None:
        assert len(planned) <= decisions.target_need
    if not decisions.gate_open:
        assert planned == ()


def policy(**overrides: Any) -> Policy:
    """A policy reaping lambda:* idle for 60 s, with document-level overrides (`rules` too)."""
    if "rules" in overrides:
        return policy_from_mapping(overrides, source="test")
    return one_rule_policy(
        ["lambda:*"], idle_seconds=60, rule_name="lambda", source="test", **overrides
    )


# --- hypothesis strategies ------------------------------------------------------------------

APPLICATIONS = ("lambda:orders", "lambda:payments", "lambda:admin", "metabase", "", "psql")
USERS = ("app", "report", "rdsadmin", "admin", None)
BACKEND_TYPES = (
    CLIENT_BACKEND,
    CLIENT_BACKEND,
    CLIENT_BACKEND,
    "autovacuum worker",
    "walsender",
    "background worker",
    "parallel worker",
    None,
)
STATES = (*IDLE_STATES, "active", "fastpath function call", "disabled", None)


@st.composite
def sessions_strategy(draw: st.DrawFn, pid: int) -> Session:
    return session(
        pid,
        application_name=draw(st.sampled_from(APPLICATIONS)),
        idle_seconds=draw(st.floats(min_value=0, max_value=86_400)),
        state=draw(st.sampled_from(STATES)),
        user=draw(st.sampled_from(USERS)),
        database=draw(st.sampled_from(("appdb", "postgres", None))),
        client_addr=draw(st.sampled_from(("10.0.1.5", "192.168.3.4", "::1", None))),
        backend_type=draw(st.sampled_from(BACKEND_TYPES)),
        is_superuser=draw(st.booleans()),
        is_listening=draw(st.booleans()),
        may_signal=draw(st.booleans()),
    )


@st.composite
def snapshots_strategy(draw: st.DrawFn) -> Snapshot:
    count = draw(st.integers(min_value=0, max_value=40))
    sessions = [draw(sessions_strategy(pid)) for pid in range(2, count + 2)]
    max_connections = draw(st.integers(min_value=10, max_value=500))
    return snapshot(*sessions, max_connections=max_connections)


@st.composite
def rules_strategy(draw: st.DrawFn, index: int) -> dict[str, Any]:
    states = draw(
        st.dictionaries(
            st.sampled_from(IDLE_STATES),
            st.floats(min_value=1, max_value=7200),
            min_size=1,
        )
    )
    rule: dict[str, Any] = {
        "name": f"r{index}",
        "application_names": draw(
            st.lists(st.sampled_from(("lambda:*", "lambda:orders", "*", "metabase")), min_size=1)
        ),
        "states": states,
        "keep_newest": draw(st.integers(min_value=0, max_value=3)),
    }
    if draw(st.booleans()):
        rule["users"] = draw(st.lists(st.sampled_from(("app", "report", "adm*")), min_size=1))
    if draw(st.booleans()):
        rule["client_addresses"] = draw(
            st.lists(st.sampled_from(("10.0.0.0/8", "::1/128", "192.168.0.0/16")), min_size=1)
        )
    return rule


@st.composite
def policies_strategy(draw: st.DrawFn) -> Policy:
    rule_count = draw(st.integers(min_value=1, max_value=3))
    document: dict[str, Any] = {
        "rules": [draw(rules_strategy(i)) for i in range(rule_count)],
        "exclude": {
            "users": draw(st.lists(st.sampled_from(("report", "adm*")), max_size=2)),
            "application_names": draw(st.lists(st.sampled_from(("metabase", "lambda:admin")))),
            "client_addresses": draw(
                st.lists(st.sampled_from(("192.168.3.4/32", "::/0")), max_size=1)
            ),
        },
        "terminate_superuser_sessions": draw(st.booleans()),
        "spare_listeners": draw(st.booleans()),
        "max_terminations": draw(st.integers(min_value=0, max_value=30)),
        "min_utilization": draw(st.floats(min_value=0, max_value=1)),
        "allow_short_thresholds": True,
    }
    if draw(st.booleans()):
        document["target_utilization"] = draw(st.floats(min_value=0, max_value=1))
    return policy_from_mapping(document, source="hypothesis")
