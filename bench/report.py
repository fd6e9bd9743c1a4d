"""From pytest-benchmark's JSON to the bench's outputs: targets met or missed, and a plot.

`build_results` turns the raw benchmarks into `bench/results.json`'s document; `format_report`
prints it; `plot_pass_time` draws `bench/pass_time.png`. The Lambda invocation's duration, CPU
time, metrics and log bytes are what docs/benchmarks.md prices per month.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

RATIO_LIMIT = 1.2
FANOUT_LIMIT = 1.3  # one invocation over all fan-out servers / the slowest of them alone
RSS_LIMIT_MIB = 128  # the smallest Lambda memory size
PASS_TARGET_SIZES = (1_000, 4_000)
RSS_TARGET_SIZE = 4_000
PAIRS = (("reaper_pass", "bare_sql"), ("reaper_cli", "psql"))
FANOUT_NAME = f"one invocation over all fan-out servers within {FANOUT_LIMIT}x the slowest alone"


def build_results(raw: dict[str, Any]) -> dict[str, Any]:
    """The results document: every measurement's samples and median, the targets, the costs."""
    rows = []
    for bench in raw["benchmarks"]:
        stats, extra = bench["stats"], bench["extra_info"]
        rows.append({**extra, **{k: stats[k] for k in ("median", "min", "max", "stddev")}})
        rows[-1]["samples"] = stats["data"]
    results: dict[str, Any] = {
        "machine": raw["machine_info"],
        "commit": raw.get("commit_info", {}),
        "datetime": raw["datetime"],
        "measurements": [row for row in rows if any(row["kind"] in pair for pair in PAIRS)],
        "cold_start": {row["statement"]: row for row in rows if row["kind"] == "cold_import"},
        "lambda_invocations": [row for row in rows if row["kind"] == "lambda_invocation"],
        "fanout": [row for row in rows if row["kind"] == "fanout"],
    }
    results["targets"] = evaluate_targets(results)
    return results


def _row(results: dict[str, Any], kind: str, mode: str, major: int, size: int) -> Any:
    """The measurement of `kind` in `mode` on that server at that size, or None."""
    wanted = (kind, mode, major, size)
    rows = results["measurements"]
    return next(
        (r for r in rows if (r["kind"], r["mode"], r["major"], r["sessions"]) == wanted), None
    )


def _median(results: dict[str, Any], kind: str, mode: str, major: int, size: int) -> float | None:
    row = _row(results, kind, mode, major, size)
    return None if row is None else float(row["median"])


def _servers(results: dict[str, Any]) -> list[tuple[int, str]]:
    rows = results["measurements"] + results["lambda_invocations"]
    return sorted({(row["major"], row["server"]) for row in rows}, reverse=True)


