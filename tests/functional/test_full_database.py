"""A database filled to its limit by idle Lambda sessions, on a dedicated small server.

The role is made by the SQL of docs/database-role.md itself. On PostgreSQL 16 and later (with
`reserved_connections`) it logs in through the reserve and frees the server; on 15 and older,
or without the grant, the login is refused with the full-database error: exit 6, a message
that names the fix, the ConnectionSlotsExhausted metric in the Lambda, and never a password.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg import sql

from reaper.cli.invoke import invoke_main
from reaper.cli.main import main
from reaper.core.versions import RESERVED_CONNECTIONS_MAJOR
from reaper.errors import DatabaseFullError, ExitCode, LocalPostgresError
from reaper.local.cluster import LocalPostgres
from reaper.local.roles import create_login_role
from reaper.pg import gateway
from reaper.pg.conninfo import ConnInfo
from tests.fix_aws import EVENTS_DIR, log_records, metric
from tests.fix_db import RoleFactory, binaries_or_skip, dsn_for, wait_until
from tests.functional.reaping import THRESHOLD, policy_document, wait_past_threshold

# A full database is when the reaper matters most: checked on every major, 16 and 17 too.
pytestmark = pytest.mark.safety

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.fix_db import PgServer

REPO_ROOT = Path(__file__).resolve().parents[2]
ROLE_DOC = REPO_ROOT / "docs" / "database-role.md"
DOCUMENTED_ROLE = "idle_reaper"
DOCUMENTED_PASSWORD = "choose-a-long-random-password"
# A small server: 20 slots, 3 for superusers and (16+) 2 for pg_use_reserved_connections.
MAX_CONNECTIONS = 20
RESERVED_CONNECTIONS = 2
APPLICATION = "lambda:full-orders"


def documented_sql(major: int) -> list[str]:
    """The statements of docs/database-role.md's role SQL that apply to this major."""
    blocks = re.findall(r"```sql\n(.*?)```", ROLE_DOC.read_text(), flags=re.DOTALL)
    chosen = [block for block in blocks if block.startswith("-- every major")]
    if major >= RESERVED_CONNECTIONS_MAJOR:
        chosen += [block for block in blocks if block.startswith("-- PostgreSQL 16 and later")]
    assert chosen, "docs/database-role.md lost its role SQL"
    text = "\n".join(
        line for block in chosen for line in block.splitlines() if not line.startswith("--")
    )
    return [statement.strip() for statement in text.split(";") if statement.strip()]


@dataclass
class FullServer:
    """A dedicated server, its superuser connection and the idle sessions that fill it."""

    cluster: LocalPostgres
    admin: psycopg.Connection[Any]
    major: int
    app_password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    sessions: list[psycopg.Connection[Any]] = field(default_factory=list)

    def dsn(self, user: str, password: str) -> str:
        return self.cluster.dsn(user=user, password=password)

    def app_login(self) -> psycopg.Connection[Any]:
        return psycopg.connect(
            self.dsn("app", self.app_password), application_name=APPLICATION, autocommit=True
        )

    def fill(self) -> int:
        """Open idle application sessions until the server refuses one; return how many."""
        while True:
            try:
                self.sessions.append(self.app_login())
            except psycopg.OperationalError:
                return len(self.sessions)

    def empty(self) -> None:
        for conn in self.sessions:
            with contextlib.suppress(psycopg.Error):
                conn.close()
        self.sessions.clear()
        self.admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'app'"
        )
        wait_until(lambda: self.app_sessions() == 0, message="application sessions gone")

    def app_sessions(self) -> int:
        row = self.admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'"
        ).fetchone()
        assert row is not None
        return int(row[0])

    def reaper_role(self) -> tuple[str, str]:
        """A reaper role with the least privileges but no reserve; returns (name, password)."""
        role = RoleFactory(self.admin)("reaper")
        return role.name, role.password


@pytest.fixture(scope="module")
def full_server(pg_server: PgServer) -> Iterator[FullServer]:
    """A dedicated server of the same major as `pg_server`, with the documented role."""
    binaries = binaries_or_skip(pg_server.major)
    settings: dict[str, str | int] = {"max_connections": MAX_CONNECTIONS}
    if binaries.major >= RESERVED_CONNECTIONS_MAJOR:
        settings["reserved_connections"] = RESERVED_CONNECTIONS
    cluster = LocalPostgres(binaries, settings=settings)
    try:
        cluster.start()
    except LocalPostgresError as exc:
        pytest.skip(f"cannot start a dedicated {binaries.label} server: {exc}")
    try:
        with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
            server = FullServer(cluster, admin, binaries.major)
            create_login_role(admin, "app", server.app_password)
            for statement in documented_sql(binaries.major):
                admin.execute(statement.encode())
            yield server
    finally:
        cluster.stop()


@pytest.fixture
def filled(full_server: FullServer) -> Iterator[FullServer]:
    """The dedicated server with every slot an ordinary role may use taken by idle sessions."""
    opened = full_server.fill()
    assert opened >= MAX_CONNECTIONS // 2, f"only {opened} sessions fit"
    try:
        yield full_server
    finally:
        full_server.empty()


