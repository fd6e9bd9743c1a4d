"""The connection budget's arithmetic: worst cases, the verdict, and proposed reserves that fit."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reaper.cli.main import main
from reaper.core.budget import (
    DEFAULT_ACCOUNT_LIMIT,
    FunctionConcurrency,
    LambdaFacts,
    NameTemplate,
    Verdict,
    connections_per_environment,
    plan_budget,
)
from reaper.core.snapshot import Connections
from reaper.errors import SettingsError
from reaper.settings import load_lambda_settings
from tests.unit.planning_data import HUNDRED, NAMES


def facts(*functions: FunctionConcurrency, **account: int) -> LambdaFacts:
    return LambdaFacts(listed=True, functions={f.name: f for f in functions}, **account)


def budget_of(applications: dict[str, int], known: LambdaFacts, **kwargs: float):
    sessions = NAMES.map_sessions(applications, known.functions)
    return plan_budget("db", HUNDRED, sessions, known, NAMES, **kwargs)


def test_a_function_without_reserved_concurrency_is_unbounded() -> None:
    # given orders-api reserved at 40, billing with no reserve, reports reserved at 10
    known = facts(
        FunctionConcurrency("orders-api", reserved=40, peak=3),
        FunctionConcurrency("billing", peak=2),
        FunctionConcurrency("reports", reserved=10, peak=1),
        unreserved=950,
        account_limit=1000,
    )

    # when the budget is planned on their sessions and one psql session
    budget = budget_of(
        {"lambda:orders-api": 3, "lambda:billing": 2, "lambda:reports": 1, "psql": 1}, known
    )

    # then billing is unbounded, and may take the whole unreserved pool
    assert budget.verdict is Verdict.UNBOUNDED
    assert budget.unbounded_functions == ("billing",)
    by_name = {f.name: f for f in budget.functions}
    assert by_name["billing"].cap == 950
    assert by_name["orders-api"].worst_case == 40
    assert budget.worst_case_connections == 40 + 950 + 10 + 1
    assert budget.other_applications == {"psql": 1}
    # and the proposed reserves fit 80 % of the 97 usable slots, psql's session included
    assert budget.proposal_fits
    assert budget.proposed_connections <= int(0.8 * 97)
    assert all(f.proposed and f.proposed >= 1 for f in budget.functions)
    # in proportion to the peaks
    assert by_name["orders-api"].proposed is not None
    assert by_name["billing"].proposed is not None
    assert by_name["reports"].proposed is not None
    assert by_name["orders-api"].proposed > by_name["billing"].proposed
    assert by_name["billing"].proposed > by_name["reports"].proposed
    assert (
        "aws lambda put-function-concurrency --function-name billing "
        f"--reserved-concurrent-executions {by_name['billing'].proposed}"
    ) in budget.commands()


def test_capped_functions_whose_caps_add_up_past_the_slots_are_over() -> None:
    known = facts(
        FunctionConcurrency("a", reserved=60, peak=10),
        FunctionConcurrency("b", reserved=50, peak=10),
        unreserved=890,
    )

    budget = budget_of({"lambda:a": 10, "lambda:b": 20}, known)

    # b holds two connections per environment: 50 x 2
    assert budget.verdict is Verdict.OVER
    assert budget.worst_case_connections == 60 + 100
    assert budget.utilization == pytest.approx(160 / 97)


def test_capped_functions_within_the_slots_fit() -> None:
    known = facts(FunctionConcurrency("a", reserved=30, peak=5), unreserved=970)

    budget = budget_of({"lambda:a": 5, "pgadmin": 2}, known)

    assert budget.verdict is Verdict.FITS
    assert budget.worst_case_connections == 32


def test_uncapped_functions_share_one_pool_in_the_worst_case() -> None:
    known = facts(
        FunctionConcurrency("a", peak=2),
        FunctionConcurrency("b", peak=1),
        unreserved=500,
    )

    # b holds two connections per environment
    budget = budget_of({"lambda:a": 2, "lambda:b": 2}, known)

    assert budget.worst_case_connections == 500 * 2


def test_an_unknown_pool_is_assumed_from_the_default_quota_and_said() -> None:
    known = facts(FunctionConcurrency("a", reserved=40), FunctionConcurrency("b"))

    budget = budget_of({"lambda:a": 1, "lambda:b": 1}, known)

    assert budget.pool == DEFAULT_ACCOUNT_LIMIT - 40
    assert not budget.pool_read
    assert any("unreserved concurrency is unknown" in note for note in budget.notes)
    assert any("b: no ConcurrentExecutions data" in note for note in budget.notes)


def test_a_reserve_that_could_not_be_read_counts_as_unbounded() -> None:
    known = facts(FunctionConcurrency("a", reserved_read=False), unreserved=900)

    budget = budget_of({"lambda:a": 1}, known)

    assert budget.verdict is Verdict.UNBOUNDED


def test_functions_that_cannot_be_listed_leave_the_worst_case_unknown() -> None:
    known = LambdaFacts(listed=False, unread=("ListFunctions: AccessDeniedException",))

    budget = budget_of({"lambda:a": 1}, known)

    assert budget.verdict is Verdict.UNKNOWN
    assert budget.worst_case_connections is None
    assert budget.other_applications == {"lambda:a": 1}
    assert "ListFunctions: AccessDeniedException" in budget.notes


def test_no_proposal_when_even_one_environment_each_does_not_fit() -> None:
    known = facts(*(FunctionConcurrency(f"f{i}", peak=1) for i in range(10)), unreserved=900)

    budget = budget_of({f"lambda:f{i}": 1 for i in range(10)} | {"psql": 70}, known)

    # 77 slots at 80 %, 70 of them taken by psql: 7 left for 10 functions
    assert not budget.proposal_fits
    assert budget.commands() == []
    assert any("no reserves fit" in note for note in budget.notes)


def test_a_proposal_covers_provisioned_concurrency() -> None:
    known = facts(
        FunctionConcurrency("a", reserved=50, provisioned=20, peak=1),
        FunctionConcurrency("b", peak=40),
        unreserved=900,
    )

    budget = budget_of({"lambda:a": 1, "lambda:b": 1}, known)

    by_name = {f.name: f for f in budget.functions}
    assert by_name["a"].proposed is not None
    assert by_name["a"].proposed >= 20


def test_a_proposal_below_the_observed_peak_is_flagged() -> None:
    known = facts(FunctionConcurrency("a", peak=500), unreserved=900)

    budget = budget_of({"lambda:a": 400}, known)

    (function,) = budget.functions
    assert function.proposed_below_peak


@pytest.mark.parametrize(
    ("sessions", "peak", "expected"),
    [(3, 3, 1), (3, None, 1), (0, 4, 1), (5, 2, 3), (40, 10, 4), (1, 0, 1)],
)
def test_connections_per_environment_rounds_up_and_is_at_least_one(
    sessions: int, peak: int | None, expected: int
) -> None:
    assert connections_per_environment(sessions, peak) == expected


def test_names_cut_by_the_server_still_map_to_their_function() -> None:
    function = "a" * 64
    shown = ("lambda:" + function)[:63]

    mapped = NAMES.map_sessions({shown: 2}, [function, "other"])

    assert mapped.functions == {function: 2}


def test_names_cut_alike_are_counted_as_other_clients_and_said() -> None:
    first, second = "a" * 60 + "x1", "a" * 60 + "x2"
    shown = ("lambda:" + first)[:63]

    mapped = NAMES.map_sessions({shown: 1}, [first, second])

    assert mapped.functions == {}
    assert mapped.other_clients == 1
    assert "could be any of" in mapped.notes[0]


def test_another_template_maps_another_naming() -> None:
    names = NameTemplate("{function}/prod")

    mapped = names.map_sessions({"orders/prod": 1, "orders/dev": 1}, ["orders"])

    assert mapped.functions == {"orders": 1}
    assert mapped.other_applications == {"orders/dev": 1}


@pytest.mark.parametrize("template", ["lambda:", "{function}-{function}", "λ:{function}"])
def test_a_template_without_exactly_one_placeholder_or_not_ascii_is_refused(
    template: str,
) -> None:
    with pytest.raises(SettingsError, match="template"):
        NameTemplate(template)


_functions = st.lists(
    st.tuples(
        st.integers(min_value=1, max_value=50),  # sessions
        st.none() | st.integers(min_value=0, max_value=300),  # peak
        st.none() | st.integers(min_value=0, max_value=5),  # provisioned
        st.none() | st.integers(min_value=0, max_value=200),  # reserved
    ),
    min_size=1,
    max_size=12,
)


@given(
    functions=_functions,
    max_connections=st.integers(min_value=10, max_value=5000),
    other=st.integers(min_value=0, max_value=100),
    utilization=st.floats(min_value=0.1, max_value=1.0),
)
def test_proposed_reserves_always_fit_when_the_minimums_do(
    functions: list[tuple[int, int | None, int | None, int | None]],
    max_connections: int,
    other: int,
    utilization: float,
) -> None:
    known = facts(
        *(
            FunctionConcurrency(f"f{i}", reserved=reserved, provisioned=provisioned, peak=peak)
            for i, (_, peak, provisioned, reserved) in enumerate(functions)
        ),
        unreserved=1000,
    )
    applications = {f"lambda:f{i}": sessions for i, (sessions, *_) in enumerate(functions)}
    connections = Connections(0, max_connections, 3, 0)
    sessions = NAMES.map_sessions(applications | {"psql": other}, known.functions)

    budget = plan_budget("db", connections, sessions, known, NAMES, target_utilization=utilization)

    slots = int(utilization * connections.usable_connections)
    minimums = sum(
        max(1, f.provisioned or 0) * f.connections_per_environment for f in budget.functions
    )
    assert budget.proposal_fits == (minimums + other <= slots)
    if budget.proposal_fits:
        assert budget.proposed_connections <= slots
        for f in budget.functions:
            assert f.proposed is not None
            assert f.proposed >= max(1, f.provisioned or 0)


def test_a_bad_name_template_setting_is_refused_naming_the_variable(function_env) -> None:
    function_env.setenv("REAPER_DATABASE_URL", "postgresql://reaper@db.internal/postgres")
    function_env.setenv("REAPER_BUDGET_NAME_TEMPLATE", "lambda:")

    with pytest.raises(SettingsError, match=r"REAPER_BUDGET_NAME_TEMPLATE.*exactly once"):
        load_lambda_settings()


def test_the_budget_is_off_unless_a_name_template_is_set(function_env) -> None:
    function_env.setenv("REAPER_DATABASE_URL", "postgresql://reaper@db.internal/postgres")
    assert load_lambda_settings().name_template() is None

    function_env.setenv("REAPER_BUDGET_NAME_TEMPLATE", "lambda:{function}")
    names = load_lambda_settings().name_template()

    assert names is not None
    assert names.shown_name("orders-api") == "lambda:orders-api"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--target-utilization", "1.5"], "--target-utilization"),
        (["--target-utilization", "0"], "--target-utilization"),
        (["--window-days", "64"], "--window-days"),
        (["--name-template", "lambda:"], "exactly once"),
    ],
)
def test_reaper_budget_refuses_bad_flags_before_connecting(flags, message, capsys) -> None:
    # The DSN points nowhere: a bad flag must stop the command before any connection.
    exit_code = main(["budget", "--dsn", "postgresql://reaper@127.0.0.1:1/postgres", *flags])

    assert exit_code == 2
    assert message in capsys.readouterr().err
