"""Throwaway clusters (reaper.local.cluster) and the server fixtures (tests.fix_db) really work."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from reaper.errors import LocalPostgresError
from reaper.local.binaries import PostgresBinaries
from reaper.local.cluster import LocalPostgres
from reaper.local.sessions import LISTEN_CHANNEL, open_sessions
from tests.fix_db import dsn_for, wait_until
from tests.harness.binaries import available_binaries
from tests.harness.cluster import CrashablePostgres

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.fix_db import Connection, PgServer, RoleFactory, SessionFactory, SessionState

BINARIES = available_binaries()

pytestmark = pytest.mark.pg


def _binaries_id(binaries: PostgresBinaries) -> str:
    return f"pg{binaries.major}"


@pytest.fixture(scope="module", params=BINARIES, ids=_binaries_id)
def binaries(request: pytest.FixtureRequest) -> PostgresBinaries:
    installation: PostgresBinaries = request.param
    return installation


@pytest.fixture(scope="module")
def cluster(binaries: PostgresBinaries) -> Iterator[LocalPostgres]:
    with LocalPostgres(binaries, settings={"max_connections": 123}) as running:
        yield running


def _fetch_one(conn: Connection, query: str) -> Any:
    row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


# -- LocalPostgres ---------------------------------------------------------------------------


def test_cluster_answers_select_version(cluster: LocalPostgres) -> None:
    with psycopg.connect(cluster.dsn()) as conn:
        version = _fetch_one(conn, "SELECT version()")

    assert version.startswith(f"PostgreSQL {cluster.major}.")


def test_tcp_login_without_password_is_refused(cluster: LocalPostgres) -> None:
    # An empty password is libpq's "none"; the server demands SCRAM over TCP.
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(cluster.dsn(user=cluster.superuser, password=""))


def test_tcp_login_with_wrong_password_is_refused(cluster: LocalPostgres) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(cluster.dsn(password="not-the-password"))


def test_settings_are_applied(cluster: LocalPostgres) -> None:
    with psycopg.connect(**cluster.conninfo()) as conn:
        max_connections = _fetch_one(conn, "SHOW max_connections")
        fsync = _fetch_one(conn, "SHOW fsync")
        listen_addresses = _fetch_one(conn, "SHOW listen_addresses")

    assert (max_connections, fsync, listen_addresses) == ("123", "off", "127.0.0.1")


def test_dsn_quotes_a_password_with_uri_delimiters(binaries: PostgresBinaries) -> None:
    password = "p@ss:w/rd?#%& x"

    with (
        LocalPostgres(binaries, password=password) as running,
        psycopg.connect(running.dsn()) as conn,
    ):
        assert _fetch_one(conn, "SELECT 1") == 1


def test_repr_never_shows_the_password(binaries: PostgresBinaries) -> None:
    cluster = LocalPostgres(binaries, password="s3cret-value")

    assert "s3cret-value" not in repr(cluster)


def test_reserved_setting_is_rejected(binaries: PostgresBinaries) -> None:
    with pytest.raises(LocalPostgresError, match="port"):
        LocalPostgres(binaries, settings={"port": 5432})


def test_failed_start_reports_the_server_log_and_cleans_up(binaries: PostgresBinaries) -> None:
    cluster = LocalPostgres(binaries, settings={"shared_buffers": "not-a-size"})

    with pytest.raises(LocalPostgresError, match="shared_buffers"):
        cluster.start()

    with pytest.raises(LocalPostgresError, match="not been started"):
        _ = cluster.data_dir


def test_stop_removes_the_data_dir_and_is_idempotent(binaries: PostgresBinaries) -> None:
    cluster = LocalPostgres(binaries).start()
    workdir = cluster.data_dir.parent
    dsn = cluster.dsn()

    cluster.stop()
    cluster.stop()

    assert not workdir.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=5)


def test_shutdown_now_keeps_data_for_restart(binaries: PostgresBinaries) -> None:
    with CrashablePostgres(binaries) as cluster:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute("CREATE TABLE survivor (id int)")
            # synchronous_commit=off may leave the commit in WAL buffers an immediate stop loses.
            conn.execute("CHECKPOINT")
        doomed = psycopg.connect(cluster.dsn(), autocommit=True)

        cluster.shutdown_now()

        with pytest.raises(psycopg.OperationalError):
            doomed.execute("SELECT 1")
        doomed.close()
        cluster.restart()
        with psycopg.connect(cluster.dsn()) as conn:
            assert _fetch_one(conn, "SELECT count(*) FROM survivor") == 0


def test_clusters_of_every_version_run_side_by_side() -> None:
    with contextlib.ExitStack() as stack:
        clusters = [stack.enter_context(LocalPostgres(each)) for each in BINARIES]

        majors = []
        for cluster in clusters:
            with psycopg.connect(cluster.dsn()) as conn:
                majors.append(int(_fetch_one(conn, "SHOW server_version_num")) // 10000)

    assert majors == [each.major for each in BINARIES]


def test_binaries_from_a_bare_bindir_detect_their_major(binaries: PostgresBinaries) -> None:
    found = PostgresBinaries(bindir=binaries.bindir)

    assert found.major == binaries.major
    assert str(binaries.bindir) in found.label


def test_cluster_runs_binaries_known_only_by_their_bindir(binaries: PostgresBinaries) -> None:
    by_bindir = PostgresBinaries(bindir=binaries.bindir, os_user_as_root=binaries.os_user_as_root)

    with LocalPostgres(by_bindir) as cluster, psycopg.connect(cluster.dsn()) as conn:
        assert int(_fetch_one(conn, "SHOW server_version_num")) // 10000 == binaries.major


def test_many_connections_setting_starts(binaries: PostgresBinaries) -> None:
    with (
        LocalPostgres(binaries, settings={"max_connections": 5000}) as cluster,
        psycopg.connect(cluster.dsn()) as conn,
    ):
        assert _fetch_one(conn, "SHOW max_connections") == "5000"


# -- fixtures from tests.fix_db --------------------------------------------------------------


@pytest.mark.safety
def test_pg_server_reports_its_major_version(pg_server: PgServer, admin_conn: Connection) -> None:
    version_num = int(_fetch_one(admin_conn, "SHOW server_version_num"))

    assert version_num // 10000 == pg_server.major


@pytest.mark.safety
@pytest.mark.parametrize(
    "state",
    [
        pytest.param("idle", id="idle"),
        pytest.param("idle in transaction", id="idle-in-transaction"),
        pytest.param("idle in transaction (aborted)", id="idle-in-transaction-aborted"),
        pytest.param("active", id="active"),
    ],
)
def test_session_factory_opens_sessions_in_the_requested_state(
    session_factory: SessionFactory, admin_conn: Connection, state: SessionState
) -> None:
    application_name = session_factory.app(state.replace(" ", "-"))

    conn = session_factory(application_name, state=state)

    row = admin_conn.execute(
        "SELECT application_name, state FROM pg_stat_activity WHERE pid = %s",
        [session_factory.pid_of(conn)],
    ).fetchone()
    assert row == (application_name, state)
    assert application_name.startswith(session_factory.prefix)


def test_listen_session_is_idle_and_shows_its_listen(
    pg_server: PgServer, admin_conn: Connection
) -> None:
    with open_sessions() as sessions:
        conn = sessions.open(pg_server.admin_dsn, "listen", application_name="listener")

        row = admin_conn.execute(
            "SELECT state, query FROM pg_stat_activity WHERE pid = %s", [conn.info.backend_pid]
        ).fetchone()

    assert row is not None
    state, query = row
    assert state == "idle"
    assert query.startswith("LISTEN ")
    assert LISTEN_CHANNEL in query


def test_closing_sessions_ends_a_running_query(pg_server: PgServer, admin_conn: Connection) -> None:
    with open_sessions() as sessions:
        pid = sessions.open(pg_server.admin_dsn, "active").info.backend_pid

    wait_until(
        lambda: (
            admin_conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()
            is None
        ),
        message=f"backend {pid} gone",
    )


def test_role_factory_role_logs_in_with_its_password(
    pg_server: PgServer, role_factory: RoleFactory
) -> None:
    role = role_factory("reaper_test")

    with psycopg.connect(dsn_for(pg_server, role.name, role.password)) as conn:
        monitor = _fetch_one(conn, "SELECT pg_has_role(current_user, 'pg_monitor', 'MEMBER')")
        superuser = _fetch_one(conn, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user")

    assert (monitor, superuser) == (True, False)
    assert role.password not in repr(role)


def test_role_factory_role_sessions_are_visible_to_the_factory(
    session_factory: SessionFactory, role_factory: RoleFactory, admin_conn: Connection
) -> None:
    role = role_factory("reaper_app", grants=())

    conn = session_factory(session_factory.app("as-role"), user=role.name, password=role.password)

    user = _fetch_one(conn, "SELECT current_user")
    assert user == role.name
