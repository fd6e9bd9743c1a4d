"""Discovery against the RDS API (moto) and the handler's passes on discovered targets, each
instance's endpoint pointing at a real local PostgreSQL server (tests/functional/fleet.py)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
from botocore.stub import Stubber

from reaper.aws import _clients
from reaper.aws.discovery import discover, list_instances
from reaper.aws.targets import plan_discovered
from reaper.cli.main import main
from reaper.errors import DiscoveryError, TargetsFailedError
from reaper.settings import DiscoveryTag
from tests.fix_aws import REGION, emf_metrics, invoke, log_records, metric
from tests.functional.fleet.servers import TAG, Rds, own_tags
from tests.functional.reaping import THRESHOLD, policy_document, wait_past_threshold

if TYPE_CHECKING:
    from tests.functional.fleet.servers import FleetServer


@pytest.fixture
def rds(aws, function_env, monkeypatch) -> Rds:
    """moto's RDS, with discovery on (REAPER_DISCOVERY_TAG) and TLS optional (the local test
    servers have none)."""
    import boto3

    function_env.setenv("REAPER_DISCOVERY_TAG", f"{TAG['Key']}={TAG['Value']}")
    function_env.setenv("REAPER_SSLMODE", "prefer")
    return Rds(boto3.client("rds", region_name=REGION), monkeypatch)


def discovered(tag: dict[str, str] = TAG) -> dict[str, Any]:
    """The discovered targets by name, as the handler would plan them."""
    planned = plan_discovered(
        list_instances(), DiscoveryTag(key=tag["Key"], value=tag["Value"]), vpc_id=None, taken=set()
    )
    return {target.name: target for target in planned}


# -- the RDS API ------------------------------------------------------------------------------


def test_only_tagged_postgresql_instances_are_discovered_at_their_instance_endpoint(rds) -> None:
    # given tagged and untagged PostgreSQL instances and a tagged MySQL one
    rds.instance("orders-db", Port=6543)
    rds.instance("legacy-db", tags=[])
    rds.instance("shop-mysql", engine="mysql")

    # when the Region is listed, then only the tagged PostgreSQL instance is a target
    targets = discovered()
    assert list(targets) == ["orders-db"]
    spec = targets["orders-db"].spec
    assert spec.host == f"orders-db.aaaaaaaaaa.{REGION}.rds.amazonaws.com"
    assert spec.port == 6543


def test_every_page_of_instances_is_read(rds) -> None:
    # given more instances than one page of DescribeDBInstances holds (100)
    for number in range(105):
        rds.instance(f"db-{number:03d}")

    # then all of them are discovered
    assert len(discovered()) == 105


def test_aurora_members_inherit_the_cluster_tag_and_each_is_a_target_of_its_own(rds) -> None:
    # given a tagged Aurora cluster with a writer and a reader that carry no tag themselves
    rds.cluster("billing", tags=[TAG])
    rds.member("billing-1", "billing")
    rds.member("billing-2", "billing")

    # then each instance is a target at its instance endpoint, never the cluster's
    instances = {i.identifier: i for i in list_instances()}
    assert (instances["billing-1"].role, instances["billing-2"].role) == ("writer", "reader")
    targets = discovered()
    assert sorted(targets) == ["billing-1", "billing-2"]
    assert targets["billing-2"].spec.host.startswith("billing-2.")


def test_an_instance_tag_overrides_its_clusters(rds) -> None:
    # given a tagged cluster whose reader is tagged off
    rds.cluster("billing", tags=[TAG])
    rds.member("billing-1", "billing")
    rds.member("billing-2", "billing", tags=[{"Key": "idle-reaper", "Value": "disabled"}])

    assert list(discovered()) == ["billing-1"]


def test_a_stopped_instance_is_skipped_and_never_given_a_login(rds) -> None:
    rds.instance("archive-db")
    rds.client.stop_db_instance(DBInstanceIdentifier="archive-db")

    target = discovered()["archive-db"]
    assert target.action == "skip"
    assert "'stopped'" in target.skip_reason


def test_serverless_v2_instances_that_can_auto_pause_are_skipped_and_no_others(rds) -> None:
    # given a cluster that may pause (minimum 0 ACUs) with a serverless and a provisioned member,
    # and a serverless member of a cluster that may not (minimum 0.5 ACUs)
    rds.serverless_cluster("reports", min_capacity=0)
    rds.member("reports-1", "reports", DBInstanceClass="db.serverless")
    rds.member("reports-2", "reports")
    rds.serverless_cluster("api", min_capacity=0.5)
    rds.member("api-1", "api", DBInstanceClass="db.serverless")

    targets = discovered()
    assert "auto-pause" in targets["reports-1"].skip_reason
    assert targets["reports-2"].action == "pass"
    assert targets["api-1"].action == "pass"


def test_only_instances_in_the_functions_vpc_are_discovered_when_it_is_set(rds) -> None:
    # given an instance in a subnet group of one VPC and another outside it
    import boto3

    ec2 = boto3.client("ec2", region_name=REGION)
    vpc = ec2.create_vpc(CidrBlock="10.1.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.1.{n}.0/24", AvailabilityZone=f"{REGION}{z}")[
            "Subnet"
        ]["SubnetId"]
        for n, z in ((1, "a"), (2, "b"))
    ]
    rds.client.create_db_subnet_group(
        DBSubnetGroupName="reaper", DBSubnetGroupDescription="the function's", SubnetIds=subnets
    )
    rds.instance("inside-db", DBSubnetGroupName="reaper")
    rds.instance("outside-db")

    planned = plan_discovered(
        list_instances(), DiscoveryTag(key="idle-reaper", value="enabled"), vpc_id=vpc, taken=set()
    )
    assert [target.name for target in planned] == ["inside-db"]


@pytest.mark.parametrize(
    ("code", "message"),
    [("AccessDenied", "not authorized to perform: rds:DescribeDBInstances"), ("Throttling", "")],
)
def test_an_rds_api_failure_is_a_discovery_error_naming_the_call_and_code(
    rds, code, message
) -> None:
    with Stubber(_clients.rds_client()) as stub:
        stub.add_client_error(
            "describe_db_instances", service_error_code=code, service_message=message
        )
        with pytest.raises(DiscoveryError, match=f"describe_db_instances.*{code}"):
            list_instances()


def test_the_listing_is_reused_within_the_cache_time_and_read_again_after(rds) -> None:
    # given a listing taken once
    rds.instance("orders-db")
    assert [i.identifier for i in discover(max_age=3600)] == ["orders-db"]

    # when an instance appears, a warm invocation within the cache time still has the old list
    rds.instance("payments-db")
    assert [i.identifier for i in discover(max_age=3600)] == ["orders-db"]

    # and one after it (here: a cache time of 0) sees the new instance
    assert sorted(i.identifier for i in discover(max_age=0)) == ["orders-db", "payments-db"]


def test_a_failed_listing_is_not_cached(rds) -> None:
    rds.instance("orders-db")
    with Stubber(_clients.rds_client()) as stub:
        stub.add_client_error("describe_db_instances", service_error_code="Throttling")
        with pytest.raises(DiscoveryError):
            discover(max_age=3600)
    assert [i.identifier for i in discover(max_age=3600)] == ["orders-db"]


# -- passes on discovered targets -------------------------------------------------------------


@pytest.fixture
def members(fleet) -> list[FleetServer]:
    """Two servers of the fleet."""
    return fleet[:2]


def secret_for(member: FleetServer, **overrides: Any) -> str:
    """An RDS-format secret of the member's reaper role, its host and port pointing nowhere:
    a discovered target's endpoint must win."""
    return json.dumps(
        {
            "username": member.reaper.name,
            "password": member.reaper.password,
            "host": "db.invalid",
            "port": 1,
            **overrides,
        }
    )


