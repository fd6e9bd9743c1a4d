"""The doctor's decisions from plain facts, and how a full database is told apart: pure."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import pytest

from reaper.cli.doctor import render_report
from reaper.core.checks import MAX_LISTED, Check, DoctorReport, Status, policy_checks, setup_checks
from reaper.core.full_database import FullCause, full_database_fix, refusal_cause, reserve_major
from reaper.core.pass_lock import LockHolder, PassLock
from reaper.core.setup_facts import SetupFacts
from tests.unit.planning_data import policy, session, snapshot

if TYPE_CHECKING:
    from reaper.core.snapshot import Session

COMPLETE_18 = SetupFacts(
    role="idle_reaper",
    server_version_num=180001,
    is_superuser=False,
    is_rds_superuser=False,
    sees_all_sessions=True,
    may_signal_others=True,
    may_use_reserved_connections=True,
    max_connections=100,
    superuser_reserved_connections=3,
    reserved_connections=3,
    role_connection_limit=3,
    role_statement_timeout="30s",
    uncapped_login_roles=(),
    capped_login_connections=60,
    sslmode="verify-full",
    tls_version="TLSv1.3",
    host="orders.abc.eu-west-1.rds.amazonaws.com",
)
COMPLETE_15 = dataclasses.replace(
    COMPLETE_18,
    server_version_num=150010,
    may_use_reserved_connections=None,
    reserved_connections=0,
)


def check(facts: SetupFacts, name: str) -> Check:
    [found] = [c for c in setup_checks(facts) if c.name == name]
    return found


def test_the_documented_setup_passes_every_check_on_18_and_15() -> None:
    for facts in (COMPLETE_18, COMPLETE_15):
        assert {c.status for c in setup_checks(facts)} == {Status.OK}, facts.major


@pytest.mark.parametrize(
    ("reserved", "granted", "status", "fix_names"),
    [
        (3, True, Status.OK, None),
        (3, False, Status.FAIL, "GRANT pg_use_reserved_connections TO idle_reaper"),
        (0, True, Status.WARN, "reserved_connections"),
        (0, False, Status.WARN, "GRANT pg_use_reserved_connections TO idle_reaper"),
    ],
)
def test_reserved_way_in_on_16_and_later_needs_slots_and_the_grant(
    reserved, granted, status, fix_names
) -> None:
    facts = dataclasses.replace(
        COMPLETE_18, reserved_connections=reserved, may_use_reserved_connections=granted
    )
    found = check(facts, "reserved way in")
    assert found.status is status
    if fix_names:
        assert found.fix is not None
        assert fix_names in found.fix


def test_reserved_way_in_before_16_names_the_application_roles_without_a_limit() -> None:
    facts = dataclasses.replace(COMPLETE_15, uncapped_login_roles=("app_orders", "app_bi"))
    found = check(facts, "reserved way in")
    assert found.status is Status.WARN
    assert "app_orders, app_bi" in found.summary
    assert found.fix is not None
    assert "CONNECTION LIMIT" in found.fix


def test_reserved_way_in_before_16_warns_when_the_limits_leave_no_slot() -> None:
    facts = dataclasses.replace(COMPLETE_15, capped_login_connections=97)
    assert check(facts, "reserved way in").status is Status.WARN


@pytest.mark.parametrize(
    ("version", "status"),
    [(120020, Status.FAIL), (130000, Status.OK), (180001, Status.OK), (190000, Status.WARN)],
)
def test_server_version_is_supported_from_13_to_18(version, status) -> None:
    facts = dataclasses.replace(COMPLETE_18, server_version_num=version)
    assert check(facts, "server version").status is status


@pytest.mark.parametrize(
    ("superuser", "rds_superuser", "status"),
    [(False, False, Status.OK), (True, False, Status.WARN), (False, True, Status.WARN)],
)
def test_a_superuser_or_rds_superuser_reaper_is_warned_about(
    superuser, rds_superuser, status
) -> None:
    facts = dataclasses.replace(COMPLETE_18, is_superuser=superuser, is_rds_superuser=rds_superuser)
    assert check(facts, "least privilege").status is status


@pytest.mark.parametrize(
    ("holders", "status", "words"),
    [
        ((), Status.OK, "free"),
        ((LockHolder(4001, "idle_reaper", "idle-reaper"),), Status.OK, "pid 4001"),
        (
            (LockHolder(4003, "app", "psql"),),
            Status.FAIL,
            "pid 4003 (role app, application_name 'psql'), which is not a pass of the reaper",
        ),
    ],
    ids=["free", "another-pass", "squatted"],
)
def test_the_pass_lock_check_names_a_holder_that_is_not_a_reaper(holders, status, words) -> None:
    facts = dataclasses.replace(COMPLETE_18, pass_lock=PassLock("idle_reaper", holders))
    found = check(facts, "pass lock")
    assert found.status is status
    assert words in found.summary
    if status is Status.FAIL:
        assert found.fix is not None
        assert "pg_terminate_backend (4003)" in found.fix


@pytest.mark.parametrize(
    ("limit", "status"), [(-1, Status.WARN), (1, Status.WARN), (2, Status.OK), (3, Status.OK)]
)
def test_role_connection_limit_leaves_room_for_two_reapers(limit, status) -> None:
    facts = dataclasses.replace(COMPLETE_18, role_connection_limit=limit)
    assert check(facts, "connection limit").status is status


REMOTE = "orders.abc.eu-west-1.rds.amazonaws.com"


@pytest.mark.parametrize(
    ("sslmode", "tls", "host", "status", "words"),
    [
        ("verify-full", "TLSv1.3", REMOTE, Status.OK, "certificate verified"),
        ("verify-ca", "TLSv1.2", REMOTE, Status.OK, "certificate verified"),
        ("verify-full", "TLSv1.3", "127.0.0.1", Status.OK, "certificate verified"),
        # Off the machine, anything short of a verified certificate fails...
        ("require", "TLSv1.3", REMOTE, Status.FAIL, "certificate not verified"),
        ("prefer", "TLSv1.3", "10.0.3.7", Status.FAIL, "certificate not verified"),
        ("prefer", None, REMOTE, Status.FAIL, "without TLS"),
        ("disable", None, "db.internal", Status.FAIL, "without TLS"),
        # ...on it, it is a warning.
        ("require", "TLSv1.3", "127.0.0.1", Status.WARN, "certificate not verified"),
        ("prefer", None, "localhost", Status.WARN, "without TLS"),
        ("prefer", None, "::1", Status.WARN, "without TLS"),
        ("prefer", None, "/var/run/postgresql", Status.WARN, "without TLS"),
    ],
)
def test_connection_check_fails_unverified_tls_to_a_remote_server(
    sslmode, tls, host, status, words
) -> None:
    facts = dataclasses.replace(COMPLETE_18, sslmode=sslmode, tls_version=tls, host=host)
    found = check(facts, "connection")
    assert found.status is status
    assert words in found.summary
    assert f"sslmode={sslmode}" in found.summary
    assert host in found.summary
    if status is not Status.OK:
        assert "sslmode=verify-full" in found.fix
        assert "docs/deploying.md#tls-verification" in found.fix


def test_missing_grants_fail_and_name_the_grant() -> None:
    facts = dataclasses.replace(COMPLETE_18, sees_all_sessions=False, may_signal_others=False)
    assert check(facts, "sees sessions").fix == "GRANT pg_monitor TO idle_reaper"
    assert check(facts, "signals others").fix == "GRANT pg_signal_backend TO idle_reaper"
    assert DoctorReport("t", setup_checks(facts)).failed


def test_report_status_is_the_worst_check_and_each_line_carries_its_fix() -> None:
    report = DoctorReport(
        "writer",
        (
            Check("a", Status.OK, "fine", "never shown"),
            Check("b", Status.WARN, "hmm", "do this"),
        ),
    )
    text = render_report(report)
    assert report.status is Status.WARN
    assert not report.failed
    assert "never shown" not in text
    assert "  warn  b" in text
    assert text.splitlines()[2].endswith("hmm -> fix: do this")
    assert text.endswith("0 failed, 1 warning(s), 1 ok: ready, with warnings")
    assert report.to_dict()["checks"][1] == {
        "name": "b",
        "status": "warn",
        "summary": "hmm",
        "fix": "do this",
    }


@pytest.mark.parametrize(
    ("cause", "words"),
    [
        (FullCause.SERVER, ("reserved_connections", "pg_use_reserved_connections", "15 and older")),
        (FullCause.ROLE, ("its own CONNECTION LIMIT", "ALTER ROLE idle_reaper CONNECTION LIMIT 3")),
        (FullCause.DATABASE, ("ALTER DATABASE",)),
    ],
)
def test_full_database_fix_names_the_remedy_for_each_cause(cause, words) -> None:
    fix = full_database_fix(cause, "idle_reaper")
    for word in words:
        assert word in fix


@pytest.mark.parametrize(
    ("major", "named", "not_named"),
    [
        (16, "GRANT pg_use_reserved_connections TO idle_reaper", "CONNECTION LIMIT"),
        (15, "ALTER ROLE ... CONNECTION LIMIT", "pg_use_reserved_connections"),
    ],
)
def test_a_full_server_whose_refusal_tells_its_major_gets_only_that_majors_fix(
    major, named, not_named
) -> None:
    fix = full_database_fix(FullCause.SERVER, "idle_reaper", reserve_major=major)
    assert named in fix
    assert not_named not in fix
    assert "docs/database-role.md#a-reserved-way-in" in fix


@pytest.mark.parametrize(
    ("message", "major"),
    [
        ("remaining connection slots are reserved for non-replication superuser connections", 15),
        (
            "remaining connection slots are reserved for non-replication superuser, rds_reserved, "
            "and rds_superuser connections",
            15,
        ),
        (
            "remaining connection slots are reserved for roles with privileges of the "
            '"pg_use_reserved_connections" role',
            16,
        ),
        ("remaining connection slots are reserved for roles with the SUPERUSER attribute", 16),
        ("sorry, too many clients already", None),
    ],
)
def test_the_reserve_a_refusal_names_tells_the_major_family(message, major) -> None:
    assert reserve_major(_FATAL + message) == major


# What psycopg 3.3 with libpq 18 raised on this machine (PostgreSQL 15 and 18), trimmed.
_FATAL = 'connection failed: connection to server at "127.0.0.1", port 5432 failed: FATAL:  '


@pytest.mark.parametrize(
    ("message", "cause"),
    [
        ("sorry, too many clients already", FullCause.SERVER),
        (
            "remaining connection slots are reserved for non-replication superuser connections",
            FullCause.SERVER,
        ),
        (
            "remaining connection slots are reserved for roles with privileges of the "
            '"pg_use_reserved_connections" role',
            FullCause.SERVER,
        ),
        (
            "remaining connection slots are reserved for non-replication superuser, rds_reserved, "
            "and rds_superuser connections",
            FullCause.SERVER,
        ),
        ('too many connections for role "idle_reaper"', FullCause.ROLE),
        ('too many connections for database "postgres"', FullCause.DATABASE),
        ('password authentication failed for user "idle_reaper"', None),
        ('database "nope" does not exist', None),
    ],
)
def test_refused_login_is_told_apart_by_the_servers_53300_messages(message, cause) -> None:
    assert refusal_cause(None, _FATAL + message) == cause


def test_a_sqlstate_when_the_driver_gives_one_wins_over_the_words() -> None:
    assert refusal_cause("53300", "Verbindungen sind reserviert") == FullCause.SERVER
    assert refusal_cause("28P01", "sorry, too many clients already") is None


# --- sessions the rules match on an address other applications use (a pooler) --------------


def shared_addresses(*sessions: Session, **policy_fields: object) -> Check:
    """The doctor's shared-addresses check on these sessions under the lambda:* test policy."""
    [found] = [
        c
        for c in policy_checks(snapshot(*sessions), policy(**policy_fields))
        if c.name == "shared addresses"
    ]
    return found


