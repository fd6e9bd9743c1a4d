"""The measurements, run by pytest-benchmark (`python -m bench` runs them and reports).

Per server and fleet size, dry and real: the reaper's pass against the bare statement in this
process, `reaper run` against `psql -c` as processes; one Lambda invocation in a child. Once:
cold imports, and the fan-out (one invocation over each of its servers alone, then over all).
Without a server: the planner alone, over a policy of as many rules as a policy may have.
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
from subprocess import DEVNULL, STDOUT
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from bench import lambda_child
from bench.bare_sql import bare_statement
from bench.conftest import rounds_for
from bench.fleet import BenchError, require_exactly
from bench.report import read_handler_output
from reaper.actions.run import run_observed_pass, run_pass
from reaper.cli.invoke import emulated_environment, read_event
from reaper.core.planning import plan
from reaper.core.policy import MAX_RULES, one_rule_policy, policy_from_mapping
from reaper.core.reuse import History
from reaper.pg.conninfo import ConnInfo
from tests.unit.planning_data import session, snapshot

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from pytest_benchmark.fixture import BenchmarkFixture

    from bench.fleet import BenchServer

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
# The same rule learning per application; a fleet never reused is held to the same threshold,
# so a learning pass acts on exactly the fleet as well.
LEARNING_POLICY = policy_from_mapping(
    {
        **POLICY.model_dump(mode="json"),
        "rules": [
            {
                **POLICY.rules[0].model_dump(mode="json"),
                "learned": {"min_seconds": IDLE_SECONDS, "max_seconds": 3600},
            }
        ],
    },
    source="bench",
)
MODES = ["dry", "real"]
STATEMENTS = {
    mode: bare_statement(IDLE_SECONDS, "lambda:%", terminate=mode == "real") for mode in MODES
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


@dataclass(frozen=True)
class Site:
    """One measurement's servers with their fleets (one, or the fan-out's), fleet size and rounds,
    and its untimed per-round extras (steps, CPU, a process's usage), whose medians go with
    pytest-benchmark's numbers."""

    benchmark: BenchmarkFixture
    servers: Sequence[BenchServer]
    size: int
    rounds: int
    extras: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    @property
    def server(self) -> BenchServer:
        return self.servers[0]

    def add(self, name: str, value: float) -> None:
        self.extras[name].append(value)

    def ready(self) -> None:
        """Every fleet there (untimed) and old enough: the policy rightly spares younger ones."""
        opened = [server.fleet.ready(self.size) for server in self.servers]  # all, not any
        if any(opened):
            time.sleep(IDLE_SECONDS + 0.1)

    def spend(self, real: bool = True) -> None:
        """Say whether the run terminated the fleets: then the next round opens new ones."""
        for server in self.servers:
            server.fleet.spent = real

    def measure(self, run: Callable[[], None], *, warm_up: bool = False, **info: Any) -> None:
        """Time `run` with pytest-benchmark, ready fleets before each round (untimed); `warm_up`
        first runs it untimed, when the first run in a process pays one-off costs (imports,
        psycopg's loaders). `info` (kind, mode, ...) goes with the numbers."""
        if warm_up:
            self.ready()
            run()
            self.extras.clear()
        rounds = 1 if info["kind"] == "lambda_invocation" else self.rounds
        self.benchmark.pedantic(run, setup=self.ready, rounds=rounds)  # type: ignore[no-untyped-call]
        server, fleets = self.server, [one.fleet for one in self.servers]
        self.benchmark.extra_info.update(
            info,
            sessions=self.size,
            major=server.cluster.major,
            server=server.cluster.binaries.label,
            server_version=server.server_version,
            open_seconds=[s for fleet in fleets for s in fleet.open_seconds.get(self.size, [])],
            medians={name: statistics.median(values) for name, values in self.extras.items()},
        )


@pytest.fixture
def site(
    benchmark: BenchmarkFixture,
    server: BenchServer,
    size: int,
    pytestconfig: pytest.Config,
) -> Site:
    return Site(benchmark, [server], size, rounds_for(pytestconfig, size))


@pytest.fixture(scope="session")
def policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """POLICY as the Lambda function reads it (REAPER_POLICY_FILE)."""
    path = tmp_path_factory.mktemp("policy") / "policy.json"
    path.write_text(POLICY.model_dump_json(), encoding="utf-8")
    return path


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["reaper_pass", "bare_sql"])
def test_in_process(site: Site, kind: str, mode: str) -> None:
    """The reaper's pass against the bare statement, each on a fresh connection."""
    target = ConnInfo.from_dsn(site.server.reaper_dsn, name="bench")
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

    site.measure(reap, warm_up=mode == "dry", kind=kind, mode=mode)


