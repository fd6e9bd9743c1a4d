"""The `reaper` command as a user runs it: a real process, real sessions, exit codes, output."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from tests.fix_db import dsn_for
from tests.functional.reaping import alive, ended, reaper_role, wait_past_threshold

if TYPE_CHECKING:
    from pathlib import Path


def reaper_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60):
    return subprocess.run(
        [sys.executable, "-m", "reaper", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


@pytest.fixture
def reaper_dsn(pg_server, role_factory) -> str:
    role = reaper_role(role_factory)
    return dsn_for(pg_server, role.name, role.password)


@pytest.fixture
def app_role(role_factory):
    return role_factory("app", grants=())


def open_app(session_factory, app_role, suffix, **kwargs) -> int:
    conn = session_factory(
        session_factory.app(suffix), user=app_role.name, password=app_role.password, **kwargs
    )
    return session_factory.pid_of(conn)


def selection(session_factory, *extra: str) -> list[str]:
    return [
        "--application-name",
        f"{session_factory.prefix}-orders*",
        "--idle-seconds",
        "0.5",
        "--allow-short-thresholds",
        *extra,
    ]


def test_run_terminates_exactly_what_the_flags_select(
    session_factory, app_role, reaper_dsn
) -> None:
    orders = [open_app(session_factory, app_role, "orders") for _ in range(2)]
    payments = open_app(session_factory, app_role, "payments")
    in_txn = open_app(session_factory, app_role, "orders", state="idle in transaction")
    wait_past_threshold()
    done = reaper_cli("run", "--dsn", reaper_dsn, *selection(session_factory), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    terminated = sorted(s["pid"] for s in result["sessions"] if s["outcome"] == "terminated")
    assert terminated == sorted(orders)
    assert all(ended(session_factory, pid) for pid in orders)
    assert alive(session_factory, payments)
    assert alive(session_factory, in_txn)


def test_state_flag_selects_idle_in_transaction(session_factory, app_role, reaper_dsn) -> None:
    idle = open_app(session_factory, app_role, "orders")
    in_txn = open_app(session_factory, app_role, "orders", state="idle in transaction")
    wait_past_threshold()
    args = selection(session_factory, "--state", "idle in transaction")
    done = reaper_cli("run", "--dsn", reaper_dsn, *args)
    assert done.returncode == 0, done.stderr
    assert ended(session_factory, in_txn)
    assert alive(session_factory, idle)


def test_dry_run_prints_the_plan_and_terminates_nothing(
    session_factory, app_role, reaper_dsn
) -> None:
    pid = open_app(session_factory, app_role, "orders")
    wait_past_threshold()
    done = reaper_cli("run", "--dsn", reaper_dsn, *selection(session_factory), "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "dry run" in done.stdout
    assert "would_terminate" in done.stdout
    assert alive(session_factory, pid)


def test_dsn_can_come_from_the_environment(session_factory, app_role, reaper_dsn) -> None:
    pid = open_app(session_factory, app_role, "orders")
    wait_past_threshold()
    env = {"REAPER_DATABASE_URL": reaper_dsn, "PATH": "/usr/bin:/bin"}
    done = reaper_cli("run", *selection(session_factory), env=env)
    assert done.returncode == 0, done.stderr
    assert ended(session_factory, pid)


def test_policy_file_replaces_the_flags(
    session_factory, app_role, reaper_dsn, tmp_path: Path
) -> None:
    pid = open_app(session_factory, app_role, "orders")
    wait_past_threshold()
    policy = tmp_path / "policy.json"
    policy.write_text(
        json.dumps(
            {
                "rules": [
                    {"application_names": [f"{session_factory.prefix}*"], "states": {"idle": 0.5}}
                ],
                "allow_short_thresholds": True,
            }
        )
    )
    done = reaper_cli("run", "--dsn", reaper_dsn, "--policy", str(policy))
    assert done.returncode == 0, done.stderr
    assert ended(session_factory, pid)


@pytest.mark.safety
def test_refused_terminations_exit_4(pg_server, session_factory, app_role, role_factory) -> None:
    weak = reaper_role(role_factory, "pg_monitor")
    pid = open_app(session_factory, app_role, "orders")
    wait_past_threshold()
    dsn = dsn_for(pg_server, weak.name, weak.password)
    done = reaper_cli("run", "--dsn", dsn, *selection(session_factory))
    assert done.returncode == 4
    assert "refused 1" in done.stdout
    assert alive(session_factory, pid)


@pytest.mark.safety
def test_role_that_cannot_see_sessions_exits_5_and_terminates_nothing(
    pg_server, session_factory, app_role, role_factory
) -> None:
    blind = reaper_role(role_factory, "pg_signal_backend")
    pid = open_app(session_factory, app_role, "orders")
    wait_past_threshold()
    dsn = dsn_for(pg_server, blind.name, blind.password)
    done = reaper_cli("run", "--dsn", dsn, *selection(session_factory))
    assert done.returncode == 5
    assert "pg_monitor" in done.stderr
    assert alive(session_factory, pid)


def test_unreachable_database_exits_3_naming_host_and_port_not_password() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: nothing listens there
    dsn = f"postgresql://reaper:s3cret-Pa55@127.0.0.1:{port}/postgres"
    done = reaper_cli(
        "run", "--dsn", dsn, "--application-name", "lambda:*", "--connect-timeout", "2"
    )
    assert done.returncode == 3
    assert f"127.0.0.1:{port}" in done.stderr
    assert "s3cret-Pa55" not in done.stderr + done.stdout


def test_unroutable_database_fails_within_the_connect_timeout() -> None:
    # 192.0.2.0/24 is TEST-NET-1: never routed, so only the connect timeout ends the attempt
    dsn = "postgresql://reaper:s3cret-Pa55@192.0.2.1:5432/postgres"
    done = reaper_cli(
        "run",
        "--dsn",
        dsn,
        "--application-name",
        "lambda:*",
        "--connect-timeout",
        "2",
        timeout=30,
    )
    assert done.returncode == 3
    assert "192.0.2.1:5432" in done.stderr
    assert "s3cret-Pa55" not in done.stderr + done.stdout


@pytest.mark.usefixtures("server_checks_passwords")
def test_wrong_password_exits_3_without_echoing_it(pg_server, role_factory) -> None:
    role = reaper_role(role_factory)
    dsn = dsn_for(pg_server, role.name, "Wr0ng-Passw0rd")
    done = reaper_cli("run", "--dsn", dsn, "--application-name", "lambda:*")
    assert done.returncode == 3
    assert "rejected" in done.stderr
    assert "Wr0ng-Passw0rd" not in done.stderr + done.stdout


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ("{not json", "not valid JSON"),
        ('{"rules": [{"application_names": ["a"]}], "max_terminatons": 1}', "max_terminatons"),
        ('{"rules": [{"application_names": ["a"], "states": {"idle": 5}}]}', "floor"),
        ('{"rules": [{"application_names": ["a"], "states": {"active": 900}}]}', "active"),
    ],
)
def test_bad_policy_exits_2_naming_the_problem(tmp_path: Path, document, expected) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(document)
    # the DSN is never used: the policy is rejected before connecting
    done = reaper_cli("run", "--dsn", "postgresql://127.0.0.1:1/x", "--policy", str(policy))
    assert done.returncode == 2
    assert expected in done.stderr
    assert str(policy) in done.stderr


def test_short_idle_seconds_needs_the_explicit_flag() -> None:
    done = reaper_cli(
        "run",
        "--dsn",
        "postgresql://127.0.0.1:1/x",
        "--application-name",
        "a",
        "--idle-seconds",
        "5",
    )
    assert done.returncode == 2
    assert "--allow-short-thresholds" in done.stderr


def test_run_without_a_selection_is_refused() -> None:
    done = reaper_cli("run", "--dsn", "postgresql://127.0.0.1:1/x")
    assert done.returncode == 2
    assert "--application-name" in done.stderr


def test_policy_check_prints_the_normalised_document(tmp_path: Path) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text('{"rules": [{"application_names": ["lambda:*"]}]}')
    done = reaper_cli("policy", "check", str(policy))
    assert done.returncode == 0
    normalised = json.loads(done.stdout)
    assert normalised["rules"][0]["name"] == "rule-1"
    assert normalised["exclude"]["users"] == ["rdsadmin"]


def test_policy_schema_is_json_schema() -> None:
    done = reaper_cli("policy", "schema")
    assert done.returncode == 0
    schema = json.loads(done.stdout)
    assert schema["title"] == "idle-reaper policy"
    assert "rules" in schema["properties"]


def test_report_counts_sessions_by_application(session_factory, app_role, reaper_dsn) -> None:
    for _ in range(3):
        open_app(session_factory, app_role, "orders")
    open_app(session_factory, app_role, "orders", state="active")
    wait_past_threshold()
    done = reaper_cli("report", "--dsn", reaper_dsn, "--json")
    assert done.returncode == 0, done.stderr
    census = json.loads(done.stdout)
    orders = session_factory.app("orders")
    groups = {(g["application_name"], g["state"]): g for g in census["groups"]}
    assert groups[(orders, "idle")]["count"] == 3
    assert groups[(orders, "idle")]["oldest_idle_seconds"] >= 0.5
    assert groups[(orders, "active")]["count"] == 1
    assert sum(census["idle_histogram"][orders].values()) == 3
    assert 0 < census["utilization"] < 1
    text = reaper_cli("report", "--dsn", reaper_dsn)
    assert orders in text.stdout
    assert "idle sessions by age" in text.stdout
