"""The measurements, run by pytest-benchmark (`python -m bench` runs them and reports).

Per server and fleet size, dry and real: the reaper's pass against the bare statement in this
process (both including connect and close), `reaper run` against `psql -c` as processes; one
Lambda invocation in a child (peak RSS, duration, log). Once: cold imports in fresh interpreters,
and the fan-out: one invocation over each of its servers alone, then over all of them at once.
Every run must act on exactly the fleet (`require_exactly`); a real run terminates it, so
pytest-benchmark's untimed `setup` opens a new one before each round.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from bench.bare_sql import bare_statement
from bench.conftest import rounds_for
from bench.fleet import BenchError, require_exactly
from bench.report import read_handler_output
from reaper.cli.invoke import emulated_environment, invoke_event, local_context, read_event
from reaper.core.policy import one_rule_policy
from reaper.local.binaries import embedded_binaries
from reaper.pg.target import Target
from reaper.run import run_pass

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from pytest_benchmark.fixture import BenchmarkFixture

    from bench.fleet import BenchServer, Fleet

REPO_ROOT = Path(__file__).resolve().parent.parent
EVENT_FILE = REPO_ROOT / "events" / "scheduled.json"
# Short, so that a new fleet qualifies for reaping a moment after it is opened.
IDLE_SECONDS = 0.25
GLOB = "lambda:*"
# What `reaper run --application-name 'lambda:*' --idle-seconds 0.25 ...` builds, uncapped.
POLICY = one_rule_policy(
    [GLOB], idle_seconds=IDLE_SECONDS, source="bench", max_terminations=100_000,
    allow_short_thresholds=True,
)  # fmt: skip
STATEMENTS = {
    mode: bare_statement(
        idle_seconds=IDLE_SECONDS, like_pattern="lambda:%", terminate=mode == "real"
    )
    for mode in ("dry", "real")
}
# The handler's cold import, its floor, the libraries it is built on (reference), no import.
IMPORTS = {
    "handler": "import reaper.aws.handler",
    "floor": "import psycopg, boto3",
    "libraries": "import psycopg, boto3, pydantic, pydantic_settings; "
    "from aws_lambda_powertools import Logger, Metrics; "
    "import aws_lambda_powertools.utilities.parameters",
    "interpreter": "pass",
}
_CLI_COUNTS = re.compile(r"planned (\d+), (?:would terminate|terminated) (\d+)")

MODES = ["dry", "real"]


@dataclass(frozen=True)
class Site:
    """One measurement's servers with their fleets (one, or the fan-out's), fleet size and rounds,
    and its untimed per-round extras (steps, CPU, a process's usage), whose medians go with
    pytest-benchmark's numbers."""

    servers: Sequence[tuple[BenchServer, Fleet]]
    size: int
    rounds: int
    extras: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    @property
    def server(self) -> BenchServer:
        return self.servers[0][0]

    def add(self, name: str, value: float) -> None:
        self.extras[name].append(value)

    def ready(self) -> None:
        """Every fleet there (untimed) and old enough: the policy rightly spares younger ones."""
        opened = [fleet.ready(self.size) for _, fleet in self.servers]  # all of them, not any
        if any(opened):
            time.sleep(IDLE_SECONDS + 0.1)

    def spend(self, real: bool = True) -> None:
        """Say whether the run terminated the fleets: then the next round opens new ones."""
        for _, fleet in self.servers:
            fleet.spent = real

    def measure(
        self,
        benchmark: BenchmarkFixture,
        run: Callable[[], None],
        *,
        kind: str,
        mode: str,
        warm_up: bool = False,
        **extra: Any,
    ) -> None:
        """Time `run` with pytest-benchmark, ready fleets before each round (untimed); `warm_up`
        first runs it untimed, when the first run in a process pays one-off costs (imports,
        psycopg's loaders)."""
        if warm_up:
            self.ready()
            run()
            self.extras.clear()
        benchmark.pedantic(  # type: ignore[no-untyped-call]  # pytest-benchmark is untyped
            run,
            setup=self.ready,
            rounds=1 if kind == "lambda_invocation" else self.rounds,
            iterations=1,
        )
        benchmark.extra_info.update(
            kind=kind,
            mode=mode,
            sessions=self.size,
            major=self.server.cluster.major,
            server=self.server.cluster.binaries.label,
            server_version=self.server.server_version,
            open_seconds=[s for _, f in self.servers for s in f.open_seconds.get(self.size, [])],
            medians={name: statistics.median(values) for name, values in self.extras.items()},
            **extra,
        )


@pytest.fixture
def site(server: BenchServer, fleet: Fleet, size: int, pytestconfig: pytest.Config) -> Site:
    return Site([(server, fleet)], size, rounds_for(pytestconfig, size))


@pytest.fixture(scope="session")
def policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """POLICY as the Lambda function reads it (REAPER_POLICY_FILE)."""
    path = tmp_path_factory.mktemp("policy") / "policy.json"
    path.write_text(POLICY.model_dump_json(), encoding="utf-8")
    return path


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["reaper_pass", "bare_sql"])
def test_in_process(benchmark: BenchmarkFixture, site: Site, kind: str, mode: str) -> None:
    """The reaper's pass against the bare statement, each on a fresh connection."""
    target = Target.from_dsn(site.server.reaper_dsn, name="bench")
    # Sent as the exact text psql gets: no parameters, nothing for psycopg to rewrite.
    statement = STATEMENTS[mode].encode()

    def reaper_pass() -> int:
        result = run_pass(target, POLICY, force_dry_run=mode == "dry", on_step=site.add)
        return result.counts.terminated or result.counts.would_terminate

    def bare_sql() -> int:
        started = time.perf_counter()
        with psycopg.connect(site.server.reaper_dsn, autocommit=True) as conn:
            connected = time.perf_counter()
            rows = conn.execute(statement).fetchall()
            executed = time.perf_counter()
        site.add("connect", connected - started)
        site.add("statement", executed - connected)
        site.add("close", time.perf_counter() - executed)
        return sum(1 for (value,) in rows if value is True) if mode == "real" else len(rows)

    def reap() -> None:
        cpu_started = time.process_time()
        affected = reaper_pass() if kind == "reaper_pass" else bare_sql()
        site.add("client_cpu", time.process_time() - cpu_started)
        site.spend(mode == "real")
        require_exactly(kind, affected, site.size)

    site.measure(benchmark, reap, kind=kind, mode=mode, warm_up=mode == "dry")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["reaper_cli", "psql"])
