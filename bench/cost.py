"""What the reaper costs per month in AWS at the default schedule, from measured numbers.

Prices are us-east-1 list prices (checked for this release; see docs/benchmarks.md):
Lambda arm64 $0.0000133334 per GB-second and $0.20 per million requests; CloudWatch custom
metrics $0.30 per metric per month (first 10,000); CloudWatch Logs ingestion $0.50 per GB.
Free tiers are ignored: they are shared with everything else in the account.

Inputs come from the benchmark's Lambda invocation in a child process: the handler's duration
(wall and CPU), the log bytes it wrote, and the distinct EMF metrics it emitted.
"""

from __future__ import annotations

import json
import math
from typing import Any

INVOCATIONS_PER_MONTH = 30 * 24 * 12  # rate(5 minutes) for 30 days: 8,640
MEMORY_MB = 256  # template.yaml's MemorySize
ARM64_PRICE_PER_GB_SECOND = 0.0000133334
PRICE_PER_REQUEST = 0.20 / 1_000_000
METRIC_PRICE_PER_MONTH = 0.30
LOG_PRICE_PER_GB = 0.50
# Lambda allots CPU in proportion to memory: one full vCPU at 1,769 MB.
FULL_VCPU_MB = 1769


def lambda_cost(
    *,
    invoke_seconds: float,
    invoke_cpu_seconds: float,
    init_seconds: float,
    memory_mb: int = MEMORY_MB,
) -> dict[str, Any]:
    """Monthly Lambda cost of one invocation per schedule tick, as measured and CPU-scaled.

    "as measured" bills the handler's wall time on this machine. "CPU-scaled" assumes the
    CPU-bound part of it runs at memory_mb / 1,769 of a vCPU, as Lambda allots, and the rest
    (waiting for the database) is unchanged: an upper estimate for a 256 MB function.
    INIT (the cold import) is billed too; the upper bound assumes every invocation is cold.
    """
    share = min(1.0, memory_mb / FULL_VCPU_MB)
    scaled_seconds = invoke_seconds + invoke_cpu_seconds * (1 / share - 1)
    gigabytes = memory_mb / 1024
    requests = INVOCATIONS_PER_MONTH * PRICE_PER_REQUEST

    def monthly(seconds: float) -> float:
        billed = math.ceil(seconds * 1000) / 1000  # Lambda bills by the millisecond
        return billed * gigabytes * INVOCATIONS_PER_MONTH * ARM64_PRICE_PER_GB_SECOND

    return {
        "memory_mb": memory_mb,
        "invocations_per_month": INVOCATIONS_PER_MONTH,
        "duration_seconds_measured": invoke_seconds,
        "duration_seconds_cpu_scaled": scaled_seconds,
        "requests_usd": requests,
        "compute_usd_measured": monthly(invoke_seconds),
        "compute_usd_cpu_scaled": monthly(scaled_seconds),
        "all_cold_init_usd_cpu_scaled": monthly(init_seconds / share),
        "total_usd_measured": requests + monthly(invoke_seconds),
        "total_usd_upper": requests + monthly(scaled_seconds) + monthly(init_seconds / share),
    }


def observability_cost(emf_metrics: int, log_bytes: float) -> dict[str, Any]:
    """Monthly CloudWatch cost: the distinct metrics the handler emits, and its log volume."""
    return {
        "distinct_metrics": emf_metrics,
        "metrics_usd": emf_metrics * METRIC_PRICE_PER_MONTH,
        "log_gb_per_month": log_bytes * INVOCATIONS_PER_MONTH / 1e9,
        "logs_usd": log_bytes * INVOCATIONS_PER_MONTH / 1e9 * LOG_PRICE_PER_GB,
    }


def read_handler_output(output: str) -> dict[str, Any]:
    """Distinct EMF metrics (name + dimensions) and log bytes, split by kind, from the log lines.

    Returns:
        {"metrics": [...], "session_audit_bytes": n, "session_audit_lines": n, "other_bytes": n}
    """
    metrics: set[str] = set()
    session_bytes = session_lines = other_bytes = 0
    for line in output.splitlines():
        size = len(line.encode()) + 1
        try:
            document = json.loads(line)
        except json.JSONDecodeError:
            other_bytes += size
            continue
        if not isinstance(document, dict):
            other_bytes += size
            continue
        if document.get("audit") == "session":
            session_bytes += size
            session_lines += 1
        else:
            other_bytes += size
        for directive in document.get("_aws", {}).get("CloudWatchMetrics", []):
            for names in directive.get("Dimensions", []):
                dimensions = ",".join(f"{name}={document.get(name)}" for name in names)
                for metric in directive.get("Metrics", []):
                    metrics.add(f"{directive.get('Namespace')}/{metric['Name']}[{dimensions}]")
    return {
        "metrics": sorted(metrics),
        "session_audit_bytes": session_bytes,
        "session_audit_lines": session_lines,
        "other_bytes": other_bytes,
    }