def test_a_pooler_address_holding_matched_and_other_applications_is_warned_about() -> None:
    # given a pooler's server connections: two under a Lambda's name, one under metabase's
    pooler = "10.0.3.7"
    found = shared_addresses(
        session(10, client_addr=pooler),
        session(11, client_addr=pooler),
        session(12, client_addr=pooler, application_name="metabase"),
        session(13, client_addr="10.0.1.5", application_name="psql"),
    )
    # then the check names the address, what the rules match there and what else uses it
    assert found.status is Status.WARN
    assert "10.0.3.7: lambda:orders (2) beside metabase (1)" in found.summary
    assert "psql" not in found.summary
    assert found.fix is not None
    assert "exclude.client_addresses" in found.fix
    assert "docs/poolers.md" in found.fix


def test_excluding_the_pooler_address_clears_the_warning() -> None:
    sessions = (
        session(10, client_addr="10.0.3.7"),
        session(11, client_addr="10.0.3.7", application_name="metabase"),
    )
    found = shared_addresses(*sessions, exclude={"client_addresses": ["10.0.3.7/32"]})
    assert found.status is Status.OK


@pytest.mark.parametrize(
    "sessions",
    [
        # Lambda functions sharing subnets and security groups share one address
        (
            session(10, client_addr="10.0.1.5"),
            session(11, client_addr="10.0.1.5", application_name="lambda:payments"),
        ),
        # other applications on addresses where no rule matches anything
        (session(10, client_addr="10.0.1.5"), session(11, client_addr="10.0.9.9", user="bi")),
        # the reaper's own backend and a background worker on the matched address
        (session(10), session(11, backend_type="autovacuum worker", application_name="")),
    ],
    ids=["lambdas-on-one-address", "others-elsewhere", "own-backend-and-workers"],
)
def test_addresses_used_only_by_matched_applications_pass(sessions) -> None:
    assert shared_addresses(*sessions).status is Status.OK


def test_a_protected_session_under_a_matched_name_is_not_another_application() -> None:
    # a superuser's session named like the Lambda is spared, but it is the same application
    found = shared_addresses(session(10), session(11, is_superuser=True))
    assert found.status is Status.OK


def test_unix_socket_sessions_are_one_shared_place_and_the_fix_says_how_to_spare_them() -> None:
    # given a pooler on the database host that connects over the Unix socket
    found = shared_addresses(
        session(10, client_addr=None),
        session(11, client_addr=None, application_name=""),
    )
    # then the socket is named, and the fix says an address cannot cover it
    assert found.status is Status.WARN
    assert "the Unix socket: lambda:orders (1) beside (empty application_name) (1)" in (
        found.summary
    )
    assert found.fix is not None
    assert "exclude.users" in found.fix


def test_many_shared_addresses_are_listed_up_to_the_limit() -> None:
    sessions = []
    for index in range(MAX_LISTED + 2):
        address = f"10.0.3.{index}"
        sessions += [
            session(100 + index, client_addr=address),
            session(200 + index, client_addr=address, application_name="metabase"),
        ]
    found = shared_addresses(*sessions)
    assert found.summary.count("beside metabase") == MAX_LISTED
    assert found.summary.endswith("and 2 more addresses")
