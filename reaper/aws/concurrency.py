"""The Lambda functions' concurrency, as the Lambda and CloudWatch APIs tell it, for the
connection budget (`reaper.core.budget`).

`connection_budget` takes a target's sessions by application and its connection limits, lists
the Region's functions to know which application names are functions, then reads for those
functions only: each one's reserved concurrency (GetFunctionConcurrency) and provisioned
concurrency (ListProvisionedConcurrencyConfigs), the account's quota and unreserved pool
(GetAccountSettings), and each one's peak ConcurrentExecutions over the window (GetMetricData,
up to 500 functions a call). Lambda has no call that returns many functions' reserves at once,
so those two are one call per function with sessions, on a few threads.

Every read degrades instead of failing: what could not be read (denied to a least-privilege
role, not served, unreachable) is said in the budget's notes, and the arithmetic assumes the
worst for it. A call refused for a reason that is not about one function stops the calls of its
kind, which would all fail alike. What was read, and what could not be, is kept for
`max_age` seconds across warm invocations.
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from reaper.aws._clients import cloudwatch_client, error_reason, lambda_client
from reaper.core.budget import FunctionConcurrency, LambdaFacts, plan_budget

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from reaper.core.budget import Budget, NameTemplate, SessionMap
    from reaper.core.snapshot import Connections

T = TypeVar("T")

# ListFunctions returns at most 50 functions a page; GetMetricData takes 500 queries a call.
FUNCTIONS_PER_PAGE = 50
QUERIES_PER_CALL = 500
# Per-function calls in flight at once: enough to read hundreds in seconds, few enough to stay
# under Lambda's control-plane rate limits (botocore's standard mode retries a throttle).
PER_FUNCTION_WORKERS = 4
MAX_REASON_CHARACTERS = 160
# A function deleted between the listing and the call: a fact about it, not about the role.
_FUNCTION_GONE = "ResourceNotFoundException"


class _Unreadable(Exception):
    """A call failed; `reason` says why, `per_function` whether only that function is concerned."""

    def __init__(self, reason: str, *, per_function: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.per_function = per_function


def _call(operation: str, call: Callable[[], T]) -> T:
    try:
        return call()
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        raise _Unreadable(
            _one_line(f"{operation}: {error_reason(exc)}"), per_function=code == _FUNCTION_GONE
        ) from exc
    except BotoCoreError as exc:
        raise _Unreadable(
            _one_line(f"{operation}: {type(exc).__name__}: {exc}"), per_function=False
        ) from exc


def _one_line(reason: str) -> str:
    # An endpoint that is not the API (a proxy, a stub) may answer a whole HTML page: the note
    # is one line of a table and a log field.
    line = " ".join(reason.split())
    return line if len(line) <= MAX_REASON_CHARACTERS else line[: MAX_REASON_CHARACTERS - 3] + "..."


class _Cache:
    """Facts read from AWS and when, for warm invocations (one per process)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._entries: dict[tuple[str, ...], tuple[float, Any]] = {}

    def get(self, key: tuple[str, ...], max_age: float) -> tuple[bool, Any]:
        entry = self._entries.get(key)
        if entry is None or time.monotonic() - entry[0] >= max_age:
            return False, None
        return True, entry[1]

    def put(self, key: tuple[str, ...], value: Any) -> None:
        self._entries[key] = (time.monotonic(), value)

    def clear(self) -> None:
        with self.lock:
            self._entries.clear()


_cache = _Cache()


def clear_cache() -> None:
    """Forget every fact read (tests; the next budget asks AWS again)."""
    _cache.clear()


def connection_budget(
    target: str,
    connections: Connections,
    applications: Mapping[str, int],
    names: NameTemplate,
    *,
    target_utilization: float,
    window_days: int,
    max_age: float,
) -> Budget:
    """The target's connection budget: its sessions mapped to functions, their concurrency read
    from AWS (or what could not be), and the arithmetic of `reaper.core.budget`.

    Args:
        target: the target's printable name.
        connections: its connection limits, from the same snapshot as `applications`.
        applications: its client sessions per application_name.
        names: how functions name their sessions.
        target_utilization: the share of the usable slots proposed reserves may fill.
        window_days: how far back the observed peaks look.
        max_age: seconds a fact read from AWS is reused.
    """
    sessions, facts = read_lambda_facts(
        applications, names, window_days=window_days, max_age=max_age
    )
    return plan_budget(
        target, connections, sessions, facts, names, target_utilization=target_utilization
    )


