"""Names as PostgreSQL keeps and shows them: application_name rewritten (what the policy's
pattern rules rely on), and role, database and application names holding a newline, a
screen-clearing escape, an OSC 8 hyperlink or a bidirectional override reaching the terminal
escaped, through the real `reaper run`, `report` and `doctor` and their error lines."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import pytest

from reaper.cli.render import printable
from reaper.local.roles import REAPER_GRANTS
from tests.commands import run_command
from tests.fix_db import dsn_for
from tests.functional.reaping import wait_past_threshold

if TYPE_CHECKING:
    from subprocess import CompletedProcess

# A cleared screen, a hyperlink whose text hides its target, reversed text, a forged line: 45
# bytes, so that a role or database name made of it stays within PostgreSQL's 63.
HOSTILE = "\x1b[2J\x1b]8;;http://e.x/\x07x\x1b]8;;\x07\u202e\nforged: ready"
RAW_CONTROLS = ("\x1b", "\x07", "\u202e")


def reaper_cli(*args: str) -> CompletedProcess[str]:
    return run_command([sys.executable, "-m", "reaper", *args], timeout=60)


def assert_nothing_raw(output: str) -> None:
    """No control character of a name reached the output, and no name started a line."""
    for control in RAW_CONTROLS:
        assert control not in output
    assert not any(line.startswith("forged") for line in output.splitlines())


@pytest.fixture
def hostile(pg_server, role_factory, database_factory, session_factory) -> dict[str, object]:
    """A reaper role, an application role and a database with hostile names, and an idle
    session of that role in that database whose application_name holds the same characters."""
    reaper = role_factory("r" + HOSTILE, grants=REAPER_GRANTS)
    app = role_factory("a" + HOSTILE, grants=())
    database = database_factory("d" + HOSTILE)
    session_factory(
        session_factory.app("orders") + "\n\x1b[2J",
        user=app.name,
        password=app.password,
        dbname=database,
    )
    wait_past_threshold()
    return {
        "dsn": dsn_for(pg_server, reaper.name, reaper.password),
        "names": (reaper.name, app.name, database),
        "prefix": session_factory.prefix,
    }


@pytest.mark.slow
def test_run_and_report_escape_every_name_from_the_server(hostile) -> None:
    # given sessions whose role, database and application names hold control characters
    selection = ["--application-name", f"{hostile['prefix']}*", "--idle-seconds", "0.5"]
    # when a dry run and a report print them to a terminal
    run = reaper_cli(
        "run", "--dsn", hostile["dsn"], *selection, "--allow-short-thresholds", "--dry-run"
    )
    report = reaper_cli("report", "--dsn", hostile["dsn"])
    as_json = reaper_cli("report", "--dsn", hostile["dsn"], "--json")
    # then each name is shown escaped, and nothing of it acts on the terminal
    reaper, app, database = hostile["names"]
    assert_nothing_raw(as_json.stdout)
    census = json.loads(as_json.stdout)
    assert {(g["user"], g["database"]) for g in census["groups"]} >= {(app, database)}
    for done in (run, report):
        assert done.returncode == 0, done.stderr
        assert_nothing_raw(done.stdout + done.stderr)
        assert printable(app) in done.stdout
        assert printable(database) in done.stdout
        assert printable(reaper) in done.stdout.splitlines()[0]
    # the application_name was rewritten by the server itself: no raw control there either
    assert "would_terminate" in run.stdout


@pytest.mark.slow
def test_doctor_escapes_the_role_names_it_quotes(hostile) -> None:
    # when the doctor checks the hostile reaper role, with a policy covering no application
    done = reaper_cli("doctor", "--dsn", hostile["dsn"], "--application-name", "nomatch:*")
    # then its lines name the role escaped (the headline, the least-privilege and limit checks)
    reaper, _app, _database = hostile["names"]
    assert done.returncode in (0, 7), done.stderr
    assert_nothing_raw(done.stdout + done.stderr)
    assert f"{printable(reaper)} is not a superuser" in done.stdout
    assert f"{hostile['prefix']}-orders" in done.stdout  # in the uncovered applications


@pytest.mark.safety
def test_the_server_shows_application_name_cut_and_rewritten_as_the_policy_expects(
    pg_server, session_factory, admin_conn
) -> None:
    # given sessions whose application_name holds non-ASCII and control characters, or is
    # longer than 63 bytes
    sent = session_factory.app("café\t")
    long_name = session_factory.app("x" * 70)
    pids = [session_factory.pid_of(session_factory(name)) for name in (sent, long_name)]
    # when pg_stat_activity shows them
    shown = [
        admin_conn.execute(
            "SELECT application_name FROM pg_stat_activity WHERE pid = %s", [pid]
        ).fetchone()[0]
        for pid in pids
    ]
    # then each byte outside printable ASCII is rewritten ('?' up to 15, \xNN from 16), and
    # the name is cut to 63 bytes: a pattern holding the name as sent could never match
    rewritten = "caf\\xc3\\xa9\\x09" if pg_server.major >= 16 else "caf???"
    assert shown[0] == session_factory.app(rewritten)
    assert shown[1] == long_name[:63]
    assert all(" " <= char <= "~" for char in shown[0])


def test_an_error_line_quoting_the_server_is_escaped(pg_server, role_factory) -> None:
    # given a database name that does not exist, quoted back by the server's refusal
    reaper = role_factory("reaper", grants=REAPER_GRANTS)
    dsn = dsn_for(pg_server, reaper.name, reaper.password, dbname="missing" + HOSTILE)
    # when a report is asked for, then the error line on stderr shows the name escaped
    done = reaper_cli("report", "--dsn", dsn)
    assert done.returncode == 3
    assert_nothing_raw(done.stderr)
    assert printable("missing" + HOSTILE) in done.stderr
