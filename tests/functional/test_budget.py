"""The connection budget against real PostgreSQL sessions and moto's Lambda and CloudWatch:
`reaper budget --json` and `reaper invoke events/doctor.json` as a user runs them, and the
budget a scheduled pass reports."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from reaper.aws.handler import lambda_handler
from reaper.cli.invoke import local_context
from reaper.cli.main import main
from tests.fix_aws import LambdaAccount, log_records, metric, reaper
from tests.fix_db import dsn_for
from tests.functional.fleet.servers import start_local_server, visit
from tests.functional.reaping import policy_document

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.fix_db import PgServer
    from tests.functional.fleet.servers import FleetServer

EVENTS_DIR = Path(__file__).resolve().parents[2] / "events"
NAME_TEMPLATE = "lambda:{function}"


@pytest.fixture(scope="module")
def hundred_slots() -> Iterator[PgServer]:
    """A server of its own with max_connections = 100, where sessions may have plain names."""
    with contextlib.ExitStack() as stack:
        yield start_local_server(stack, max_connections=100)


@pytest.fixture
def database(hundred_slots: PgServer) -> Iterator[FleetServer]:
    """This test's reaper and application roles and sessions on that server."""
    with contextlib.ExitStack() as stack:
        yield visit(stack, hundred_slots)


def budget_check(response: dict[str, Any]) -> dict[str, Any]:
    (target,) = response["targets"]
    (check,) = [c for c in target["checks"] if c["name"] == "connection budget"]
    return check


@pytest.mark.slow
@pytest.mark.pg
def test_budget_finds_billing_unbounded_proposes_reserves_that_fit_and_doctor_agrees(
    aws_at, moto_endpoint, database, tmp_path
) -> None:
    # given orders-api reserved at 40, billing without a reserve, reports reserved at 10
    account = LambdaAccount(aws_at)
    account.function("orders-api", reserved=40, peak=3)
    account.function("billing", peak=2)
    account.function("reports", reserved=10, peak=1)
    # and a database with max_connections 100 holding sessions named after them
    for function, count in (("orders-api", 3), ("billing", 2), ("reports", 1)):
        for _ in range(count):
            database.sessions(
                f"lambda:{function}", user=database.app.name, password=database.app.password
            )
    dsn = dsn_for(database.server, database.reaper.name, database.reaper.password)

    # when a person asks for the budget
    done = reaper(
        "budget", "--json", "--dsn", dsn, endpoint=moto_endpoint, environment={}, home=tmp_path
    )

    # then billing is unbounded and the worst case is far above the usable slots
    assert done.returncode == 0, done.stderr
    budget = json.loads(done.stdout)
    functions = {f["name"]: f for f in budget["functions"]}
    usable = budget["usable_connections"]
    assert budget["max_connections"] == 100
    reserves = budget["superuser_reserved_connections"] + budget["reserved_connections"]
    assert usable == 100 - reserves
    assert budget["verdict"] == "unbounded"
    assert budget["unbounded_functions"] == ["billing"]
    assert functions["billing"]["reserved"] is None
    assert functions["orders-api"]["worst_case"] == 40
    assert functions["reports"]["worst_case"] == 10
    # (the account's pool is not served by moto: the default quota less the reserves seen)
    assert functions["billing"]["worst_case"] == 1000 - 50
    # the test's own superuser connection is another client
    assert budget["other_applications"] == {"idle-reaper-tests-admin": 1}
    assert budget["worst_case_connections"] == 40 + 950 + 10 + 1
    assert budget["worst_case_connections"] > usable
    # and the proposed reserves, at 80 % of the usable slots, fit with room for the other client
    proposal = budget["proposal"]
    assert proposal["fits"]
    proposed = {name: f["proposed"] for name, f in functions.items()}
    assert all(reserve >= 1 for reserve in proposed.values())
    held = sum(proposed[name] * f["connections_per_environment"] for name, f in functions.items())
    assert held + budget["other_clients"] == proposal["connections"] <= int(0.8 * usable)
    assert proposed["orders-api"] > proposed["billing"] > proposed["reports"]
    assert (
        "aws lambda put-function-concurrency --function-name billing "
        f"--reserved-concurrent-executions {proposed['billing']}"
    ) in proposal["commands"]
    # and what moto could not tell is said
    assert any(note.startswith("GetAccountSettings: 404") for note in budget["notes"])

    # when the function's doctor event runs on the same database
    policy = tmp_path / "policy.json"
    policy.write_text(policy_document(["lambda:*"], 900))
    invocation = reaper(
        "invoke",
        str(EVENTS_DIR / "doctor.json"),
        endpoint=moto_endpoint,
        environment={
            "REAPER_DATABASE_URL": dsn,
            "REAPER_POLICY_FILE": str(policy),
            "REAPER_BUDGET_NAME_TEMPLATE": NAME_TEMPLATE,
        },
        home=tmp_path,
    )

    # then its budget check gives the same verdict, and the metric is in its output
    assert invocation.returncode == 0, invocation.stdout + invocation.stderr
    out = invocation.stdout
    check = budget_check(json.loads(out.strip().splitlines()[-1]))
    assert check["status"] == "warn"
    assert f"worst case {budget['worst_case_connections']} connections" in check["summary"]
    assert "unbounded (no reserved concurrency): billing" in check["summary"]
    assert f"billing {proposed['billing']}" in check["fix"]
    worst = metric(out, "WorstCaseConnections", Target="default")
    assert worst.value == budget["worst_case_connections"]
    utilization = metric(out, "ConnectionBudgetUtilization", Target="default")
    assert utilization.unit == "Percent"
    assert utilization.value == round(budget["worst_case_connections"] / usable * 100, 2)
    assert database.reaper.password not in out + invocation.stderr + done.stdout + done.stderr


