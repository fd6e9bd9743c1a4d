"""`reaper doctor` and the Lambda's doctor event against real roles and sessions."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import pytest
from psycopg import sql

from reaper.cli.invoke import invoke_main
from reaper.cli.main import main
from reaper.core.versions import RESERVED_CONNECTIONS_MAJOR
from reaper.errors import ExitCode
from reaper.local.roles import REAPER_GRANTS
from tests.fix_aws import EVENTS_DIR, log_records
from tests.fix_db import dsn_for
from tests.functional.reaping import FUNCTION_THRESHOLD as THRESHOLD
from tests.functional.reaping import policy_document, wait_past_threshold

if TYPE_CHECKING:
    from tests.fix_db import PgServer, Role


def doctor(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    exit_code = main(["doctor", *args])
    captured = capsys.readouterr()
    return exit_code, captured.out + captured.err


def lines_by_check(output: str) -> dict[str, str]:
    """The report's check lines, by check name."""
    lines = {}
    for line in output.splitlines():
        match = re.match(r"^  (ok|warn|fail)\s+(.+?)\s{2,}", line)
        if match:
            lines[match.group(2)] = line
    return lines


def complete_role(pg_server: PgServer, role_factory, admin_conn) -> Role:
    """The documented role: grants, statement_timeout and connection limit."""
    grants = REAPER_GRANTS
    if pg_server.major >= RESERVED_CONNECTIONS_MAJOR:
        grants += ("pg_use_reserved_connections",)
    role = role_factory("reaper", grants=grants)
    name = sql.Identifier(role.name)
    admin_conn.execute(sql.SQL("ALTER ROLE {} SET statement_timeout = '30s'").format(name))
    admin_conn.execute(sql.SQL("ALTER ROLE {} CONNECTION LIMIT 3").format(name))
    return role


def test_doctor_passes_for_the_documented_role(pg_server, role_factory, admin_conn, capsys) -> None:
    # given the role of docs/database-role.md
    role = complete_role(pg_server, role_factory, admin_conn)

    # when the doctor checks it
    exit_code, output = doctor(capsys, "--dsn", dsn_for(pg_server, role.name, role.password))

    # then nothing fails, and each grant is seen
    assert exit_code == ExitCode.OK, output
    checks = lines_by_check(output)
    for name in ("sees sessions", "signals others", "least privilege", "statement timeout"):
        assert checks[name].startswith("  ok"), checks[name]
    assert checks["connection limit"].startswith("  ok")
    assert "CONNECTION LIMIT 3" in checks["connection limit"]
    assert " fail " not in output
    assert role.password not in output


def test_doctor_fails_for_a_bare_role_naming_each_missing_grant(
    pg_server, role_factory, capsys
) -> None:
    # given a role with no grant at all
    role = role_factory("bare", grants=())

    # when the doctor checks it
    exit_code, output = doctor(capsys, "--dsn", dsn_for(pg_server, role.name, role.password))

    # then it fails and names every grant the reaper needs
    assert exit_code == ExitCode.CHECKS_FAILED
    checks = lines_by_check(output)
    assert checks["sees sessions"].startswith("  fail")
    assert f"GRANT pg_monitor TO {role.name}" in checks["sees sessions"]
    assert checks["signals others"].startswith("  fail")
    assert f"GRANT pg_signal_backend TO {role.name}" in checks["signals others"]
    if pg_server.major >= RESERVED_CONNECTIONS_MAJOR:
        assert f"GRANT pg_use_reserved_connections TO {role.name}" in checks["reserved way in"]
    else:
        assert "CONNECTION LIMIT" in checks["reserved way in"]
    assert "not ready" in output
    assert role.password not in output


def test_doctor_warns_about_a_superuser(pg_server, capsys) -> None:
    # when the doctor runs as the server's superuser
    exit_code, output = doctor(capsys, "--dsn", pg_server.admin_dsn)

    # then it warns, but a superuser can do the job: nothing fails
    assert exit_code == ExitCode.OK, output
    checks = lines_by_check(output)
    assert checks["least privilege"].startswith("  warn")
    assert "is a superuser" in checks["least privilege"]
    assert checks["reserved way in"].startswith("  ok")
    if pg_server.admin_password:
        assert pg_server.admin_password not in output


def test_doctor_names_a_session_squatting_on_the_pass_lock(
    pg_server, role_factory, apps, capsys
) -> None:
    # given an application session holding the reaper's advisory lock
    squatter = apps.hold_pass_lock()
    role = role_factory("reaper")

    # when the doctor checks the reaper's role
    exit_code, output = doctor(capsys, "--dsn", dsn_for(pg_server, role.name, role.password))

    # then the pass lock check fails, naming the holder and how to end it
    holder = squatter.info.backend_pid
    assert exit_code == ExitCode.CHECKS_FAILED
    line = lines_by_check(output)["pass lock"]
    assert line.startswith("  fail")
    assert (
        f"pid {holder} (role {apps.role.name}, application_name '{apps.name('squatter')}')" in line
    )
    assert f"pg_terminate_backend ({holder})" in line


