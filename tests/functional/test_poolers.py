"""Behind PgBouncer in transaction mode: what the pooler's server connections look like to the
reaper, what terminating one does to the pooler's clients, and how an exclusion spares them.

These are the facts docs/poolers.md states, checked against a real PgBouncer (this machine's
`pgbouncer`, Debian's 1.18) in front of each test server, with one server connection per pool so
that which client used it last is known. Where PgBouncer is not installed the tests are skipped
and say so: `make test` installs no system packages (`apt-get install pgbouncer` does).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from reaper.actions.run import run_pass
from reaper.core.planning import Reason
from reaper.core.result import Outcome
from reaper.local.sessions import open_sessions
from tests.fix_db import wait_until
from tests.functional.reaping import (
    THRESHOLD,
    ended,
    policy_for,
    target_for,
    wait_past_threshold,
)
from tests.harness.pgbouncer import PgBouncer, find_pgbouncer

if TYPE_CHECKING:
    from collections.abc import Iterator

    from reaper.local.sessions import Connection, OpenSessions, SessionState
    from tests.functional.conftest import Apps

PGBOUNCER = find_pgbouncer()
# Enough queries sent right after a signal to see how often one reaches the dying connection.
RACE_TRIALS = 200

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        PGBOUNCER is None,
        reason="pgbouncer is not installed (Debian: apt-get install pgbouncer); the pooler "
        "tests need it",
    ),
]


@dataclass
class ServerConnection:
    """One of the pooler's connections, as pg_stat_activity shows it."""

    pid: int
    usename: str
    application_name: str
    client_addr: str | None
    backend_start: Any
    state: str


@dataclass
class Pooler:
    """A PgBouncer in front of the test server, and its clients: this test's applications."""

    bouncer: PgBouncer
    clients: OpenSessions
    apps: Apps
    admin_conn: Connection

    def client(self, suffix: str | None, state: SessionState = "idle") -> Connection:
        """A client of application `suffix` (None: no application_name) through the pooler,
        left in `state`."""
        role = self.apps.role
        conn = self.clients.open(
            self.bouncer.dsn(role.name, role.password),
            state,
            application_name=None if suffix is None else self.apps.name(suffix),
        )
        # In transaction mode the next statement may run on another server connection, where a
        # statement psycopg prepared does not exist: PgBouncer 1.18 cannot carry them over.
        conn.prepare_threshold = None
        return conn

    def server_connections(self) -> list[ServerConnection]:
        """The pooler's connections to the server: the only sessions of the test's role."""
        rows = self.admin_conn.execute(
            "SELECT pid, usename, application_name, host(client_addr), backend_start, state"
            " FROM pg_stat_activity WHERE usename = %s ORDER BY pid",
            [self.apps.role.name],
        ).fetchall()
        return [ServerConnection(*row) for row in rows]


@pytest.fixture
def pooler(pg_server, apps, admin_conn) -> Iterator[Pooler]:
    """PgBouncer (transaction mode, one server connection) in front of `pg_server`, for the
    test's application role; its clients are closed, and it is stopped, at teardown."""
    assert PGBOUNCER is not None
    bouncer = PgBouncer(
        PGBOUNCER,
        server_host=pg_server.host,
        server_port=pg_server.port,
        logins={apps.role.name: apps.role.password},
    )
    bouncer.start()
    try:
        with open_sessions() as clients:
            yield Pooler(bouncer, clients, apps, admin_conn)
    finally:
        bouncer.stop()


@pytest.fixture
def reaper(pg_server, role_factory):
    """A target that connects to the server directly, as a least-privilege reaper role."""
    return target_for(pg_server, role_factory("reaper"))


def record_of(result, pid: int):
    return next(record for record in result.sessions if record.pid == pid)


def exclusion_of(address: str | None) -> dict[str, list[str]]:
    """The policy's `exclude` naming exactly this address (a /32 or a /128)."""
    assert address is not None
    return {"client_addresses": [str(ipaddress.ip_network(address))]}


def test_a_server_connection_carries_the_application_name_of_its_last_client(pooler) -> None:
    # given a client of 'orders' that ran a statement through the pooler
    pooler.client("orders")
    [first] = pooler.server_connections()
    assert first.application_name == pooler.apps.name("orders")

    # when a client of 'bi' runs one next
    pooler.client("bi")

    # then the same server connection, opened for 'orders', now shows 'bi', with the pooler's
    # login and the pooler's address
    [now] = pooler.server_connections()
    assert (now.pid, now.backend_start) == (first.pid, first.backend_start)
    assert now.application_name == pooler.apps.name("bi")
    assert now.usename == pooler.apps.role.name
    assert first.client_addr is not None
    assert now.client_addr == first.client_addr
    assert now.state == "idle"

    # and a client that sets no application_name runs under the last client's
    unnamed = pooler.client(None)
    shown = unnamed.execute("SELECT current_setting('application_name')").fetchone()
    assert shown == (pooler.apps.name("bi"),)


