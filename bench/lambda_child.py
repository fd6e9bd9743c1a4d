"""`python -m bench.lambda_child EVENT_FILE`: one Lambda invocation in a fresh process, for the
parent to measure (peak RSS from os.wait4; the REAPER_* settings are its environment). The
handler module is imported (Lambda's INIT), then invoked once as `reaper invoke` does; its log
lines go to stdout as to CloudWatch, then a last line of timings and counts."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


def invoke(event: Any) -> tuple[dict[str, int], float]:
    """Invoke the handler once, as `reaper invoke` does: the sessions each target acted on, and
    the CPU seconds of all this process's threads (the handler runs each pass in a thread)."""
    from reaper.cli.invoke import invoke_event, local_context

    cpu_started = time.process_time()
    response = invoke_event(event, local_context(timeout_seconds=900))
    cpu = time.process_time() - cpu_started
    counts = {one["target"]: one["counts"] for one in response["targets"]}
    return {name: c["terminated"] or c["would_terminate"] for name, c in counts.items()}, cpu


def main(argv: list[str]) -> int:
    """Import, invoke once, print the result line; returns the exit code."""
    started = time.perf_counter()
    import reaper.aws.handler  # noqa: F401  (the INIT phase of a cold start)
    from reaper.cli.invoke import read_event

    imported = time.perf_counter()
    affected, cpu = invoke(read_event(Path(argv[0])))
    timings = {"init_seconds": imported - started, "invoke_seconds": time.perf_counter() - imported}
    print(json.dumps({**timings, "invoke_cpu_seconds": cpu, "affected": sum(affected.values())}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
