"""Fixtures the functional tests share: the reaper's role, login and target, the simulated Lambda
functions and their sessions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from reaper.core.pass_lock import PASS_LOCK_KEY
from tests.fix_db import dsn_for
from tests.functional.reaping import alive, ended, target_for, wait_past_threshold

if TYPE_CHECKING:
    from psycopg import Connection

    from reaper.pg.conninfo import ConnInfo
    from tests.fix_db import PgServer, Role, RoleFactory, SessionFactory


@pytest.fixture
def reaper_role(role_factory: RoleFactory) -> Role:
    """The reaper's least-privilege role (pg_monitor and pg_signal_backend)."""
    return role_factory("reaper")


@pytest.fixture
def reaper_dsn(pg_server: PgServer, reaper_role: Role) -> str:
    """The reaper role's DSN (it holds the password: never print it)."""
    return dsn_for(pg_server, reaper_role.name, reaper_role.password)


@pytest.fixture
def reaper(pg_server: PgServer, reaper_role: Role) -> ConnInfo:
    """The reaper role's connection to the test server."""
    return target_for(pg_server, reaper_role)


@pytest.fixture
def database_url(function_env: pytest.MonkeyPatch, reaper_dsn: str) -> str:
    """REAPER_DATABASE_URL set to the reaper role's DSN."""
    function_env.setenv("REAPER_DATABASE_URL", reaper_dsn)
    return reaper_dsn


@pytest.fixture
def app_role(role_factory: RoleFactory) -> Role:
    """The role the simulated Lambda functions log in as (no special grants)."""
    return role_factory("app", grants=())


@dataclass
class Apps:
    """This test's simulated Lambda functions: sessions of `app_role`, named
    `{per-test prefix}-{suffix}` so that no other test's policy matches them."""

    factory: SessionFactory
    role: Role

    def name(self, suffix: str) -> str:
        """The application_name of `suffix` in this test."""
        return self.factory.app(suffix)

    def connect(self, suffix: str, **kwargs: Any) -> Connection[Any]:
        """Open a session of application `suffix` (kwargs: state, dbname); its connection."""
        return self.factory(
            self.name(suffix), user=self.role.name, password=self.role.password, **kwargs
        )

    def open(self, suffix: str, **kwargs: Any) -> int:
        """Open a session of application `suffix` (kwargs: state, dbname); its backend pid."""
        return self.factory.pid_of(self.connect(suffix, **kwargs))

    def open_stale(self, suffix: str, *, threshold: float) -> int:
        """Open a session of application `suffix` and wait until it is idle past `threshold`."""
        pid = self.open(suffix)
        wait_past_threshold(threshold)
        return pid

    def hold_pass_lock(self, suffix: str = "squatter") -> Connection[Any]:
        """Open a session of application `suffix` that takes the reaper's pass lock, as any
        role that can connect may; its connection."""
        conn = self.connect(suffix)
        conn.execute("SELECT pg_advisory_lock(%s)", [PASS_LOCK_KEY])
        return conn

    def alive(self, pid: int) -> bool:
        """True while backend `pid` exists."""
        return alive(self.factory, pid)

    def ended(self, pid: int) -> bool:
        """Wait for a signalled backend to exit (asynchronously); True once it has."""
        return ended(self.factory, pid)


@pytest.fixture
def apps(session_factory: SessionFactory, app_role: Role) -> Apps:
    """Open this test's application sessions as `app_role`."""
    return Apps(session_factory, app_role)
