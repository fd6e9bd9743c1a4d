"""The functions' concurrency read from the Lambda and CloudWatch APIs (moto): batched, paged,
cached across warm invocations, and what cannot be read is said, not guessed."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest
from botocore.stub import Stubber

from reaper.aws import _clients
from reaper.aws.budget import record_pass_budgets
from reaper.aws.concurrency import connection_budget, read_lambda_facts
from reaper.core.budget import Verdict
from reaper.core.planning import Reason
from reaper.core.result import Outcome, PassResult, SessionRecord
from reaper.settings import load_lambda_settings
from tests.fix_aws import emf_metrics, metric
from tests.unit.planning_data import HUNDRED, NAMES

if TYPE_CHECKING:
    from tests.fix_aws import LambdaAccount


@pytest.fixture
def api_calls() -> Counter[str]:
    """Every Lambda and CloudWatch API call the reaper's clients make, by operation."""
    calls: Counter[str] = Counter()

    def count(event_name: str, **_: Any) -> None:
        calls[event_name.rsplit(".", 1)[-1]] += 1

    for client in (_clients.lambda_client(), _clients.cloudwatch_client()):
        client.meta.events.register("before-call.*.*", count)
    return calls


def read(applications: dict[str, int], *, max_age: float = 300) -> Any:
    return read_lambda_facts(applications, NAMES, window_days=14, max_age=max_age)


def test_reserves_peaks_and_unreserved_functions_are_read(lambda_account: LambdaAccount) -> None:
    # given two functions, one reserved, both with observed peaks, and one without sessions
    lambda_account.function("orders-api", reserved=40, peak=7)
    lambda_account.function("billing", peak=3)
    lambda_account.function("idle-one", reserved=5)

    # when their facts are read for the sessions of the first two
    sessions, facts = read({"lambda:orders-api": 3, "lambda:billing": 2, "psql": 1})

    # then only the functions with sessions were read, with their reserve and peak
    assert sessions.functions == {"billing": 2, "orders-api": 3}
    assert sessions.other_applications == {"psql": 1}
    assert facts.listed
    assert set(facts.functions) == {"orders-api", "billing"}
    assert facts.functions["orders-api"].reserved == 40
    assert facts.functions["orders-api"].peak == 7
    assert facts.functions["billing"].reserved is None
    assert facts.functions["billing"].reserved_read
    assert facts.functions["billing"].peak == 3


def test_what_the_api_does_not_serve_is_said_and_the_budget_still_computed(
    lambda_account: LambdaAccount,
) -> None:
    # given moto, which answers 404 to GetAccountSettings and the provisioned-concurrency calls
    lambda_account.function("orders-api", reserved=40, peak=3)
    lambda_account.function("billing", peak=2)

    # when the budget is computed
    budget = connection_budget(
        "db",
        HUNDRED,
        {"lambda:orders-api": 3, "lambda:billing": 2},
        NAMES,
        target_utilization=0.8,
        window_days=14,
        max_age=300,
    )

    # then the two unread facts are named with AWS's answer, and the worst case assumes the
    # default quota for the unreserved function
    notes = "\n".join(budget.notes)
    assert "GetAccountSettings: 404" in notes
    assert "ListProvisionedConcurrencyConfigs: 404" in notes
    assert "unreserved concurrency is unknown" in notes
    assert budget.verdict is Verdict.UNBOUNDED
    assert not budget.pool_read
    assert all(f.provisioned is None for f in budget.functions)


def test_a_denied_listing_leaves_the_budget_unknown_and_says_why(
    lambda_account: LambdaAccount,
) -> None:
    lambda_account.function("orders-api", reserved=40)
    with Stubber(_clients.lambda_client()) as stub:
        stub.add_client_error(
            "list_functions",
            service_error_code="AccessDeniedException",
            service_message="not authorized to perform: lambda:ListFunctions",
        )
        budget = connection_budget(
            "db",
            HUNDRED,
            {"lambda:orders-api": 3},
            NAMES,
            target_utilization=0.8,
            window_days=14,
            max_age=300,
        )

    assert budget.verdict is Verdict.UNKNOWN
    assert budget.worst_case_connections is None
    assert any("ListFunctions: AccessDeniedException" in note for note in budget.notes)


def test_a_denied_reserve_stops_the_calls_of_its_kind_and_counts_as_unbounded(
    lambda_account: LambdaAccount, api_calls: Counter[str]
) -> None:
    for name in ("a", "b", "c"):
        lambda_account.function(name, reserved=10)
    with Stubber(_clients.lambda_client()) as stub:
        stub.add_response("list_functions", {"Functions": [{"FunctionName": n} for n in "abc"]})
        stub.add_client_error("get_function_concurrency", service_error_code="AccessDenied")
        stub.add_client_error(
            "list_provisioned_concurrency_configs", service_error_code="AccessDenied"
        )
        stub.add_client_error("get_account_settings", service_error_code="AccessDenied")
        _, facts = read({"lambda:a": 1, "lambda:b": 1, "lambda:c": 1})

    assert api_calls["GetFunctionConcurrency"] == 1
    assert not any(f.reserved_read for f in facts.functions.values())
    assert any("reserved concurrency not read" in note for note in facts.unread)


