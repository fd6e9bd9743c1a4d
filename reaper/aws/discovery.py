"""The PostgreSQL instances of the function's Region, as the RDS API describes them.

`list_instances` pages through `DescribeDBInstances` (engines postgres and aurora-postgresql)
and, when any of them belongs to a cluster, `DescribeDBClusters` for what only the cluster knows:
which member is the writer, the cluster's tags (which its members inherit) and its Aurora
Serverless v2 capacity range. `discover` keeps that list for REAPER_DISCOVERY_CACHE_SECONDS
across warm invocations. Which of the instances become targets is decided in
`reaper.aws.targets`; nothing here connects to a database.

An instance's status tells a stopped instance apart, but not a paused one: while an Aurora
Serverless v2 instance is auto-paused "its status value is still listed as Available" (Amazon
Aurora User Guide, "Scaling to Zero ACUs with automatic pause and resume for Aurora Serverless
v2", section "Checking if an Aurora Serverless v2 instance is paused"); only CloudWatch's
ServerlessDatabaseCapacity/ACUUtilization going to 0 shows it. So `auto_pause` marks every
instance that *can* pause (class db.serverless in a cluster whose MinCapacity is 0).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from botocore.exceptions import BotoCoreError, ClientError

from reaper.aws._clients import rds_client
from reaper.errors import DiscoveryError

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping

POSTGRES_ENGINES = ("postgres", "aurora-postgresql")
SERVERLESS_V2_CLASS = "db.serverless"

InstanceRole = Literal["instance", "writer", "reader"]


@dataclass(frozen=True, slots=True)
class RdsInstance:
    """What the RDS API says about one PostgreSQL DB instance."""

    identifier: str
    engine: str
    status: str
    instance_class: str
    # None while the instance is being created.
    host: str | None
    port: int | None
    vpc_id: str | None
    cluster_id: str | None = None
    role: InstanceRole = "instance"
    # The cluster's tags overlaid with the instance's own.
    tags: Mapping[str, str] = field(default_factory=dict)
    # Aurora Serverless v2 in a cluster whose minimum capacity is 0 ACUs: may be paused now.
    auto_pause: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The description as JSON-ready values (tags included: they hold no secret)."""
        return {
            "identifier": self.identifier,
            "engine": self.engine,
            "status": self.status,
            "instance_class": self.instance_class,
            "host": self.host,
            "port": self.port,
            "vpc_id": self.vpc_id,
            "cluster": self.cluster_id,
            "role": self.role,
            "auto_pause": self.auto_pause,
            "tags": dict(self.tags),
        }


@dataclass(frozen=True, slots=True)
class _Cluster:
    writer: str | None
    tags: Mapping[str, str]
    auto_pause: bool


def list_instances() -> tuple[RdsInstance, ...]:
    """Every PostgreSQL instance (RDS and Aurora, writers and readers) of the Region.

    Raises:
        DiscoveryError: an RDS API call failed (after botocore's retries); the message names
            the call and AWS's error code.
    """
    try:
        client = rds_client()
    except BotoCoreError as exc:
        # No Region (neither AWS_REGION nor AWS_DEFAULT_REGION, no profile): said before any call.
        raise DiscoveryError(f"cannot list RDS databases: {type(exc).__name__}: {exc}") from exc
    raw_instances = [
        raw
        for raw in _pages(client, "describe_db_instances", "DBInstances")
        # Filtered by the API already; checked again because a database of another engine
        # must never be connected to with a PostgreSQL driver.
        if raw.get("Engine") in POSTGRES_ENGINES
    ]
    clusters: dict[str, _Cluster] = {}
    if any(raw.get("DBClusterIdentifier") for raw in raw_instances):
        clusters = {
            raw["DBClusterIdentifier"]: _cluster(raw)
            for raw in _pages(client, "describe_db_clusters", "DBClusters")
        }
    return tuple(_instance(raw, clusters) for raw in raw_instances)