@pytest.fixture
def budget_function(apps, pg_server, role_factory, function_env, tmp_path) -> None:
    """The function's settings: the reaper's login, a policy that reaps nothing of this test,
    and the budget on, its functions naming their sessions like this test's applications."""
    reaper_role = role_factory("reaper")
    policy = tmp_path / "policy.json"
    policy.write_text(policy_document([apps.name("nothing-here")], 900))
    function_env.setenv(
        "REAPER_DATABASE_URL", dsn_for(pg_server, reaper_role.name, reaper_role.password)
    )
    function_env.setenv("REAPER_POLICY_FILE", str(policy))
    function_env.setenv("REAPER_BUDGET_NAME_TEMPLATE", apps.name("{function}"))


@pytest.mark.pg
def test_a_scheduled_pass_reports_the_budget_of_its_target(
    lambda_account, apps, budget_function, capsys
) -> None:
    # given a function reserved at 5 whose sessions are this test's "orders" sessions
    lambda_account.function("orders", reserved=5, peak=2)
    pids = [apps.open("orders") for _ in range(2)]
    scheduled = json.loads((EVENTS_DIR / "scheduled.json").read_text())
    capsys.readouterr()

    # when a scheduled pass runs
    lambda_handler(scheduled, local_context())

    # then its budget line counts the function's two sessions, one per environment at its peak
    out = capsys.readouterr().out
    (line,) = [r for r in log_records(out) if r.get("audit") == "connection_budget"]
    (orders,) = line["functions"]
    assert (orders["name"], orders["sessions"], orders["worst_case"]) == ("orders", 2, 5)
    assert line["verdict"] in ("fits", "over")
    # and the metric holds the same worst case
    assert (
        metric(out, "WorstCaseConnections", Target="default").value
        == (line["worst_case_connections"])
    )
    assert all(apps.alive(pid) for pid in pids)


@pytest.mark.pg
def test_reaper_doctor_budget_adds_the_verdict_as_a_check(
    lambda_account, apps, pg_server, role_factory, capsys
) -> None:
    # given a function without reserved concurrency holding a session
    lambda_account.function("orders", peak=1)
    apps.open("orders")
    reaper_role = role_factory("reaper")
    dsn = dsn_for(pg_server, reaper_role.name, reaper_role.password)
    capsys.readouterr()

    # when the doctor runs with --budget
    main(["doctor", "--dsn", dsn, "--budget", "--name-template", apps.name("{function}"), "--json"])

    # then its report holds the budget's verdict, a warning naming the function
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    budget = checks["connection budget"]
    assert budget["status"] == "warn"
    assert "unbounded (no reserved concurrency): orders" in budget["summary"]
    assert "reaper budget" in budget["fix"]
