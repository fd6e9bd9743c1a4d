"""Discovery as a user runs it: `reaper invoke` and `reaper targets` in their own processes,
against a moto server over HTTP (AWS_ENDPOINT_URL) whose RDS instances are local servers.

The fleet: orders-db (RDS, tagged: the stack's secret and policy), billing-1 (writer of a
tagged Aurora cluster; its own secret and policy by tag), and on a third server nobody may
visit: legacy-db (untagged), archive-db (tagged, stopped) and reports-1 (tagged Aurora
Serverless v2 that may be auto-paused); plus a tagged MySQL instance.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from tests.fix_aws import emf_metrics, metric, reaper
from tests.functional.fleet.servers import Rds, own_tags
from tests.functional.reaping import THRESHOLD, policy_document, wait_past_threshold

if TYPE_CHECKING:
    from tests.functional.fleet.servers import FleetServer

STACK_SECRET = "idle-reaper/scenario/database"
STACK_POLICY = "/idle-reaper/scenario/policy"
BILLING_POLICY = "/idle-reaper/scenario/billing-policy"


def rds_secret_of(member: FleetServer) -> str:
    """The member's reaper login in the RDS secret format; its host and port point nowhere,
    since a discovered instance's endpoint must win."""
    return json.dumps(
        {
            "engine": "postgres",
            "username": member.reaper.name,
            "password": member.reaper.password,
            "host": "db.invalid",
            "port": 1,
        }
    )


@pytest.mark.pg
def test_invoke_reaps_each_tagged_available_instance_and_targets_lists_the_same(
    aws_at, moto_endpoint, fleet, monkeypatch, tmp_path
) -> None:
    orders, billing, bystander = fleet
    # given the stack's secret and policy (reaping the "orders" sessions of every server)...
    secrets, ssm = aws_at("secretsmanager"), aws_at("ssm")
    secrets.create_secret(Name=STACK_SECRET, SecretString=rds_secret_of(orders))
    ssm.put_parameter(
        Name=STACK_POLICY,
        Type="String",
        Value=policy_document([m.sessions.app("orders") for m in fleet], THRESHOLD),
    )
    # ...billing's own secret and policy (reaping its "invoices" sessions only)...
    billing_secret = secrets.create_secret(
        Name="idle-reaper/scenario/billing", SecretString=rds_secret_of(billing)
    )["ARN"]
    ssm.put_parameter(
        Name=BILLING_POLICY,
        Type="String",
        Value=policy_document([billing.sessions.app("invoices")], THRESHOLD),
    )
    # ...and the fleet in RDS
    rds = Rds(aws_at("rds"), monkeypatch)
    rds.instance("orders-db", server=orders.server)
    rds.cluster(
        "billing",
        tags=own_tags(secret_arn=billing_secret, policy_parameter=BILLING_POLICY),
    )
    rds.member("billing-1", "billing", DBInstanceClass="db.r6g.large", server=billing.server)
    rds.instance("legacy-db", tags=[], server=bystander.server)
    rds.instance("archive-db", server=bystander.server)
    rds.client.stop_db_instance(DBInstanceIdentifier="archive-db")
    rds.serverless_cluster("reports", min_capacity=0, max_capacity=2)
    rds.member("reports-1", "reports", DBInstanceClass="db.serverless", server=bystander.server)
    rds.instance("shop-mysql", engine="mysql")
    # and sessions idle past the threshold on every server
    stale_orders = [orders.open("orders") for _ in range(2)]
    other_app = orders.open("payments")
    stale_invoice = billing.open("invoices")
    billing_orders = billing.open("orders")  # billing's own policy does not reap these
    bystanders = [bystander.open("orders") for _ in range(2)]
    wait_past_threshold(THRESHOLD)
    environment = {
        "REAPER_DISCOVERY_TAG": "idle-reaper=enabled",
        "REAPER_SECRET_ID": STACK_SECRET,
        "REAPER_POLICY_PARAMETER": STACK_POLICY,
        "REAPER_SSLMODE": "prefer",  # the local servers have no TLS
    }

    # when a person lists the targets
    listing = reaper(
        "targets", "--json", endpoint=moto_endpoint, environment=environment, home=tmp_path
    )

    # then they are the tagged PostgreSQL instances, with the skips explained
    assert listing.returncode == 0, listing.stderr
    targets = {t["name"]: t for t in json.loads(listing.stdout)["targets"]}
    assert list(targets) == ["archive-db", "billing-1", "orders-db", "reports-1"]
    assert [targets[name]["action"] for name in targets] == ["skip", "pass", "pass", "skip"]
    assert "'stopped'" in targets["archive-db"]["reason"]
    assert "auto-pause" in targets["reports-1"]["reason"]
    assert (targets["orders-db"]["host"], targets["orders-db"]["port"]) == (
        orders.server.host,
        orders.server.port,
    )
    assert targets["orders-db"]["login"] == f"secret {STACK_SECRET} (stack default)"
    assert targets["orders-db"]["policy"] == f"stack policy (SSM parameter {STACK_POLICY})"
    assert targets["billing-1"]["port"] == billing.server.port
    assert targets["billing-1"]["login"] == f"secret {billing_secret}"
    assert targets["billing-1"]["policy"] == f"SSM parameter {BILLING_POLICY}"
    assert targets["billing-1"]["instance"]["role"] == "writer"

    # when the scheduled event is invoked
    invocation = reaper(
        "invoke",
        "events/scheduled.json",
        endpoint=moto_endpoint,
        environment=environment,
        home=tmp_path,
    )

    # then one pass ran per tagged, available instance, terminating exactly its stale sessions
    assert invocation.returncode == 0, invocation.stdout + invocation.stderr
    out = invocation.stdout
    response = json.loads(out.strip().splitlines()[-1])
    assert [(t["target"], t["status"]) for t in response["targets"]] == [
        ("billing-1", "ok"),
        ("orders-db", "ok"),
    ]
    assert [s["target"] for s in response["skipped_targets"]] == ["archive-db", "reports-1"]
    assert all(orders.ended(pid) for pid in stale_orders)
    assert billing.ended(stale_invoice)
    assert orders.alive(other_app)
    assert billing.alive(billing_orders)
    # and the untagged, stopped and pausable instances' server was never visited
    assert all(bystander.alive(pid) for pid in bystanders)
    # and each target reported its metrics
    assert metric(out, "SessionsTerminated", Target="orders-db").value == 2
    assert metric(out, "SessionsTerminated", Target="billing-1").value == 1
    assert metric(out, "TargetErrors", Target="orders-db").value == 0
    assert metric(out, "TargetSkipped", Target="archive-db").value == 1
    assert metric(out, "TargetSkipped", Target="reports-1").value == 1
    assert metric(out, "DiscoveryErrors").value == 0
    visited = {m.dimensions.get("Target") for m in emf_metrics(out)} - {None}
    assert visited == {"orders-db", "billing-1", "archive-db", "reports-1"}
    for member in fleet:
        assert member.reaper.password not in out + invocation.stderr
