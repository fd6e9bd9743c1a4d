"""One Lambda invocation in a fresh process, for the parent to measure (peak RSS, durations).

Usage: python -m bench.lambda_child EVENT_FILE RESULT_FILE

The parent sets REAPER_DATABASE_URL and REAPER_POLICY_FILE, starts this module, and reads the
child's peak RSS from os.wait4 when it exits. Here the handler module is imported (Lambda's INIT
phase), then invoked once through `reaper.cli.invoke` exactly as `reaper invoke` does; its log lines
(EMF metrics, one audit line per session acted on) go to stdout, as they go to CloudWatch. The
timings and the counts go to RESULT_FILE as JSON.

When `reaper.aws.handler` cannot be imported the pass runs through `run_pass` instead and the result
says so ("mode": "run_pass"), so a half-written handler never stops the benchmark.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


def main(argv: list[str]) -> int:
    """Import, invoke once, write the result file; returns the exit code."""
    event_file, result_file = Path(argv[0]), Path(argv[1])
    started = time.perf_counter()
    try:
        import reaper.aws.handler  # noqa: F401  (the INIT phase of a cold start)
        from reaper.cli.invoke import invoke_event, local_context, read_event
    except ImportError as exc:
        return _run_pass_instead(result_file, started, f"{type(exc).__name__}: {exc}")
    imported = time.perf_counter()
    cpu_before = time.process_time()
    response = invoke_event(read_event(event_file), local_context(timeout_seconds=900))
    invoked = time.perf_counter()
    cpu_seconds = time.process_time() - cpu_before
    counts = response["targets"][0]["counts"]
    _write(
        result_file,
        {
            "mode": "handler",
            "init_seconds": imported - started,
            "invoke_seconds": invoked - imported,
            # All threads of this process (the handler runs each target's pass in a thread).
            "invoke_cpu_seconds": cpu_seconds,
            "affected": counts["terminated"] or counts["would_terminate"],
            "peak_rss_kib_self": _vm_hwm_kib(),
        },
    )
    return 0


def _run_pass_instead(result_file: Path, started: float, why: str) -> int:
    import os

    from reaper.core.policy import parse_policy
    from reaper.pg.target import Target
    from reaper.run import run_pass

    imported = time.perf_counter()
    cpu_before = time.process_time()
    policy = parse_policy(Path(os.environ["REAPER_POLICY_FILE"]).read_bytes(), source="bench")
    result = run_pass(Target.from_dsn(os.environ["REAPER_DATABASE_URL"]), policy)
    print(json.dumps(result.to_dict(), default=str))
    invoked = time.perf_counter()
    _write(
        result_file,
        {
            "mode": "run_pass",
            "why": why,
            "init_seconds": imported - started,
            "invoke_seconds": invoked - imported,
            "invoke_cpu_seconds": time.process_time() - cpu_before,
            "affected": result.counts.terminated,
            "peak_rss_kib_self": _vm_hwm_kib(),
        },
    )
    return 0


def _vm_hwm_kib() -> int | None:
    # The kernel's high-water mark of this process's resident set, as a cross-check of wait4.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _write(result_file: Path, document: dict[str, Any]) -> None:
    result_file.write_text(json.dumps(document), encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
