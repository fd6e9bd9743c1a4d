"""The `reaper` command as a user runs it: a real process, real sessions, exit codes, output."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest

from tests.commands import run_command
from tests.fix_db import dsn_for
from tests.functional.reaping import (
    THRESHOLD,
    alive,
    ended,
    policy_document,
    wait_past_threshold,
)


def reaper_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60):
    return run_command([sys.executable, "-m", "reaper", *args], timeout=timeout, env=env)


def selection(session_factory, *extra: str) -> list[str]:
    return [
        "--application-name",
        f"{session_factory.prefix}-orders*",
        "--idle-seconds",
        "0.5",
        "--allow-short-thresholds",
        *extra,
    ]


@pytest.mark.slow
def test_run_terminates_exactly_what_the_flags_select(session_factory, apps, reaper_dsn) -> None:
    orders = [apps.open("orders") for _ in range(2)]
    payments = apps.open("payments")
    in_txn = apps.open("orders", state="idle in transaction")
    wait_past_threshold()
    done = reaper_cli("run", "--dsn", reaper_dsn, *selection(session_factory), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result["connections"]) == {
        "client_connections",
        "max_connections",
        "superuser_reserved_connections",
        "reserved_connections",
        "usable_connections",
        "utilization_before",
        "utilization_after",
    }
    terminated = sorted(s["pid"] for s in result["sessions"] if s["outcome"] == "terminated")
    assert terminated == sorted(orders)
    assert all(ended(session_factory, pid) for pid in orders)
    assert alive(session_factory, payments)
    assert alive(session_factory, in_txn)


def test_state_flag_selects_idle_in_transaction(session_factory, apps, reaper_dsn) -> None:
    idle = apps.open("orders")
    in_txn = apps.open("orders", state="idle in transaction")
    wait_past_threshold()
    args = selection(session_factory, "--state", "idle in transaction")
    done = reaper_cli("run", "--dsn", reaper_dsn, *args)
    assert done.returncode == 0, done.stderr
    assert ended(session_factory, in_txn)
    assert alive(session_factory, idle)


def test_dry_run_prints_the_plan_and_terminates_nothing(session_factory, apps, reaper_dsn) -> None:
    pid = apps.open("orders")
    wait_past_threshold()
    done = reaper_cli("run", "--dsn", reaper_dsn, *selection(session_factory), "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "dry run" in done.stdout
    assert "would_terminate" in done.stdout
    assert alive(session_factory, pid)


def test_dsn_can_come_from_the_environment(session_factory, apps, reaper_dsn) -> None:
    pid = apps.open("orders")
    wait_past_threshold()
    env = {"REAPER_DATABASE_URL": reaper_dsn, "PATH": "/usr/bin:/bin"}
    done = reaper_cli("run", *selection(session_factory), env=env)
    assert done.returncode == 0, done.stderr
    assert ended(session_factory, pid)


def test_policy_file_replaces_the_flags(session_factory, apps, reaper_dsn, tmp_path: Path) -> None:
    pid = apps.open("orders")
    wait_past_threshold()
    policy = tmp_path / "policy.json"
    policy.write_text(policy_document([f"{session_factory.prefix}*"], THRESHOLD))
    done = reaper_cli("run", "--dsn", reaper_dsn, "--policy", str(policy))
    assert done.returncode == 0, done.stderr
    assert ended(session_factory, pid)


@pytest.mark.safety
@pytest.mark.parametrize(
    ("grant", "expected"),
    [
        # sees every session but may signal none of another role's: the pass reports refusals
        pytest.param("pg_monitor", (4, "stdout", "refused 1"), id="no-pg_signal_backend-exits-4"),
        # may signal but cannot see states: the pass is refused before anything is planned
        pytest.param("pg_signal_backend", (5, "stderr", "pg_monitor"), id="no-pg_monitor-exits-5"),
    ],
)
def test_a_reaper_role_lacking_a_privilege_exits_non_zero_and_terminates_nothing(
    pg_server, apps, role_factory, grant, expected
) -> None:
    # given a stale session and a reaper role with only one of the two grants it needs
    pid = apps.open_stale("orders", threshold=THRESHOLD)
    role = role_factory("reaper", grants=(grant,))
    dsn = dsn_for(pg_server, role.name, role.password)
    # when it runs, then it exits with the documented code and says why
    done = reaper_cli("run", "--dsn", dsn, *selection(apps.factory))
    exit_code, stream, says = expected
    assert done.returncode == exit_code
    assert says in getattr(done, stream)
    assert apps.alive(pid)


@pytest.mark.safety
def test_refusals_exit_4_naming_the_grant_and_a_dry_run_only_says_what_it_would_refuse(
    pg_server, apps, role_factory
) -> None:
    # given a stale session and a reaper role that may not signal another role's sessions
    pid = apps.open_stale("orders", threshold=THRESHOLD)
    role = role_factory("reaper", grants=("pg_monitor",))
    dsn = dsn_for(pg_server, role.name, role.password)
    # when it runs a dry run, then it reports what a real pass would refuse, and exits 0
    dry = reaper_cli("run", "--dsn", dsn, *selection(apps.factory), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would refuse 1" in dry.stdout
    # when it runs for real, then it exits 4 and prints the GRANT that fixes it
    done = reaper_cli("run", "--dsn", dsn, *selection(apps.factory))
    assert done.returncode == 4
    assert f"1 termination(s) refused; fix: GRANT pg_signal_backend TO {role.name}" in done.stderr
    assert apps.alive(pid)


def test_a_superuser_reaper_is_warned_about_on_stderr(pg_server, session_factory) -> None:
    done = reaper_cli("run", "--dsn", pg_server.admin_dsn, *selection(session_factory), "--json")
    assert done.returncode == 0, done.stderr
    assert f"reaper: warning: {pg_server.admin_user} is a superuser" in done.stderr
    assert "least-privilege role of docs/database-role.md" in done.stderr
    # stdout stays one JSON document, which carries the warning too
    assert json.loads(done.stdout)["warnings"] == [done.stderr.split("warning: ", 1)[1].strip()]


@pytest.mark.safety
def test_a_pass_lock_held_by_a_stranger_exits_8_naming_the_holder(
    apps, session_factory, reaper_dsn
) -> None:
    # given a stale session, and an application session holding the reaper's advisory lock
    pid = apps.open_stale("orders", threshold=THRESHOLD)
    squatter = apps.hold_pass_lock()
    # when a pass runs, then it fails with its own exit code, naming the holder
    done = reaper_cli("run", "--dsn", reaper_dsn, *selection(session_factory))
    assert done.returncode == 8
    holder = session_factory.pid_of(squatter)
    assert f"pid {holder} (role {apps.role.name}" in done.stderr
    assert f"pg_terminate_backend ({holder})" in done.stderr
    assert apps.alive(pid)


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
    role = role_factory("reaper")
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
        (
            '{"rules": [{"application_names": ["a"]}], '
            '"exclude": {"client_addresses": ["10.0.3.7/24"]}}',
            "exclude.client_addresses[0]: 10.0.3.7/24 has host bits set",
        ),
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


def test_exclude_client_address_flag_spares_that_address(session_factory, apps, reaper_dsn) -> None:
    # given a stale session over TCP from 127.0.0.1
    pid = apps.open_stale("orders", threshold=THRESHOLD)
    # when a pass runs with its address excluded
    args = selection(session_factory, "--exclude-client-address", "127.0.0.1/32", "--json")
    done = reaper_cli("run", "--dsn", reaper_dsn, *args)
    # then it is reported spared with the reason, and lives on
    assert done.returncode == 0, done.stderr
    [record] = [s for s in json.loads(done.stdout)["sessions"] if s["pid"] == pid]
    assert (record["reason"], record["outcome"]) == ("excluded_address", "spared")
    assert alive(session_factory, pid)


def test_exclude_client_address_flag_is_refused_beside_a_policy_file(tmp_path: Path) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(policy_document(["lambda:*"], THRESHOLD))
    done = reaper_cli(
        "run",
        "--dsn",
        "postgresql://127.0.0.1:1/x",
        "--policy",
        str(policy),
        "--exclude-client-address",
        "10.0.3.7/32",
    )
    assert done.returncode == 2
    assert "--exclude-client-address" in done.stderr


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


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        pytest.param(
            ["--dsn", "postgresql://reaper:Pa55-3c9d@127.0.0.1:1/x?sslmode=bogus"],
            "sslmode must be one of",
            id="sslmode",
        ),
        pytest.param(
            ["--dsn", "postgresql://reaper:Pa55-3c9d@127.0.0.1:1/x?foo=bar"],
            "unknown parameter 'foo'",
            id="unknown-parameter",
        ),
        pytest.param(
            ["--dsn", "postgresql://reaper@127.0.0.1:Pa55-3c9d/x"],
            "port is not a number from 1 to 65535",
            id="port",
        ),
        pytest.param(
            ["--dsn", "postgresql://127.0.0.1:1/x", "--statement-timeout", "99999999999"],
            "--statement-timeout must be from 1 to 2147483647 milliseconds",
            id="statement-timeout",
        ),
        pytest.param(
            ["--dsn", "postgresql://127.0.0.1:1/x", "--connect-timeout", "0"],
            "--connect-timeout must be from 1 to 60 seconds",
            id="connect-timeout",
        ),
    ],
)
def test_bad_connection_parameters_exit_2_naming_the_parameter(arguments, named) -> None:
    # given parameters libpq or the server would refuse only when connecting (exit 3 before)
    done = reaper_cli("run", *arguments, "--application-name", "lambda:*")
    # then nothing is tried: bad input, named, without the password
    assert done.returncode == 2
    assert named in done.stderr
    assert "Pa55-3c9d" not in done.stderr + done.stdout


def test_a_misspelt_database_url_variable_is_named() -> None:
    env = {"REAPER_DATABSE_URL": "postgresql://127.0.0.1:1/x", "PATH": "/usr/bin:/bin"}
    done = reaper_cli("report", env=env)
    assert done.returncode == 2
    assert "REAPER_DATABSE_URL is set: did you mean REAPER_DATABASE_URL?" in done.stderr


def test_the_functions_variables_in_the_shell_do_not_stop_the_command_line() -> None:
    # REAPER_POLICY_FILE is the function's, for `reaper invoke`; `reaper run` reads its flags.
    env = {"REAPER_POLICY_FILE": "/nonexistent.json", "PATH": "/usr/bin:/bin"}
    done = reaper_cli(
        "run", "--dsn", "postgresql://127.0.0.1:1/x", "--application-name", "a", env=env
    )
    assert done.returncode == 3, done.stderr


def test_a_bad_log_level_stops_the_function_naming_the_variable() -> None:
    # Powertools alone failed with "Unknown level: 'LOUD'", naming no variable.
    env = {"POWERTOOLS_LOG_LEVEL": "LOUD", "PATH": "/usr/bin:/bin"}
    event = Path(__file__).resolve().parents[2] / "events" / "scheduled.json"
    done = reaper_cli("invoke", str(event), env=env)
    assert done.returncode == 1
    error = json.loads(done.stdout.strip().splitlines()[-1])
    assert error["errorType"] == "SettingsError"
    assert "POWERTOOLS_LOG_LEVEL: not a log level; use one of DEBUG" in error["errorMessage"]


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
    assert normalised["exclude"]["client_addresses"] == []


def test_policy_schema_is_json_schema() -> None:
    done = reaper_cli("policy", "schema")
    assert done.returncode == 0
    schema = json.loads(done.stdout)
    assert schema["title"] == "idle-reaper policy"
    assert "rules" in schema["properties"]


@pytest.mark.slow
def test_report_counts_sessions_by_application(session_factory, apps, reaper_dsn) -> None:
    for _ in range(3):
        apps.open("orders")
    apps.open("orders", state="active")
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
    # the reaper's own connection is in no group, so the headline is the sum of the rows
    assert census["client_connections"] == sum(g["count"] for g in census["groups"])
    assert not any(g["application_name"] == "idle-reaper" for g in census["groups"])
    text = reaper_cli("report", "--dsn", reaper_dsn)
    assert orders in text.stdout
    assert "idle sessions by age" in text.stdout
