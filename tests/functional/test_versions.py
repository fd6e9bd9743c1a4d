"""Behaviour that differs between PostgreSQL majors, checked on the servers that have it."""

from __future__ import annotations

import pytest

from reaper.core.versions import RESERVED_CONNECTIONS_MAJOR
from reaper.local.cluster import LocalPostgres
from reaper.pg import gateway
from reaper.pg.conninfo import ConnInfo
from tests.fix_db import binaries_or_skip
from tests.functional.reaping import target_for


@pytest.mark.safety
def test_snapshot_reads_reserved_connections_from_16_on_and_zero_before(
    pg_server, admin_conn, role_factory
) -> None:
    # given the server's own view of its connection reserves
    reserved = admin_conn.execute(
        "SELECT setting::int FROM pg_settings WHERE name = 'reserved_connections'"
    ).fetchone()
    superuser_reserved = admin_conn.execute("SHOW superuser_reserved_connections").fetchone()
    # when a least-privilege reaper takes a snapshot
    with gateway.connect(target_for(pg_server, role_factory("reaper"))) as conn:
        picture = gateway.take_snapshot(conn).connections
    # then it reads both reserves, and reserved_connections 0 where the server has none
    assert superuser_reserved is not None
    assert picture.superuser_reserved_connections == int(superuser_reserved[0])
    if pg_server.major >= RESERVED_CONNECTIONS_MAJOR:
        assert reserved is not None
        assert picture.reserved_connections == reserved[0]
    else:
        assert reserved is None
        assert picture.reserved_connections == 0


@pytest.mark.parametrize("major", [16, 17, 18], ids=lambda major: f"pg{major}")
def test_reserved_connections_shrink_the_slots_the_snapshot_counts(major: int) -> None:
    # given a server of that major that keeps 3 slots for pg_use_reserved_connections
    settings = {
        "max_connections": 20,
        "superuser_reserved_connections": 2,
        "reserved_connections": 3,
    }
    with LocalPostgres(binaries_or_skip(major), settings=settings) as server:
        target = ConnInfo.from_dsn(server.dsn(), name="reserved")
        # when the reaper takes a snapshot
        with gateway.connect(target) as conn:
            picture = gateway.take_snapshot(conn).connections
    # then both reserves come off the slots ordinary roles may use
    assert (picture.superuser_reserved_connections, picture.reserved_connections) == (2, 3)
    assert picture.usable_connections == 15