def test_doctor_with_a_policy_reports_a_live_mix_and_terminates_nothing(
    pg_server, role_factory, admin_conn, session_factory, capsys
) -> None:
    # given stale and fresh sessions the policy covers, an unnamed idle session and another
    # application's idle session
    role = complete_role(pg_server, role_factory, admin_conn)
    app = role_factory("app", grants=())
    login = {"user": app.name, "password": app.password}
    stale = [session_factory(session_factory.app("orders"), **login) for _ in range(2)]
    unnamed = session_factory(None, **login)
    other = session_factory(session_factory.app("bi"), **login)
    wait_past_threshold(THRESHOLD)
    fresh = session_factory(session_factory.app("orders"), **login)

    # when the doctor runs with the policy's flags, as JSON
    exit_code, output = doctor(
        capsys,
        "--dsn",
        dsn_for(pg_server, role.name, role.password),
        "--application-name",
        session_factory.app("orders"),
        "--idle-seconds",
        str(THRESHOLD),
        "--allow-short-thresholds",
        "--json",
    )

    # then it counts what a pass would terminate and names what no rule covers
    assert exit_code == ExitCode.OK, output
    report = json.loads(output)
    checks = {check["name"]: check for check in report["checks"]}
    assert checks["policy"]["status"] == "ok"
    assert checks["policy"]["summary"].startswith("would terminate 2 of ")
    assert checks["application names"]["status"] == "warn"
    assert "docs/client-side.md" in checks["application names"]["fix"]
    assert checks["rule coverage"]["status"] == "warn"
    assert f"{session_factory.app('bi')} (1)" in checks["rule coverage"]["summary"]
    assert session_factory.app("orders") not in checks["rule coverage"]["summary"]
    # and it terminated nothing
    for conn in (*stale, unnamed, other, fresh):
        assert session_factory.state_of(session_factory.pid_of(conn)) == "idle"


def test_doctor_warns_when_matched_sessions_share_an_address_with_other_applications(
    pg_server, role_factory, admin_conn, apps, capsys
) -> None:
    # given, over TCP from 127.0.0.1 as from one pooler, a session the policy matches and one of
    # another application
    role = complete_role(pg_server, role_factory, admin_conn)
    apps.open("orders")
    apps.open("bi")
    dsn = dsn_for(pg_server, role.name, role.password)
    selection = ["--application-name", apps.name("orders"), "--json"]

    # when the doctor checks the policy
    exit_code, output = doctor(capsys, "--dsn", dsn, *selection)

    # then it warns, naming the address, the matched application and the other one
    assert exit_code == ExitCode.OK, output
    checks = {check["name"]: check for check in json.loads(output)["checks"]}
    shared = checks["shared addresses"]
    assert shared["status"] == "warn"
    assert f"127.0.0.1: {apps.name('orders')} (1) beside " in shared["summary"]
    assert f"{apps.name('bi')} (1)" in shared["summary"]
    assert "exclude.client_addresses" in shared["fix"]

    # and with the address excluded the warning clears and nothing would be terminated
    exit_code, output = doctor(
        capsys, "--dsn", dsn, *selection, "--exclude-client-address", "127.0.0.1/32"
    )
    checks = {check["name"]: check for check in json.loads(output)["checks"]}
    assert checks["shared addresses"]["status"] == "ok"
    assert checks["policy"]["summary"].startswith("would terminate 0 of ")


def test_doctor_reads_the_dsn_from_the_environment_and_prints_json(
    pg_server, role_factory, admin_conn, monkeypatch, capsys
) -> None:
    role = complete_role(pg_server, role_factory, admin_conn)
    monkeypatch.setenv("REAPER_DATABASE_URL", dsn_for(pg_server, role.name, role.password))

    exit_code, output = doctor(capsys, "--json")

    report = json.loads(output)
    assert exit_code == ExitCode.OK
    assert report["status"] in ("ok", "warn")
    assert [check["name"] for check in report["checks"]][:3] == [
        "connection",
        "server version",
        "sees sessions",
    ]
    assert {check["status"] for check in report["checks"]} <= {"ok", "warn"}


def test_doctor_on_an_unreachable_target_fails_its_connection_check(capsys) -> None:
    exit_code, output = doctor(
        capsys, "--dsn", "postgresql://nobody:hunter2-secret@127.0.0.1:1/postgres?connect_timeout=2"
    )

    assert exit_code == ExitCode.CHECKS_FAILED
    assert lines_by_check(output)["connection"].startswith("  fail")
    assert "hunter2-secret" not in output


@pytest.fixture
def doctor_function(pg_server, role_factory, function_env, tmp_path) -> Role:
    """`reaper invoke`'s settings: a bare role's DSN and a policy file."""
    role = role_factory("bare", grants=())
    function_env.setenv("REAPER_DATABASE_URL", dsn_for(pg_server, role.name, role.password))
    policy = tmp_path / "policy.json"
    policy.write_text(policy_document(["lambda:doctor-test-*"], THRESHOLD))
    function_env.setenv("REAPER_POLICY_FILE", str(policy))
    for name in ("AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_EXECUTION_ENV"):
        function_env.delenv(name, raising=False)
    return role


def test_lambda_doctor_event_returns_every_targets_checks(doctor_function, capsys) -> None:
    # when the doctor event is invoked on a function whose role lacks its grants
    exit_code = invoke_main(EVENTS_DIR / "doctor.json")

    # then the invocation succeeds and returns the checks, failed ones included
    out = capsys.readouterr().out
    assert exit_code == 0
    response: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    assert response["action"] == "doctor"
    [target] = response["targets"]
    assert target["target"] == "default"
    assert target["status"] == "fail"
    checks = {check["name"]: check for check in target["checks"]}
    assert checks["sees sessions"]["status"] == "fail"
    assert checks["signals others"]["status"] == "fail"
    assert "policy" in checks
    # and it logs one doctor line for the target
    [line] = [r for r in log_records(out) if r.get("audit") == "doctor"]
    assert line["target"] == "default"
    assert line["status"] == "fail"
    assert doctor_function.password not in out