@pytest.fixture
def policy_file(function_env, tmp_path):
    """Set REAPER_POLICY_FILE to a policy reaping application `suffix` of the given members'
    tests, idle past THRESHOLD."""

    def write(suffix: str, *targets: FleetServer) -> None:
        path = tmp_path / "policy.json"
        path.write_text(policy_document([t.sessions.app(suffix) for t in targets], THRESHOLD))
        function_env.setenv("REAPER_POLICY_FILE", str(path))

    return write


def invoke_failing_on(target: str, capsys: pytest.CaptureFixture[str]) -> str:
    """Once the sessions are stale, run the scheduled pass, which must fail naming `target`;
    what the pass printed."""
    wait_past_threshold(THRESHOLD)
    capsys.readouterr()
    with pytest.raises(TargetsFailedError, match=target):
        invoke()
    return capsys.readouterr().out


@pytest.mark.pg
def test_each_discovered_target_gets_its_own_login_and_policy_and_a_bad_one_fails_alone(
    rds, members, policy_parameter, rds_secret, capsys
) -> None:
    # given two tagged instances on two servers: one logs in with its own secret and policy
    # (tags), the other with the stack's; and a third whose own policy parameter is missing
    orders, billing = members
    rds_secret.put(secret_for(orders))
    own = rds_secret.client.create_secret(Name="billing/db", SecretString=secret_for(billing))
    policy_parameter.put(policy_document([orders.sessions.app("orders")], THRESHOLD))
    policy_parameter.client.put_parameter(
        Name="/billing/policy",
        Type="String",
        Value=policy_document([billing.sessions.app("invoices")], THRESHOLD),
    )
    rds.instance("orders-db", server=orders.server)
    rds.instance(
        "billing-db",
        server=billing.server,
        tags=own_tags(secret_arn=own["ARN"], policy_parameter="/billing/policy"),
    )
    rds.instance("ghost-db", server=orders.server, tags=own_tags(policy_parameter="/ghost/policy"))
    stale_orders = orders.open("orders")
    stale_invoice = billing.open("invoices")
    spared_on_billing = billing.open("orders")  # matches the stack policy, not billing's own

    # when the scheduled pass runs, then it fails for the target with the missing policy only
    out = invoke_failing_on("ghost-db", capsys)
    assert orders.ended(stale_orders)
    assert billing.ended(stale_invoice)
    assert billing.alive(spared_on_billing)
    assert metric(out, "SessionsTerminated", Target="orders-db").value == 1
    assert metric(out, "SessionsTerminated", Target="billing-db").value == 1
    assert metric(out, "TargetErrors", Target="ghost-db").value == 1
    assert metric(out, "DiscoveryErrors").value == 0
    (error,) = [r for r in log_records(out) if r.get("audit") == "target_error"]
    assert error["error_type"] == "PolicyError"
    assert "/ghost/policy" in error["message"]
    for member in members:
        assert member.reaper.password not in out


