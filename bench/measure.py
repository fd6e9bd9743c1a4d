"""Timing one reap four ways: the reaper's pass and the bare statement, in-process and as processes.

Every function here times exactly one run and checks what it did (how many sessions it selected
or terminated); the suite decides what to run, on which sessions, how often.

In-process timings include opening and closing the database connection on both sides: the
reaper's `run_pass` always connects, and the bare statement is given a fresh connection too.
Process timings include starting the program (Python and its imports for `reaper run`, the C
binary for `psql`), which is what a person or a cron job waits for.

In-process timings also record CPU work, which wall time hides on a small machine: this
process's CPU time (the client) and the server backend's on-CPU and run-queue time from
/proc/<pid>/schedstat (the server is local; root or the server's OS user may read it). The
backend's connection start-up is left out on both sides.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

import reaper.run
from bench.errors import BenchError
from reaper.core.policy import policy_from_mapping
from reaper.pg import gateway
from reaper.pg.target import Target

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

    from reaper.core.policy import Policy

# The steps of run_pass, in the order it calls them: (name, module, attribute). The bench wraps
# these attributes with timers for the duration of one timed pass, so the breakdown comes from
# the very pass being timed, through its one path, not from a re-enactment of it.
_PASS_STEPS: tuple[tuple[str, Any, str], ...] = (
    ("connect", gateway, "connect"),
    ("lock", gateway, "try_pass_lock"),
    ("snapshot", gateway, "take_snapshot"),
    ("visibility", reaper.run, "check_visibility"),
    ("plan", reaper.run, "plan"),
    ("terminate", gateway, "terminate"),
    ("result", reaper.run, "summarize"),
)
# What the steps leave out: closing the connection, building the list of planned signals.
OTHER_STEP = "close+other"

_CLI_COUNTS = re.compile(r"planned (\d+), (?:would terminate|terminated) (\d+)")


@dataclass(frozen=True)
class Timing:
    """One timed run: wall seconds, what it acted on, and where the time went when known."""

    seconds: float
    # Sessions the run terminated (real) or selected for termination (dry run).
    affected: int
    steps: dict[str, float] = field(default_factory=dict)
    # For child processes: peak resident memory (ru_maxrss, KiB) and CPU seconds (user + sys).
    peak_rss_kib: int | None = None
    cpu_seconds: float | None = None
    # For in-process runs: CPU of this process, and of the server backend (None if unreadable):
    # on a CPU, and waiting on the run queue for one.
    client_cpu_seconds: float | None = None
    server_cpu_seconds: float | None = None
    server_runqueue_seconds: float | None = None


def bench_policy(idle_seconds: float, application_glob: str) -> Policy:
    """The policy `reaper run --application-name GLOB --idle-seconds S` builds, uncapped."""
    return policy_from_mapping(
        {
            "rules": [
                {
                    "name": "cli",
                    "application_names": [application_glob],
                    "states": {"idle": idle_seconds},
                }
            ],
            "max_terminations": 100_000,
            "allow_short_thresholds": True,
        },
        source="the benchmark",
    )


def time_reaper_pass(dsn: str, policy: Policy, *, dry_run: bool) -> Timing:
    """Time one `run_pass` in this process, with its steps.

    Raises:
        ReaperError: whatever run_pass raises.
    """
    target = Target.from_dsn(dsn, name="bench")
    with _timed_pass_steps() as probe:
        cpu_started = time.process_time()
        started = time.perf_counter()
        result = reaper.run.run_pass(target, policy, force_dry_run=dry_run)
        seconds = time.perf_counter() - started
        client_cpu = time.process_time() - cpu_started
    steps = probe.steps
    steps[OTHER_STEP] = max(0.0, seconds - sum(steps.values()))
    counts = result.counts
    return Timing(
        seconds,
        counts.would_terminate if dry_run else counts.terminated,
        steps,
        client_cpu_seconds=client_cpu,
        server_cpu_seconds=probe.server_cpu,
        server_runqueue_seconds=probe.server_runqueue,
    )


def time_bare_statement(dsn: str, statement: str, *, terminates: bool) -> Timing:
    """Time a fresh connection, the bare statement and closing, in this process."""
    cpu_started = time.process_time()
    started = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        connected = time.perf_counter()
        backend_before = backend_schedstat(conn.info.backend_pid)
        # Sent as the exact text psql gets: no parameters, nothing for psycopg to rewrite.
        rows = conn.execute(statement.encode()).fetchall()
        executed = time.perf_counter()
        backend_after = backend_schedstat(conn.info.backend_pid)
    seconds = time.perf_counter() - started
    client_cpu = time.process_time() - cpu_started
    affected = sum(1 for (value,) in rows if value is True) if terminates else len(rows)
    steps = {
        "connect": connected - started,
        "statement": executed - connected,
        "close": seconds - (executed - started),
    }
    server_cpu = server_runqueue = None
    if backend_before is not None and backend_after is not None:
        server_cpu = backend_after[0] - backend_before[0]
        server_runqueue = backend_after[1] - backend_before[1]
    return Timing(
        seconds,
        affected,
        steps,
        client_cpu_seconds=client_cpu,
        server_cpu_seconds=server_cpu,
        server_runqueue_seconds=server_runqueue,
    )


def backend_schedstat(pid: int) -> tuple[float, float] | None:
    """(seconds on a CPU, seconds waiting for one) of a local process; None if unreadable."""
    try:
        on_cpu_ns, runqueue_ns, _timeslices = Path(f"/proc/{pid}/schedstat").read_text().split()
    except (OSError, ValueError):
        return None
    return int(on_cpu_ns) / 1e9, int(runqueue_ns) / 1e9


def time_reaper_cli(
    reaper_executable: Path, dsn: str, *, idle_seconds: float, application_glob: str, dry_run: bool
) -> Timing:
    """Time `reaper run` as a process, the way an operator would run it.

    The DSN travels in REAPER_DATABASE_URL rather than on the command line, where `ps` shows it.

    Raises:
        BenchError: the command failed or its summary line is missing.
    """
    argv = [
        str(reaper_executable),
        "run",
        "--application-name",
        application_glob,
        "--idle-seconds",
        f"{idle_seconds:g}",
        "--allow-short-thresholds",
        "--max-terminations",
        "100000",
    ]
    if dry_run:
        argv.append("--dry-run")
    run = run_timed_process(argv, env={**_clean_environment(), "REAPER_DATABASE_URL": dsn})
    if run.returncode != 0:
        raise BenchError(f"reaper run exited {run.returncode}: {_tail(run.output)}")
    match = _CLI_COUNTS.search(run.output)
    if match is None:
        raise BenchError(f"reaper run printed no summary line: {_tail(run.output)}")
    return Timing(run.seconds, int(match.group(2)), {}, run.peak_rss_kib, run.cpu_seconds)


def time_psql(psql: Path, dsn: str, statement: str, *, terminates: bool) -> Timing:
    """Time `psql -c STATEMENT` as a process (no psqlrc, unaligned tuples only).

    Raises:
        BenchError: psql failed.
    """
    params = conninfo_to_dict(dsn)
    argv = [
        str(psql),
        "-X",
        "-q",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        str(params["host"]),
        "-p",
        str(params["port"]),
        "-U",
        str(params["user"]),
        "-d",
        str(params.get("dbname", "postgres")),
        "-c",
        statement,
    ]
    env = {**_clean_environment(), "PGPASSWORD": str(params.get("password", ""))}
    run = run_timed_process(argv, env=env)
    if run.returncode != 0:
        raise BenchError(f"psql exited {run.returncode}: {_tail(run.output)}")
    lines = [line for line in run.output.splitlines() if line.strip()]
    affected = sum(1 for line in lines if line == "t") if terminates else len(lines)
    return Timing(run.seconds, affected, {}, run.peak_rss_kib, run.cpu_seconds)


@dataclass(frozen=True)
class ProcessRun:
    """A finished child process: wall time, exit code, output, and its own resource usage."""

    seconds: float
    returncode: int
    output: str
    peak_rss_kib: int
    cpu_seconds: float


def run_timed_process(
    argv: Sequence[str], *, env: Mapping[str, str], cwd: Path | None = None
) -> ProcessRun:
    """Run a program to completion; time it from spawn to exit.

    The child is reaped with os.wait4, whose resource usage is that child's alone (unlike
    RUSAGE_CHILDREN, the maximum over every child ever waited for). Output (stdout and stderr)
    goes to a temporary file, not a pipe, so a chatty child never blocks on a full pipe.
    """
    with tempfile.TemporaryFile() as output:
        started = time.perf_counter()
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
        )
        try:
            _pid, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.kill()
            process.wait()
            raise
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        output.seek(0)
        text = output.read().decode("utf-8", errors="replace")
    return ProcessRun(
        seconds=seconds,
        returncode=process.returncode,
        output=text,
        peak_rss_kib=usage.ru_maxrss,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
    )


def _clean_environment() -> dict[str, str]:
    """This process's environment without libpq's and the reaper's own variables."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PG", "REAPER_", "POWERTOOLS_"))
    }