def _target(
    name: str, server: str | None, value: float | None, limit: float, detail: str
) -> dict[str, Any]:
    met = None if value is None else value <= limit
    return {"name": name, "server": server, "met": met, "value": value, "detail": detail}


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target, per server where it applies; `met` None when this run did not measure it."""
    targets = []
    cold = results["cold_start"]
    if "handler" in cold and "floor" in cold:
        handler, floor = cold["handler"]["median"], cold["floor"]["median"]
        name = f"handler cold import within {RATIO_LIMIT}x of `import psycopg, boto3`"
        detail = f"{_ms(handler)} vs {_ms(floor)} = {handler / floor:.2f}x"
        targets.append(_target(name, None, handler / floor, RATIO_LIMIT, detail))
    for major, label in _servers(results):
        for size in PASS_TARGET_SIZES:
            reaper = _median(results, "reaper_pass", "real", major, size)
            bare = _median(results, "bare_sql", "real", major, size)
            ratio = reaper / bare if reaper and bare else None
            detail = f"{_ms(reaper)} vs {_ms(bare)} = {ratio:.2f}x" if reaper and bare else ""
            name = f"pass at {size:,} sessions within {RATIO_LIMIT}x the bare statement"
            targets.append(_target(name, label, ratio, RATIO_LIMIT, detail or "not measured"))
        rss = [
            row["invocation"]["peak_rss_kib"] / 1024
            for row in results["lambda_invocations"]
            if row["major"] == major and row["sessions"] == RSS_TARGET_SIZE
        ]
        name = f"peak RSS of a Lambda pass over {RSS_TARGET_SIZE:,} sessions < {RSS_LIMIT_MIB} MiB"
        value = rss[0] if rss else None
        detail = f"{value:.1f} MiB" if value is not None else "not measured"
        targets.append(_target(name, label, value, RSS_LIMIT_MIB, detail))
    return [*targets, _fanout_target(results["fanout"])]


def _fanout_target(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """All fan-out servers in one invocation against the slowest of them alone."""
    alone = [row for row in rows if len(row["targets"]) == 1]
    together = [row for row in rows if len(row["targets"]) > 1]
    if not (alone and together):
        return _target(FANOUT_NAME, None, None, FANOUT_LIMIT, "not measured")
    (everything,), slowest = together, max(alone, key=lambda row: row["median"])
    ratio = everything["median"] / slowest["median"]
    detail = (
        f"{len(alone)} servers x {everything['sessions']} sessions: {_ms(everything['median'])}"
        f" vs {_ms(slowest['median'])} ({slowest['targets'][0]}) = {ratio:.2f}x; reaper CPU"
        f" {_ms(everything['medians']['reaper_cpu'] / len(alone))} per target"
    )
    return _target(FANOUT_NAME, everything["server"], ratio, FANOUT_LIMIT, detail)


def read_handler_output(output: str) -> dict[str, Any]:
    """The distinct EMF metrics (name and dimensions) and the log bytes by kind, from the log."""
    metrics: set[str] = set()
    sizes = {"audit_bytes": 0, "other_bytes": 0}
    for line in output.splitlines():
        try:
            document = json.loads(line)
        except json.JSONDecodeError:
            document = None
        if not isinstance(document, dict):
            document = {}
        kind = "audit_bytes" if document.get("audit") == "session" else "other_bytes"
        sizes[kind] += len(line.encode()) + 1
        for metric_set in document.get("_aws", {}).get("CloudWatchMetrics", []):
            for names in metric_set.get("Dimensions", []):
                dimensions = ",".join(f"{name}={document.get(name)}" for name in names)
                metrics.update(f"{m['Name']}[{dimensions}]" for m in metric_set.get("Metrics", []))
    return {"metrics": sorted(metrics), **sizes}


def format_report(results: dict[str, Any]) -> str:
    """The ratio table, the pass's steps, the cold start, the targets and the costs, as text."""
    lines = ["median   reaper pass / bare SQL (in-process)   reaper run / psql -c (processes)"]
    for major, _label in _servers(results):
        sizes = sorted({r["sessions"] for r in results["measurements"] if r["major"] == major})
        for size in sizes:
            for mode in ("dry", "real"):
                cells = [f"PG {major} {size:>6,} {mode:<4}"]
                for reaper, bare in PAIRS:
                    a, b = (_median(results, k, mode, major, size) for k in (reaper, bare))
                    ratio = f"{a / b:5.2f}x" if a and b else "  n/a"
                    cells.append(f"{_ms(a):>10} {_ms(b):>10} {ratio}")
                lines.append("   ".join(cells))
            steps = _row(results, "reaper_pass", "real", major, size)
            if steps:
                parts = ", ".join(f"{k} {_ms(value)}" for k, value in steps["medians"].items())
                lines.append(f"    pass steps (real): {parts}")
    cold = results["cold_start"]
    if cold:
        parts = ", ".join(f"{name} {_ms(row['median'])}" for name, row in cold.items())
        lines.append(f"cold import (median): {parts}")
    for row in results["lambda_invocations"]:
        run = row["invocation"]
        lines.append(
            f"Lambda invocation, {row['server']}, {row['sessions']:,} sessions: handler "
            f"{_ms(run['invoke_seconds'])} (CPU {_ms(run['invoke_cpu_seconds'])}), INIT "
            f"{_ms(run['init_seconds'])}, peak RSS {run['peak_rss_kib'] / 1024:.1f} MiB, "
            f"{len(run['metrics'])} EMF metrics, log {run['audit_bytes'] + run['other_bytes']:,} B"
        )
    if results["fanout"]:
        parts = ", ".join(
            f"{row['targets'][0] if len(row['targets']) == 1 else 'all'} {_ms(row['median'])}"
            f" (CPU {_ms(row['medians']['reaper_cpu'])})"
            for row in results["fanout"]
        )
        lines.append(f"fan-out, one invocation (median, reaper CPU): {parts}")
    lines.append("Targets")
    for target in results["targets"]:
        status = {True: "MET", False: "MISSED", None: "NOT MEASURED"}[target["met"]]
        where = f" [{target['server']}]" if target["server"] else ""
        lines.append(f"  {status:<12} {target['name']}{where}: {target['detail']}")
    return "\n".join(lines)


def plot_pass_time(results: dict[str, Any], path: Path) -> None:
    """A log-log PNG of pass time against sessions: reaper vs bare SQL, per major and mode."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed, and none is touched
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for axis, mode in zip(axes, ("real", "dry"), strict=True):
        for colour, (major, _label) in enumerate(_servers(results)):
            for kind, style in (("reaper_pass", "-"), ("bare_sql", "--")):
                rows = sorted(
                    (r["sessions"], r["median"])
                    for r in results["measurements"]
                    if (r["kind"], r["mode"], r["major"]) == (kind, mode, major)
                )
                if rows:
                    sizes, medians = zip(*rows, strict=True)
                    label = f"PG {major} {kind}"
                    axis.plot(sizes, medians, style, marker="o", color=f"C{colour}", label=label)
        axis.set_xscale("log")
        axis.set_yscale("log")
        ticks = sorted({r["sessions"] for r in results["measurements"]})
        axis.set_xticks(ticks, [f"{size:,}" for size in ticks])
        axis.minorticks_off()
        axis.set_title("real mode (terminates)" if mode == "real" else "dry run")
        axis.set_xlabel("idle Lambda sessions")
        axis.grid(visible=True, which="both", alpha=0.3)
    axes[0].set_ylabel("seconds (median, incl. connect)")
    axes[0].legend(fontsize="small")
    figure.suptitle("idle-reaper pass vs the bare SQL statement")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return f"{seconds * 1000:,.0f} ms" if seconds >= 0.1 else f"{seconds * 1000:.1f} ms"