@pytest.mark.pg
def test_a_discovered_target_without_any_login_fails_alone(
    rds, members, secrets_client, policy_file, capsys
) -> None:
    # given no stack login: one instance tagged with a secret, one with nothing
    orders, billing = members
    policy_file("orders", orders, billing)
    own = secrets_client.create_secret(Name="orders/db", SecretString=secret_for(orders))
    rds.instance("orders-db", server=orders.server, tags=own_tags(secret_arn=own["ARN"]))
    rds.instance("billing-db", server=billing.server)
    stale = orders.open("orders")
    untouched = billing.open("orders")

    out = invoke_failing_on("billing-db", capsys)

    assert orders.ended(stale)
    assert billing.alive(untouched)
    (error,) = [r for r in log_records(out) if r.get("audit") == "target_error"]
    assert error["error_type"] == "CredentialsError"
    assert "idle-reaper:secret-arn" in error["message"]


@pytest.mark.pg
def test_an_rds_api_failure_fails_the_invocation_and_touches_no_database(
    rds, members, function_env, policy_file, capsys
) -> None:
    # given a listed target with a stale session, and discovery on
    orders, _ = members
    function_env.setenv(
        "REAPER_TARGETS",
        json.dumps([{"name": "listed", "dsn": orders.server.admin_dsn}]),
    )
    policy_file("orders", orders)
    stale = orders.open("orders")
    wait_past_threshold(THRESHOLD)
    capsys.readouterr()

    # when the RDS API refuses the listing
    with Stubber(_clients.rds_client()) as stub:
        stub.add_client_error("describe_db_instances", service_error_code="AccessDenied")
        with pytest.raises(DiscoveryError, match="AccessDenied"):
            invoke()

    # then nothing ran, and the failure is counted and logged
    assert orders.alive(stale)
    out = capsys.readouterr().out
    assert metric(out, "DiscoveryErrors").value == 1
    assert not _target_metrics(out)
    (error,) = [r for r in log_records(out) if r["level"] == "ERROR"]
    assert error["error_type"] == "DiscoveryError"