def read_lambda_facts(
    applications: Mapping[str, int], names: NameTemplate, *, window_days: int, max_age: float
) -> tuple[SessionMap, LambdaFacts]:
    """The sessions mapped to the Region's functions, and those functions' concurrency."""
    with _cache.lock:
        unread: list[str] = []
        try:
            functions = _cached(("functions",), max_age, list_function_names)
        except _Unreadable as exc:
            return names.map_sessions(applications, ()), LambdaFacts(
                listed=False, window_days=window_days, unread=(exc.reason,)
            )
        sessions = names.map_sessions(applications, functions)
        mapped = tuple(sessions.functions)
        reserves = _per_function("reserved", mapped, max_age, reserved_concurrency, unread)
        provisioned = _per_function("provisioned", mapped, max_age, provisioned_concurrency, unread)
        peaks = _peaks(mapped, window_days, max_age, unread)
        limit, unreserved = _account(max_age, unread)
    return sessions, LambdaFacts(
        listed=True,
        functions={
            name: FunctionConcurrency(
                name,
                reserved=reserves.get(name),
                reserved_read=name in reserves,
                provisioned=provisioned.get(name),
                peak=peaks.get(name),
            )
            for name in mapped
        },
        account_limit=limit,
        unreserved=unreserved,
        window_days=window_days,
        unread=tuple(unread),
    )


def _cached(key: tuple[str, ...], max_age: float, read: Callable[[], T]) -> T:
    """`read()`, or its value (or its failure) from within `max_age` seconds."""
    found, value = _cache.get(key, max_age)
    if not found:
        try:
            value = read()
        except _Unreadable as exc:
            # Kept too: a role without the permission, or a VPC without a route to the API,
            # would otherwise pay the same failure (and its timeouts) on every pass.
            value = exc
        _cache.put(key, value)
    if isinstance(value, _Unreadable):
        raise value
    return value  # type: ignore[no-any-return]


def list_function_names() -> tuple[str, ...]:
    """Every function of the Region (ListFunctions, page by page)."""
    paginator = lambda_client().get_paginator("list_functions")

    def read() -> tuple[str, ...]:
        pages = paginator.paginate(PaginationConfig={"PageSize": FUNCTIONS_PER_PAGE})
        return tuple(f["FunctionName"] for page in pages for f in page.get("Functions", ()))

    return _call("ListFunctions", read)


def reserved_concurrency(function: str) -> int | None:
    """The function's reserved concurrency; None when it has none."""
    answer = _call(
        "GetFunctionConcurrency",
        lambda: lambda_client().get_function_concurrency(FunctionName=function),
    )
    reserved = answer.get("ReservedConcurrentExecutions")
    return None if reserved is None else int(reserved)


def provisioned_concurrency(function: str) -> int:
    """The provisioned concurrency requested over the function's versions and aliases."""
    paginator = lambda_client().get_paginator("list_provisioned_concurrency_configs")

    def read() -> int:
        return sum(
            int(config.get("RequestedProvisionedConcurrentExecutions", 0))
            for page in paginator.paginate(FunctionName=function)
            for config in page.get("ProvisionedConcurrencyConfigs", ())
        )

    return _call("ListProvisionedConcurrencyConfigs", read)


def _cached_each(
    kind: tuple[str, ...], functions: Sequence[str], max_age: float
) -> tuple[dict[str, Any], list[str]]:
    """The facts of `kind` cached for these functions, and the functions not cached."""
    found: dict[str, Any] = {}
    missing = []
    for function in functions:
        known, value = _cache.get((*kind, function), max_age)
        if known:
            found[function] = value
        else:
            missing.append(function)
    return found, missing


