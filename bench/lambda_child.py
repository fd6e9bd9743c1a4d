"""One Lambda invocation in a fresh process, for the parent to measure (peak RSS, durations).

Usage: python -m bench.lambda_child EVENT_FILE RESULT_FILE

The parent sets REAPER_DATABASE_URL and REAPER_POLICY_FILE and takes the peak RSS from
os.wait4. The handler module is imported (Lambda's INIT), then invoked once as `reaper invoke`
does; its log lines go to stdout as to CloudWatch; timings and counts go to RESULT_FILE.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    """Import, invoke once, write the result file; returns the exit code."""
    event_file, result_file = Path(argv[0]), Path(argv[1])
    started = time.perf_counter()
    import reaper.aws.handler  # noqa: F401  (the INIT phase of a cold start)
    from reaper.cli.invoke import invoke_event, local_context, read_event

    imported = time.perf_counter()
    cpu_before = time.process_time()
    response = invoke_event(read_event(event_file), local_context(timeout_seconds=900))
    invoked = time.perf_counter()
    counts = response["targets"][0]["counts"]
    document = {
        "init_seconds": imported - started,
        "invoke_seconds": invoked - imported,
        # All threads of this process (the handler runs each target's pass in a thread).
        "invoke_cpu_seconds": time.process_time() - cpu_before,
        "affected": counts["terminated"] or counts["would_terminate"],
    }
    result_file.write_text(json.dumps(document), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