def _tail(text: str, lines: int = 5) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


@dataclass
class _PassProbe:
    """What the wrapped steps of one pass recorded."""

    steps: dict[str, float] = field(default_factory=dict)
    backend_pid: int | None = None
    server_cpu: float | None = None
    server_runqueue: float | None = None

    def add_server_time(self, before: tuple[float, float], after: tuple[float, float]) -> None:
        self.server_cpu = (self.server_cpu or 0.0) + after[0] - before[0]
        self.server_runqueue = (self.server_runqueue or 0.0) + after[1] - before[1]


@contextlib.contextmanager
def _timed_pass_steps() -> Iterator[_PassProbe]:
    """Wrap run_pass's steps with timers; yields the probe their times accumulate in."""
    probe = _PassProbe()
    originals: list[tuple[Any, str, Any]] = []
    try:
        for name, module, attribute in _PASS_STEPS:
            original = getattr(module, attribute, None)
            if original is None:
                continue  # the product renamed a step: the breakdown simply lacks it
            originals.append((module, attribute, original))
            setattr(module, attribute, _timer(name, original, probe))
        yield probe
    finally:
        for module, attribute, original in reversed(originals):
            setattr(module, attribute, original)


def _timer(name: str, function: Callable[..., Any], probe: _PassProbe) -> Callable[..., Any]:
    @functools.wraps(function)
    def timed(*args: Any, **kwargs: Any) -> Any:
        pid = probe.backend_pid
        before = backend_schedstat(pid) if pid is not None else None
        started = time.perf_counter()
        try:
            returned = function(*args, **kwargs)
        finally:
            probe.steps[name] = probe.steps.get(name, 0.0) + time.perf_counter() - started
        if name == "connect":
            probe.backend_pid = returned.info.backend_pid
        elif before is not None and pid is not None:
            after = backend_schedstat(pid)
            if after is not None:
                probe.add_server_time(before, after)
        return returned

    return timed