def _per_function(
    kind: str,
    functions: Sequence[str],
    max_age: float,
    read: Callable[[str], T],
    unread: list[str],
) -> dict[str, T]:
    """`read(function)` for each function not cached: the first alone, then the others on a
    few threads. A failure that is not about one function stops the others: they would fail
    alike (a missing permission, an API not served, no route to it)."""
    found, missing = _cached_each((kind,), functions, max_age)
    if not missing:
        return found
    stopped, reason = _cache.get((kind, "(unreadable)"), max_age)
    if stopped:
        unread.append(f"{reason} ({kind} concurrency not read)")
        return found

    def attempt(function: str) -> T:
        value = read(function)
        _cache.put((kind, function), value)
        return value

    first, *others = missing
    try:
        found[first] = attempt(first)
    except _Unreadable as exc:
        if not exc.per_function:
            _cache.put((kind, "(unreadable)"), exc.reason)
            unread.append(f"{exc.reason} ({kind} concurrency not read)")
            return found
        unread.append(f"{first}: {exc.reason}")
    if others:
        with concurrent.futures.ThreadPoolExecutor(
            max_workers=PER_FUNCTION_WORKERS, thread_name_prefix="reaper-budget"
        ) as pool:
            futures = {function: pool.submit(attempt, function) for function in others}
        for function, future in futures.items():
            try:
                found[function] = future.result()
            except _Unreadable as exc:
                unread.append(f"{function}: {exc.reason}")
    return found


def _peaks(
    functions: Sequence[str], window_days: int, max_age: float, unread: list[str]
) -> dict[str, int | None]:
    """Each function's highest ConcurrentExecutions over the last `window_days` (None without
    data points), from as few GetMetricData calls as the batch size allows."""
    window = str(window_days)
    peaks, missing = _cached_each(("peak", window), functions, max_age)
    for start in range(0, len(missing), QUERIES_PER_CALL):
        batch = missing[start : start + QUERIES_PER_CALL]
        try:
            read = _call("GetMetricData", functools.partial(_read_peaks, batch, window_days))
        except _Unreadable as exc:
            unread.append(f"{exc.reason} (observed peaks not read)")
            return peaks
        for function in batch:
            _cache.put(("peak", window, function), read.get(function))
            peaks[function] = read.get(function)
    return peaks


def _read_peaks(functions: Sequence[str], window_days: int) -> dict[str, int | None]:
    end = datetime.now(UTC)
    # One period for the whole window: a single Maximum per function. Whole days keep the
    # period a multiple of 3600 s, which CloudWatch requires for data older than 15 days.
    period = window_days * 86_400
    queries = [
        {
            "Id": f"f{index}",
            "MetricStat": {
                "Metric": {
                    "Namespace": "AWS/Lambda",
                    "MetricName": "ConcurrentExecutions",
                    "Dimensions": [{"Name": "FunctionName", "Value": function}],
                },
                "Period": period,
                "Stat": "Maximum",
            },
            "ReturnData": True,
        }
        for index, function in enumerate(functions)
    ]
    values: dict[str, list[float]] = {function: [] for function in functions}
    paginator = cloudwatch_client().get_paginator("get_metric_data")
    for page in paginator.paginate(
        MetricDataQueries=queries, StartTime=end - timedelta(days=window_days), EndTime=end
    ):
        for result in page.get("MetricDataResults", ()):
            values[functions[int(result["Id"][1:])]].extend(result.get("Values", ()))
    return {
        function: (math.ceil(max(found)) if found else None) for function, found in values.items()
    }


def _account(max_age: float, unread: list[str]) -> tuple[int | None, int | None]:
    """The account's concurrency quota and its unreserved part."""
    try:
        settings = _cached(
            ("account",),
            max_age,
            lambda: _call("GetAccountSettings", lambda: lambda_client().get_account_settings()),
        )
    except _Unreadable as exc:
        unread.append(exc.reason)
        return None, None
    limit = settings.get("AccountLimit", {})
    total = limit.get("ConcurrentExecutions")
    unreserved = limit.get("UnreservedConcurrentExecutions")
    return (
        None if total is None else int(total),
        None if unreserved is None else int(unreserved),
    )