@pytest.mark.parametrize("mode", MODES)
def test_learning_pass(site: Site, mode: str) -> None:
    """The pass with a reuse history kept from round to round: its `learn` step is what
    remembering the sessions costs (compare, note what finished, work out the statistics)."""
    target = ConnInfo.from_dsn(site.server.reaper_dsn, name="bench")
    history = History()

    def learning_pass() -> None:
        nonlocal history
        observed = run_observed_pass(
            target, LEARNING_POLICY, history, force_dry_run=mode == "dry", on_step=site.add
        )
        history = observed.history
        counts = observed.result.counts
        site.spend(mode == "real")
        require_exactly("the learning pass", counts.terminated or counts.would_terminate, site.size)

    site.measure(learning_pass, warm_up=True, kind="reaper_pass_learning", mode=mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["reaper_cli", "psql"])
def test_process(site: Site, mode: str, kind: str) -> None:
    """`reaper run` (Python and its imports) against `psql -c` (a C binary), start to exit."""
    params = conninfo_to_dict(site.server.reaper_dsn)
    if kind == "psql":
        # The server's own psql binary (/usr/bin/psql is a Perl wrapper).
        psql = site.server.cluster.binaries.bindir / "psql"
        argv = [str(psql), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
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
        output, peak_rss_kib, cpu_seconds = run_timed_process(argv, env, kind)
        site.spend(mode == "real")
        site.add("peak_rss_kib", peak_rss_kib)
        site.add("cpu", cpu_seconds)
        require_exactly(kind, _affected(kind, mode, output), site.size)

    site.measure(reap, kind=kind, mode=mode)


def test_lambda_invocation(site: Site, policy_file: Path) -> None:
    """One invocation of the handler in a child: its duration, peak RSS and log volume."""
    invocation: dict[str, Any] = {}
    env = {
        "REAPER_DATABASE_URL": site.server.reaper_dsn,
        "REAPER_POLICY_FILE": str(policy_file),
        # No AWS call is made (policy from a file, DSN given); boto3 still wants a region.
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    argv = [sys.executable, "-m", "bench.lambda_child", str(EVENT_FILE)]

    def invoke() -> None:
        output, peak_rss_kib, cpu_seconds = run_timed_process(argv, env, "the Lambda invocation")
        site.spend()
        log, _, result = output.rstrip("\n").rpartition("\n")
        invocation.update(json.loads(result), peak_rss_kib=peak_rss_kib, cpu_seconds=cpu_seconds)
        invocation.update(read_handler_output(log))
        require_exactly("the Lambda invocation", invocation["affected"], site.size)

    site.measure(invoke, kind="lambda_invocation", mode="real")
    site.benchmark.extra_info["invocation"] = invocation


def test_fanout(
    benchmark: BenchmarkFixture,
    fanout: list[BenchServer],
    fanout_targets: tuple[int, ...],
    policy_file: Path,
    pytestconfig: pytest.Config,
) -> None:
    """One handler invocation over these servers (REAPER_TARGETS), in this process as `reaper
    invoke` runs it: each server alone, then all at once; each pass must terminate its fleet."""
    size = pytestconfig.getoption("bench_fanout_sessions")
    site = Site(
        benchmark, [fanout[i] for i in fanout_targets], size, rounds_for(pytestconfig, size)
    )
    names = [f"db{index}" for index in fanout_targets]
    targets = [{"name": f"db{i}", "dsn": fanout[i].reaper_dsn} for i in fanout_targets]
    env = {"REAPER_TARGETS": json.dumps(targets), "REAPER_POLICY_FILE": str(policy_file)}
    event = read_event(EVENT_FILE)
    terminated: dict[str, int] = {}

    def invoke() -> None:
        with emulated_environment(env), contextlib.redirect_stdout(io.StringIO()):
            affected, cpu_seconds = lambda_child.invoke(event)
        site.add("reaper_cpu", cpu_seconds)
        site.spend()
        for name in names:
            require_exactly(f"the pass on {name}", affected.get(name, 0), size)
        terminated.update(affected)

    site.measure(invoke, warm_up=True, kind="fanout", mode="real", targets=names)
    benchmark.extra_info["terminated"] = terminated


PLAN_SESSIONS = 3_000


def test_plan_many_rules(benchmark: BenchmarkFixture) -> None:
    """plan() alone: MAX_RULES rules (per team: its applications and its role) over 3,000 idle
    sessions, a fifth of them matching no rule, so every rule is tried on those."""
    teams = MAX_RULES + MAX_RULES // 4
    rules = [
        {"name": f"team{i}", "application_names": ["lambda:*", f"batch:team{i}-*"],
         "users": [f"team{i}"], "states": {"idle": 60}}
        for i in range(MAX_RULES)
    ]  # fmt: skip
    policy = policy_from_mapping({"rules": rules, "max_terminations": 100_000}, source="bench")
    sessions = [
        session(10 + i, application_name=f"lambda:app{i}", user=f"team{i % teams}")
        for i in range(PLAN_SESSIONS)
    ]
    picture = snapshot(*sessions)
    expected = sum(1 for i in range(PLAN_SESSIONS) if i % teams < MAX_RULES)

    def plan_once() -> None:
        planned = len(plan(picture, policy).to_terminate)
        require_exactly("the plan", planned, expected)

    benchmark.pedantic(plan_once, rounds=5, warmup_rounds=1)  # type: ignore[no-untyped-call]
    benchmark.extra_info.update(kind="plan", rules=MAX_RULES, sessions=PLAN_SESSIONS)


@pytest.mark.parametrize("statement", list(IMPORTS))
def test_cold_import(
    benchmark: BenchmarkFixture, statement: str, pytestconfig: pytest.Config
) -> None:
    """An import in a fresh interpreter, spawn to exit; the interpreter's start-up is in all."""
    argv = [sys.executable, "-c", IMPORTS[statement]]

    def start() -> None:
        run_timed_process(argv, {}, f"`python -c {IMPORTS[statement]!r}`")

    # The warm-up round fills the page cache and writes any missing .pyc files.
    rounds = pytestconfig.getoption("bench_cold_start_runs")
    benchmark.pedantic(start, rounds=rounds, warmup_rounds=1)  # type: ignore[no-untyped-call]
    benchmark.extra_info.update(kind="cold_import", statement=statement)


def run_timed_process(
    argv: Sequence[str], env: dict[str, str], what: str
) -> tuple[str, int, float]:
    """Run a program to completion in REPO_ROOT, in a clean environment plus `env`; its output,
    peak RSS (KiB) and CPU seconds. Reaped with os.wait4, whose usage is this child's alone;
    output goes to a file, so a chatty child never blocks.

    Raises:
        BenchError: it exited with another status than 0 (`what` names it).
    """
    steering = ("PG", "REAPER_", "POWERTOOLS_", "AWS_", "PYTHON")
    env = {k: v for k, v in os.environ.items() if not k.startswith(steering)} | env
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(
            argv, stdin=DEVNULL, stdout=output, stderr=STDOUT, env=env, cwd=REPO_ROOT
        )
        try:
            _pid, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.kill()
            process.wait()
            raise
        output.seek(0)
        text = output.read().decode("utf-8", errors="replace")
    if (code := os.waitstatus_to_exitcode(status)) != 0:
        raise BenchError(f"{what} exited {code}: {text.strip()[-800:]}")
    return text, usage.ru_maxrss, usage.ru_utime + usage.ru_stime


def _affected(kind: str, mode: str, output: str) -> int:
    if kind == "psql":
        lines = [line for line in output.splitlines() if line.strip()]
        return sum(1 for line in lines if line == "t") if mode == "real" else len(lines)
    match = _CLI_COUNTS.search(output)
    if match is None:
        raise BenchError(f"reaper run printed no summary line: {output.strip()[-500:]}")
    return int(match.group(2))