def test_the_reaper_plans_to_terminate_a_poolers_connection_unless_its_address_is_excluded(
    pooler, session_factory, reaper
) -> None:
    # given the pooler's server connection, idle past the threshold under a Lambda's name
    pooler.client("orders")
    wait_past_threshold()
    [server] = pooler.server_connections()

    # when a dry run plans with the rule that matches this test's Lambda names
    planned = run_pass(reaper, policy_for(session_factory, dry_run=True))

    # then the pooler's connection is planned like any Lambda session
    record = record_of(planned, server.pid)
    assert (record.reason, record.outcome) == (Reason.IDLE_TOO_LONG, Outcome.WOULD_TERMINATE)

    # and with the pooler's address excluded, a real pass spares it
    excluded = policy_for(session_factory, exclude=exclusion_of(server.client_addr))
    record = record_of(run_pass(reaper, excluded), server.pid)
    assert (record.reason, record.outcome) == (Reason.EXCLUDED_ADDRESS, Outcome.SPARED)
    assert [s.pid for s in pooler.server_connections()] == [server.pid]


def test_a_terminated_idle_server_connection_is_replaced_without_an_error_for_the_clients(
    pooler, session_factory, reaper
) -> None:
    # given three clients between transactions, sharing the pooler's one server connection
    clients = [pooler.client(f"fn{index}") for index in range(3)]
    wait_past_threshold()
    [server] = pooler.server_connections()

    # when the reaper terminates it, and the pooler has seen it go
    result = run_pass(reaper, policy_for(session_factory))
    assert record_of(result, server.pid).outcome is Outcome.TERMINATED
    assert ended(session_factory, server.pid)
    wait_until(
        lambda: server.pid not in pooler.bouncer.server_pids(),
        message="the pooler drops the terminated server connection",
    )

    # then every client's next statements succeed, on a new server connection
    served_by = {
        client.execute("SELECT pg_backend_pid()").fetchone() for client in clients for _ in range(5)
    }
    [(new_pid,)] = served_by
    assert new_pid != server.pid
    assert all(not client.closed for client in clients)


def test_a_client_inside_a_transaction_sees_one_error_and_loses_its_connection(
    pooler, session_factory, reaper
) -> None:
    # given a client inside a transaction: it holds the server connection, idle in transaction
    in_transaction = pooler.client("orders", state="idle in transaction")
    wait_past_threshold()
    [server] = pooler.server_connections()
    assert server.state == "idle in transaction"

    # when the reaper terminates that server connection
    rule = {"states": {"idle in transaction": THRESHOLD}}
    result = run_pass(reaper, policy_for(session_factory, rule=rule))
    assert record_of(result, server.pid).outcome is Outcome.TERMINATED
    assert ended(session_factory, server.pid)

    # then the client's next statement fails with the server's error, and the pooler has
    # closed its connection: the client must reconnect, as without a pooler
    with pytest.raises(psycopg.errors.AdminShutdown):
        in_transaction.execute("SELECT 1")
    assert in_transaction.closed
    assert pooler.client("orders").execute("SELECT 1").fetchone() == (1,)


def test_a_statement_sent_right_after_the_signal_fails_at_most_once_then_reconnecting_works(
    pg_server, pooler, admin_conn, capsys
) -> None:
    # given a client whose server connection is signalled, and a statement sent at once after
    failed = 0
    client = pooler.client("orders")
    for _trial in range(RACE_TRIALS):
        (pid,) = client.execute("SELECT pg_backend_pid()").fetchone()
        admin_conn.execute("SELECT pg_terminate_backend(%s)", [pid])
        try:
            (served_by,) = client.execute("SELECT pg_backend_pid()").fetchone()
        except psycopg.OperationalError:
            # then a statement that reached the dying connection fails, and the pooler closes
            # that client's connection: one error, then a new connection works
            failed += 1
            assert client.closed
            client = pooler.client("orders")
        else:
            # or the pooler had already dropped it and served the statement on a new one
            assert served_by != pid
    with capsys.disabled():
        print(
            f"\n{PGBOUNCER} in front of {pg_server.label}: {failed} of {RACE_TRIALS} statements "
            "sent right after pg_terminate_backend failed"
        )