@pytest.mark.pg
def test_passes_queue_for_a_bounded_pool_and_all_run(
    rds, members, secrets_client, function_env, policy_file
) -> None:
    # given a pool of one worker and three targets (two instances share a server: passes on
    # one database must not overlap, which a pool of one also guarantees)
    orders, billing = members
    function_env.setenv("REAPER_MAX_CONCURRENCY", "1")
    policy_file("orders", orders, billing)
    for identifier, member in (("a-db", orders), ("b-db", billing), ("c-db", billing)):
        secret = secrets_client.create_secret(Name=identifier, SecretString=secret_for(member))
        rds.instance(identifier, server=member.server, tags=own_tags(secret_arn=secret["ARN"]))
    stale = [orders.open("orders"), billing.open("orders")]
    wait_past_threshold(THRESHOLD)

    summary = invoke()

    assert [(t["target"], t["status"]) for t in summary["targets"]] == [
        ("a-db", "ok"),
        ("b-db", "ok"),
        ("c-db", "ok"),
    ]
    assert orders.ended(stale[0])
    assert billing.ended(stale[1])


def _target_metrics(out: str) -> list[Any]:
    return [m for m in emf_metrics(out) if "Target" in m.dimensions]


# -- reaper targets ---------------------------------------------------------------------------


def test_reaper_targets_lists_listed_targets_without_printing_a_password(
    function_env, capsys
) -> None:
    # given listed targets whose DSNs hold passwords, and no discovery
    function_env.setenv("REAPER_DATABASE_URL", "postgresql://reaper:pw-one-7@db.internal/postgres")
    function_env.setenv(
        "REAPER_TARGETS",
        json.dumps(
            [
                {"name": "writer", "host": "writer.internal", "port": 6432},
                {"name": "reporting", "dsn": "postgresql://bi:pw-two-9@bi.internal:5433/x"},
            ]
        ),
    )

    # when a person lists them, then each shows its endpoint, login and policy
    assert main(["targets", "--json"]) == 0
    out = capsys.readouterr().out
    document = json.loads(out)
    assert document["discovery"] is None
    assert [
        (t["name"], t["origin"], t["action"], t["host"], t["port"], t["login"])
        for t in document["targets"]
    ] == [
        ("writer", "listed", "pass", "writer.internal", 6432, "REAPER_DATABASE_URL"),
        ("reporting", "listed", "pass", "bi.internal", 5433, "its own DSN"),
    ]
    assert "pw-one-7" not in out
    assert "pw-two-9" not in out


def test_reaper_targets_exits_3_when_the_rds_api_cannot_be_asked(rds, capsys) -> None:
    with Stubber(_clients.rds_client()) as stub:
        stub.add_client_error("describe_db_instances", service_error_code="AccessDenied")
        assert main(["targets"]) == 3
    assert "AccessDenied" in capsys.readouterr().err
