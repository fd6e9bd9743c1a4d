"""Behaviour that differs between PostgreSQL majors, checked on the servers that have it."""

from __future__ import annotations

import pytest

from reaper.local.cluster import LocalPostgres
from reaper.pg import gateway
from reaper.pg.conninfo import ConnInfo
from tests.fix_db import binaries_or_skip
from tests.functional.reaping import reaper_role, target_for

# reserved_connections and the pg_use_reserved_connections role arrived in PostgreSQL 16.
FIRST_MAJOR_WITH_RESERVED_CONNECTIONS = 16


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
    with gateway.connect(target_for(pg_server, reaper_role(role_factory))) as conn:
        picture = gateway.take_snapshot(conn).connections
    # then it counts both reserves, and no reserved_connections where the server has none
    assert superuser_reserved is not None
    if pg_server.major >= FIRST_MAJOR_WITH_RESERVED_CONNECTIONS:
        assert reserved is not None
        expected = int(superuser_reserved[0]) + reserved[0]
    else:
        assert reserved is None
        expected = int(superuser_reserved[0])
    assert picture.reserved_connections == expected


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
    assert picture.reserved_connections == 3 + 2
    assert picture.usable_connections == 15
