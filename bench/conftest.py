"""The bench's options and fixtures: one server (with its fleet) per installed major, the fleet
sizes, and the fan-out's servers. `binaries` and `size` are session-scoped parameters, so pytest
runs every measurement of one server and one fleet size together; `fanout_targets` is each
fan-out server alone, then all of them.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import pytest

from bench.fleet import bench_server
from reaper.errors import LocalPostgresError
from reaper.local.binaries import embedded_binaries
from tests.harness.binaries import debian_binaries

if TYPE_CHECKING:
    from collections.abc import Iterator

    from bench.fleet import BenchServer
    from reaper.local.binaries import PostgresBinaries


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("idle-reaper bench")
    group.addoption("--bench-sizes", default="100,1000,4000", help="fleet sizes (100,1000,4000)")
    group.addoption("--bench-majors", default="18,15", help="PostgreSQL majors, if installed")
    group.addoption("--bench-rounds", type=int, help="rounds per measurement (5; 3 above 1,000)")
    group.addoption("--bench-concurrency", type=int, default=64, help="sessions opened at once")
    group.addoption("--bench-cold-start-runs", type=int, default=7, help="interpreters per import")
    group.addoption("--bench-fanout-servers", type=int, default=10, help="fan-out servers (10)")
    group.addoption("--bench-fanout-sessions", type=int, default=20, help="sessions per server")
    group.addoption("--bench-output-dir", help="where results.json and the PNG go (bench/)")


def _numbers(config: pytest.Config, name: str) -> list[int]:
    return [int(part) for part in str(config.getoption(name)).split(",") if part]


def _installed(majors: list[int]) -> list[PostgresBinaries]:
    embedded = None
    with contextlib.suppress(LocalPostgresError):
        embedded = embedded_binaries()
    found = [embedded if embedded and embedded.major == m else debian_binaries(m) for m in majors]
    return [binaries for binaries in found if binaries is not None]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "binaries" in metafunc.fixturenames:
        installed = _installed(_numbers(metafunc.config, "bench_majors"))
        ids = [f"pg{binaries.major}" for binaries in installed]
        metafunc.parametrize("binaries", installed, ids=ids, scope="session")
    if "size" in metafunc.fixturenames:
        sizes = _numbers(metafunc.config, "bench_sizes")
        metafunc.parametrize("size", sizes, ids=str, scope="session")
    if "fanout_targets" in metafunc.fixturenames:
        count = metafunc.config.getoption("bench_fanout_servers")
        alone: list[tuple[int, ...]] = [(index,) for index in range(count)]
        together = [tuple(range(count))] if count > 1 else []
        ids = [f"db{index}" for index in range(count)] + [f"all{count}"] * len(together)
        metafunc.parametrize("fanout_targets", alone + together, ids=ids)


def rounds_for(config: pytest.Config, size: int) -> int:
    """Rounds of one measurement: --bench-rounds, else 5 up to 1,000 sessions and 3 above."""
    rounds: int | None = config.getoption("bench_rounds")
    return rounds or (5 if size <= 1_000 else 3)


@pytest.fixture(scope="session")
def server(binaries: PostgresBinaries, pytestconfig: pytest.Config) -> Iterator[BenchServer]:
    """A throwaway server of this major with room for the largest fleet, and its fleet."""
    largest = max(_numbers(pytestconfig, "bench_sizes"))
    with bench_server(binaries, largest, pytestconfig.getoption("bench_concurrency")) as started:
        yield started


@pytest.fixture(scope="session")
def fanout(pytestconfig: pytest.Config) -> Iterator[list[BenchServer]]:
    """The fan-out's servers, of the first installed major, each with its fleet."""
    installed = _installed(_numbers(pytestconfig, "bench_majors"))
    if not installed:
        pytest.skip("none of --bench-majors is installed")
    size = pytestconfig.getoption("bench_fanout_sessions")
    concurrency = pytestconfig.getoption("bench_concurrency")
    with contextlib.ExitStack() as stack:
        count = pytestconfig.getoption("bench_fanout_servers")
        yield [
            stack.enter_context(bench_server(installed[0], size, concurrency)) for _ in range(count)
        ]
