"""Names from the server reach the terminal escaped: role, database and application names
holding a newline, a screen-clearing escape, an OSC 8 hyperlink or a bidirectional override,
through the real `reaper run`, `report` and `doctor` and their error lines."""

from __future__ import annotations

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
    # then each name is shown escaped, and nothing of it acts on the terminal
    reaper, app, database = hostile["names"]
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


def test_an_error_line_quoting_the_server_is_escaped(pg_server, role_factory) -> None:
    # given a database name that does not exist, quoted back by the server's refusal
    reaper = role_factory("reaper", grants=REAPER_GRANTS)
    dsn = dsn_for(pg_server, reaper.name, reaper.password, dbname="missing" + HOSTILE)
    # when a report is asked for, then the error line on stderr shows the name escaped
    done = reaper_cli("report", "--dsn", dsn)
    assert done.returncode == 3
    assert_nothing_raw(done.stderr)
    assert printable("missing" + HOSTILE) in done.stderr