@pytest.mark.slow
def test_a_fleet_of_300_functions_costs_a_few_calls_and_none_when_warm(
    lambda_account: LambdaAccount, api_calls: Counter[str]
) -> None:
    # given an account of 300 functions, twelve of which hold sessions on the target
    for index in range(300):
        lambda_account.function(f"fn-{index:03}", reserved=2 if index % 2 else None)
    lambda_account.peaks({f"fn-{index:03}": 1 for index in range(300)})
    applications = {f"lambda:fn-{index:03}": 1 for index in range(0, 300, 25)}
    api_calls.clear()

    # when the facts are read
    _, facts = read(applications)

    # then the listing is paged (50 a page at most), one GetMetricData call covers every
    # function, provisioned concurrency (not served here) is asked once, and only the twelve
    # functions' reserves are read, one call each (Lambda has no call for many)
    assert len(facts.functions) == 12
    assert api_calls["ListFunctions"] <= 300 // 50
    assert api_calls["GetMetricData"] == 1
    assert api_calls["ListProvisionedConcurrencyConfigs"] == 1
    assert api_calls["GetAccountSettings"] == 1
    assert api_calls["GetFunctionConcurrency"] == 12
    assert sum(api_calls.values()) <= 6 + 1 + 1 + 1 + 12

    # when a warm invocation reads them again within the cache time
    api_calls.clear()
    _, again = read(applications)

    # then no call is made at all
    assert sum(api_calls.values()) == 0
    assert again.functions == facts.functions


@pytest.mark.slow
def test_the_peaks_of_300_functions_take_one_metric_call(
    lambda_account: LambdaAccount, api_calls: Counter[str]
) -> None:
    for index in range(300):
        lambda_account.function(f"fn-{index:03}")
    lambda_account.peaks({f"fn-{index:03}": index % 7 + 1 for index in range(300)})
    api_calls.clear()

    _, facts = read({f"lambda:fn-{index:03}": 1 for index in range(300)})

    assert api_calls["GetMetricData"] == 1
    assert {f.peak for f in facts.functions.values()} == set(range(1, 8))


def test_a_changed_reserve_is_seen_once_the_cache_time_is_over(
    lambda_account: LambdaAccount,
) -> None:
    lambda_account.function("orders-api", reserved=40)
    read({"lambda:orders-api": 1})
    lambda_account.client("lambda").put_function_concurrency(
        FunctionName="orders-api", ReservedConcurrentExecutions=20
    )

    _, warm = read({"lambda:orders-api": 1})
    _, fresh = read({"lambda:orders-api": 1}, max_age=0)

    assert warm.functions["orders-api"].reserved == 40
    assert fresh.functions["orders-api"].reserved == 20


def test_a_pass_that_leaves_too_little_time_defers_the_budget_and_calls_no_api(
    lambda_account: LambdaAccount, api_calls: Counter[str], function_env, capsys
) -> None:
    # given the budget on, and a pass that saw two sessions of orders-api (reserved at 5)
    lambda_account.function("orders-api", reserved=5, peak=2)
    function_env.setenv("REAPER_DATABASE_URL", "postgresql://reaper@db.internal/postgres")
    function_env.setenv("REAPER_BUDGET_NAME_TEMPLATE", "lambda:{function}")
    settings = load_lambda_settings()
    sessions = tuple(
        SessionRecord(
            pid=pid,
            user="app",
            database="postgres",
            application_name="lambda:orders-api",
            client_addr=None,
            state="idle",
            idle_seconds=1.0,
            rule=None,
            reason=Reason.NO_RULE_MATCHES,
            outcome=Outcome.SPARED,
        )
        for pid in (101, 102)
    )
    result = PassResult(
        "default",
        dry_run=False,
        skipped=False,
        duration_seconds=0.1,
        connections=HUNDRED,
        sessions=sessions,
    )
    api_calls.clear()
    capsys.readouterr()

    # when only 5 s are left after the passes
    record_pass_budgets(settings, {"default": (result, None)}, seconds_left=lambda: 5.0)

    # then no API is called, no budget metric is emitted, and a line says why
    out = capsys.readouterr().out
    assert sum(api_calls.values()) == 0
    assert not [m for m in emf_metrics(out) if m.name == "WorstCaseConnections"]
    assert "not computed: 5.0 s left" in out

    # and with time enough, the same pass gives its worst case
    record_pass_budgets(settings, {"default": (result, None)}, seconds_left=lambda: 60.0)
    out = capsys.readouterr().out
    assert metric(out, "WorstCaseConnections", Target="default").value == 5