def test_process(benchmark: BenchmarkFixture, site: Site, mode: str, kind: str) -> None:
    """`reaper run` (Python and its imports) against `psql -c` (a C binary), start to exit."""
    params = conninfo_to_dict(site.server.reaper_dsn)
    if kind == "psql":
        argv = [str(_psql()), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
        argv += ["-c", STATEMENTS[mode]]
        env = {f"PG{key.upper()}": str(params[key]) for key in ("host", "port", "user", "password")}
        env["PGDATABASE"] = "postgres"
    else:
        argv = [str(Path(sys.executable).parent / "reaper"), "run", "--application-name", GLOB]
        argv += ["--idle-seconds", f"{IDLE_SECONDS:g}", "--allow-short-thresholds"]
        argv += ["--max-terminations", "100000", *(["--dry-run"] if mode == "dry" else [])]
        # In the environment, not on the command line, where `ps` would show the password.
        env = {"REAPER_DATABASE_URL": site.server.reaper_dsn}

    def reap() -> None:
        run = run_timed_process(argv, env=env)
        site.spend(mode == "real")
        if run.returncode != 0:
            raise BenchError(f"{kind} exited {run.returncode}: {run.output.strip()[-500:]}")
        site.add("peak_rss_kib", run.peak_rss_kib)
        site.add("cpu", run.cpu_seconds)
        require_exactly(kind, _affected(kind, mode, run.output), site.size)

    site.measure(benchmark, reap, kind=kind, mode=mode)


def test_lambda_invocation(benchmark: BenchmarkFixture, site: Site, policy_file: Path) -> None:
    """One invocation of the handler in a child: its duration, peak RSS and log volume."""
    invocation: dict[str, Any] = {}
    env = {
        "REAPER_DATABASE_URL": site.server.reaper_dsn,
        "REAPER_POLICY_FILE": str(policy_file),
        # No AWS call is made (policy from a file, DSN given); boto3 still wants a region.
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    with tempfile.TemporaryDirectory(prefix="bench-lambda-") as scratch:
        result_file = Path(scratch) / "result.json"
        argv = [sys.executable, "-m", "bench.lambda_child", str(EVENT_FILE), str(result_file)]

        def invoke() -> None:
            run = run_timed_process(argv, env=env, cwd=REPO_ROOT)
            site.spend()
            if run.returncode != 0:
                raise BenchError(f"the Lambda invocation failed: {run.output.strip()[-800:]}")
            invocation.update(json.loads(result_file.read_text(encoding="utf-8")))
            invocation.update(peak_rss_kib=run.peak_rss_kib, cpu_seconds=run.cpu_seconds)
            invocation.update(read_handler_output(run.output))
            require_exactly("the Lambda invocation", invocation["affected"], site.size)

        site.measure(benchmark, invoke, kind="lambda_invocation", mode="real")
    benchmark.extra_info["invocation"] = invocation


def test_fanout(
    benchmark: BenchmarkFixture,
    fanout: list[tuple[BenchServer, Fleet]],
    fanout_targets: tuple[int, ...],
    policy_file: Path,
    pytestconfig: pytest.Config,
) -> None:
    """One handler invocation over these servers (REAPER_TARGETS), in this process as `reaper
    invoke` runs it: each server alone, then all at once; each pass must terminate its fleet."""
    size = pytestconfig.getoption("bench_fanout_sessions")
    site = Site([fanout[index] for index in fanout_targets], size, rounds_for(pytestconfig, size))
    names = [f"db{index}" for index in fanout_targets]
    targets = [{"name": f"db{i}", "dsn": fanout[i][0].reaper_dsn} for i in fanout_targets]
    env = {"REAPER_TARGETS": json.dumps(targets), "REAPER_POLICY_FILE": str(policy_file)}
    event = read_event(EVENT_FILE)
    terminated: dict[str, int] = {}

    def invoke() -> None:
        cpu_started = time.process_time()  # all threads: the handler's pool runs the passes
        with emulated_environment(env), contextlib.redirect_stdout(io.StringIO()):
            response = invoke_event(event, local_context())
        site.add("reaper_cpu", time.process_time() - cpu_started)
        site.spend()
        counts = {one["target"]: one["counts"]["terminated"] for one in response["targets"]}
        for name in names:
            require_exactly(f"the pass on {name}", counts.get(name, 0), size)
        terminated.update(counts)

    site.measure(benchmark, invoke, kind="fanout", mode="real", warm_up=True, targets=names)
    benchmark.extra_info["terminated"] = terminated


@pytest.mark.parametrize("statement", list(IMPORTS))
def test_cold_import(
    benchmark: BenchmarkFixture, statement: str, pytestconfig: pytest.Config
) -> None:
    """An import in a fresh interpreter, spawn to exit; the interpreter's start-up is in all."""
    argv = [sys.executable, "-c", IMPORTS[statement]]

    def start() -> None:
        run = run_timed_process(argv, env={}, cwd=REPO_ROOT)
        if run.returncode != 0:
            raise BenchError(f"`python -c {IMPORTS[statement]!r}` failed: {run.output[-500:]}")

    start()  # untimed: fills the page cache and writes any missing .pyc files
    rounds = pytestconfig.getoption("bench_cold_start_runs")
    benchmark.pedantic(start, rounds=rounds, iterations=1)  # type: ignore[no-untyped-call]
    benchmark.extra_info.update(kind="cold_import", statement=statement)


@dataclass(frozen=True)
class ProcessRun:
    """A finished child process: exit code, output, and its own resource usage."""

    returncode: int
    output: str
    peak_rss_kib: int
    cpu_seconds: float


def run_timed_process(
    argv: Sequence[str], *, env: dict[str, str], cwd: Path | None = None
) -> ProcessRun:
    """Run a program to completion in a clean environment plus `env`. Reaped with os.wait4,
    whose usage is this child's alone; output goes to a file, so a chatty child never blocks."""
    clean = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PG", "REAPER_", "POWERTOOLS_", "AWS_", "PYTHON"))
    }
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=clean | env,
            cwd=cwd,
        )
        try:
            _pid, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.kill()
            process.wait()
            raise
        process.returncode = os.waitstatus_to_exitcode(status)
        output.seek(0)
        text = output.read().decode("utf-8", errors="replace")
    return ProcessRun(process.returncode, text, usage.ru_maxrss, usage.ru_utime + usage.ru_stime)


def _affected(kind: str, mode: str, output: str) -> int:
    if kind == "psql":
        lines = [line for line in output.splitlines() if line.strip()]
        return sum(1 for line in lines if line == "t") if mode == "real" else len(lines)
    match = _CLI_COUNTS.search(output)
    if match is None:
        raise BenchError(f"reaper run printed no summary line: {output.strip()[-500:]}")
    return int(match.group(2))


def _psql() -> Path:
    """The psql binary itself, newest Debian one first (/usr/bin/psql is a Perl wrapper)."""
    debian = Path("/usr/lib/postgresql").glob("*/bin/psql")
    found = sorted(debian, key=lambda path: int(path.parts[-3]) if path.parts[-3].isdigit() else 0)
    return (found or [embedded_binaries().bindir / "psql"])[-1]