def run_reaper(dsn: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`reaper run` on this test's application; the exit code and everything printed."""
    wait_past_threshold()
    exit_code = main(
        [
            "run",
            "--dsn",
            dsn,
            "--application-name",
            APPLICATION,
            "--idle-seconds",
            str(THRESHOLD),
            "--allow-short-thresholds",
            "--max-terminations",
            str(MAX_CONNECTIONS),
            "--json",
        ]
    )
    captured = capsys.readouterr()
    return exit_code, captured.out + captured.err


def test_full_database_is_freed_through_the_reserved_slot_with_the_documented_grants(
    filled: FullServer, capsys
) -> None:
    if filled.major < RESERVED_CONNECTIONS_MAJOR:
        pytest.skip(f"PostgreSQL {filled.major} has no reserved_connections (16 and later)")
    # given a server where one more application login is refused
    with pytest.raises(psycopg.OperationalError):
        filled.app_login()

    # when the documented role runs a pass
    exit_code, output = run_reaper(filled.dsn(DOCUMENTED_ROLE, DOCUMENTED_PASSWORD), capsys)

    # then it got in through the reserve and freed every idle application session
    assert exit_code == ExitCode.OK, output
    result = _json_result(output)
    assert result["counts"]["terminated"] == len(filled.sessions)
    wait_until(lambda: filled.app_sessions() == 0, message="application sessions terminated")
    filled.app_login().close()


def test_reaper_without_a_way_in_is_refused_with_the_full_database_error(
    filled: FullServer, capsys
) -> None:
    # given a reaper role without a reserve it may use: on 16+ the documented role minus
    # pg_use_reserved_connections; before 16 the documented role itself
    if filled.major >= RESERVED_CONNECTIONS_MAJOR:
        role, password = filled.reaper_role()
    else:
        role, password = DOCUMENTED_ROLE, DOCUMENTED_PASSWORD

    # when it runs a pass on the full server
    exit_code, output = run_reaper(filled.dsn(role, password), capsys)

    # then it exits with the full-database code, says so and names the remedy of that major
    assert exit_code == ExitCode.DATABASE_FULL
    assert "the database is full" in output
    assert "53300" in output
    if filled.major >= RESERVED_CONNECTIONS_MAJOR:
        assert f"GRANT pg_use_reserved_connections TO {role}" in output
        assert "CONNECTION LIMIT" not in output
    else:
        assert "ALTER ROLE ... CONNECTION LIMIT" in output
        assert "pg_use_reserved_connections" not in output
    assert "docs/database-role.md#a-reserved-way-in" in output
    assert password not in output
    assert filled.app_sessions() == len(filled.sessions)


def test_full_database_is_reported_by_the_lambda_with_its_own_metric_and_line(
    filled: FullServer, function_env, tmp_path, capsys
) -> None:
    # given the function pointed at the full server with a role that has no way in
    role, password = filled.reaper_role()
    policy = tmp_path / "policy.json"
    policy.write_text(policy_document([APPLICATION], THRESHOLD))
    function_env.setenv("REAPER_DATABASE_URL", filled.dsn(role, password))
    function_env.setenv("REAPER_POLICY_FILE", str(policy))
    for name in ("AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_EXECUTION_ENV"):
        function_env.delenv(name, raising=False)
    capsys.readouterr()

    # when the scheduled event runs
    exit_code = invoke_main(EVENTS_DIR / "scheduled.json")

    # then the invocation fails, with ConnectionSlotsExhausted and a database_full line
    out = capsys.readouterr().out
    assert exit_code == 1
    assert metric(out, "ConnectionSlotsExhausted", Target="default").value == 1
    assert metric(out, "TargetErrors", Target="default").value == 1
    lines = [r for r in log_records(out) if r.get("audit") == "database_full"]
    assert len(lines) == 1
    assert lines[0]["target"] == "default"
    assert lines[0]["cause"] == "server"
    assert lines[0]["error_type"] == "DatabaseFullError"
    assert password not in out


def test_doctor_passes_for_the_documented_role_and_sees_its_way_in(
    full_server: FullServer, capsys
) -> None:
    # when the doctor checks the documented role on the dedicated server
    capsys.readouterr()
    exit_code = main(["doctor", "--dsn", full_server.dsn(DOCUMENTED_ROLE, DOCUMENTED_PASSWORD)])
    output = capsys.readouterr().out

    # then nothing fails; on 16+ the reserve is there and usable, before 16 there is none
    assert exit_code == ExitCode.OK, output
    [line] = [line for line in output.splitlines() if "reserved way in" in line]
    if full_server.major >= RESERVED_CONNECTIONS_MAJOR:
        assert line.startswith("  ok")
        assert f"{RESERVED_CONNECTIONS} reserved slot(s)" in line
    else:
        assert line.startswith("  warn")
        assert "app" in line
    assert DOCUMENTED_PASSWORD not in output


def test_reaper_at_its_own_connection_limit_is_told_so(
    pg_server: PgServer, role_factory, admin_conn
) -> None:
    # given a reaper role whose one allowed connection is taken
    role = role_factory("reaper")
    admin_conn.execute(
        sql.SQL("ALTER ROLE {} CONNECTION LIMIT 1").format(sql.Identifier(role.name))
    )
    target = ConnInfo.from_dsn(dsn_for(pg_server, role.name, role.password), name="test")

    # when a second reaper logs in while the first is connected
    with gateway.connect(target), pytest.raises(DatabaseFullError) as raised:
        gateway.connect(target)

    # then the error names the role's own limit, not the server's
    assert raised.value.cause == "role"
    message = str(raised.value)
    assert f"{role.name} is at its own CONNECTION LIMIT" in message
    assert role.password not in message


def _json_result(output: str) -> dict[str, Any]:
    start = output.index("{")
    document, _end = json.JSONDecoder().raw_decode(output[start:])
    assert isinstance(document, dict)
    return document