def _pages(client: Any, operation: str, key: str) -> Iterator[dict[str, Any]]:
    paginator = client.get_paginator(operation)
    try:
        for page in paginator.paginate(
            Filters=[{"Name": "engine", "Values": list(POSTGRES_ENGINES)}]
        ):
            yield from page.get(key, [])
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise DiscoveryError(
            f"cannot list RDS databases ({operation}): {error.get('Code', 'error')}: "
            f"{error.get('Message', '')}".rstrip(": ")
        ) from exc
    except BotoCoreError as exc:
        raise DiscoveryError(
            f"cannot list RDS databases ({operation}): {type(exc).__name__}: {exc}"
        ) from exc


def _tags(raw: Mapping[str, Any]) -> dict[str, str]:
    return {tag["Key"]: tag.get("Value", "") for tag in raw.get("TagList") or ()}


def _cluster(raw: Mapping[str, Any]) -> _Cluster:
    writers = [
        m["DBInstanceIdentifier"]
        for m in raw.get("DBClusterMembers") or ()
        if m.get("IsClusterWriter")
    ]
    scaling = raw.get("ServerlessV2ScalingConfiguration") or {}
    min_capacity = scaling.get("MinCapacity")
    return _Cluster(
        writer=writers[0] if writers else None,
        tags=_tags(raw),
        auto_pause=min_capacity is not None and float(min_capacity) == 0.0,
    )


def _instance(raw: Mapping[str, Any], clusters: Mapping[str, _Cluster]) -> RdsInstance:
    identifier = raw["DBInstanceIdentifier"]
    endpoint = raw.get("Endpoint") or {}
    cluster_id = raw.get("DBClusterIdentifier")
    cluster = clusters.get(cluster_id) if cluster_id else None
    role: InstanceRole = "instance"
    if cluster_id:
        role = "writer" if cluster is not None and cluster.writer == identifier else "reader"
    instance_class = raw.get("DBInstanceClass", "")
    return RdsInstance(
        identifier=identifier,
        engine=raw.get("Engine", ""),
        status=raw.get("DBInstanceStatus", ""),
        instance_class=instance_class,
        host=endpoint.get("Address"),
        port=endpoint.get("Port"),
        vpc_id=(raw.get("DBSubnetGroup") or {}).get("VpcId"),
        cluster_id=cluster_id,
        role=role,
        tags={**(cluster.tags if cluster else {}), **_tags(raw)},
        auto_pause=(
            cluster is not None and cluster.auto_pause and instance_class == SERVERLESS_V2_CLASS
        ),
    )


class _InstanceCache:
    """The last listing and when it was taken, for warm invocations (one per process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._taken: float | None = None
        self._instances: tuple[RdsInstance, ...] = ()

    def get(self, max_age: float) -> tuple[RdsInstance, ...]:
        with self._lock:
            now = time.monotonic()
            if self._taken is None or now - self._taken >= max_age:
                # A failure raises and leaves the previous listing unused: an API error must
                # be seen, not hidden behind a stale list.
                self._taken = None
                self._instances = list_instances()
                self._taken = now
            return self._instances

    def clear(self) -> None:
        with self._lock:
            self._taken = None
            self._instances = ()


_cache = _InstanceCache()


def discover(*, max_age: float) -> tuple[RdsInstance, ...]:
    """`list_instances()`, reusing a listing younger than `max_age` seconds.

    Raises:
        DiscoveryError: the RDS API failed (never answered from the cache).
    """
    return _cache.get(max_age)


def clear_cache() -> None:
    """Forget the cached listing (tests; the next `discover` asks RDS again)."""
    _cache.clear()


def tagged(instances: Iterable[RdsInstance], key: str, value: str) -> list[RdsInstance]:
    """The instances whose tag `key` (own or inherited from the cluster) equals `value`."""
    return [instance for instance in instances if instance.tags.get(key) == value]
