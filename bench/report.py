"""From pytest-benchmark's JSON to the bench's outputs: `build_results` (results.json, with
every target met or missed), `format_report` (the printed report), `plot_pass_time` (the PNG).
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
LEARNING_TARGET_SIZE = 4_000
LEARNING_SHARE_LIMIT = 0.05  # the `learn` step of a pass with a history / the whole pass
PAIRS = (("reaper_pass", "bare_sql"), ("reaper_cli", "psql"))


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
        "planner": [row for row in rows if row["kind"] == "plan"],
        "learning": [row for row in rows if row["kind"] == "reaper_pass_learning"],
    }
    results["targets"] = evaluate_targets(results)
    return results


def _rows(rows: list[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    return [row for row in rows if all(row[key] == value for key, value in match.items())]


def _median(results: dict[str, Any], kind: str, mode: str, major: int, size: int) -> float | None:
    rows = _rows(results["measurements"], kind=kind, mode=mode, major=major, sessions=size)
    return float(rows[0]["median"]) if rows else None


def _servers(results: dict[str, Any]) -> list[tuple[int, str]]:
    rows = results["measurements"] + results["lambda_invocations"] + results["learning"]
    return sorted({(row["major"], row["server"]) for row in rows}, reverse=True)


def _target(name: str, server: str | None, limit: float, value: float | None, detail: str) -> Any:
    met = None if value is None else value <= limit
    detail = detail or "not measured"
    return {"name": name, "server": server, "met": met, "value": value, "detail": detail}


def _ratio(value: float | None, against: float | None) -> tuple[float | None, str]:
    """`value / against` and "value vs against = ratio", or (None, "") when one is missing."""
    if not (value and against):
        return None, ""
    return value / against, f"{_ms(value)} vs {_ms(against)} = {value / against:.2f}x"


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target, per server where it applies; `met` None when this run did not measure it."""
    cold = {name: row["median"] for name, row in results["cold_start"].items()}
    name = f"handler cold import within {RATIO_LIMIT}x of `import psycopg, boto3`"
    targets = [_target(name, None, RATIO_LIMIT, *_ratio(cold.get("handler"), cold.get("floor")))]
    for major, label in _servers(results):
        for size in PASS_TARGET_SIZES:
            reaper = _median(results, "reaper_pass", "real", major, size)
            bare = _median(results, "bare_sql", "real", major, size)
            name = f"pass at {size:,} sessions within {RATIO_LIMIT}x the bare statement"
            targets.append(_target(name, label, RATIO_LIMIT, *_ratio(reaper, bare)))
        rss = [
            row["invocation"]["peak_rss_kib"] / 1024
            for row in _rows(results["lambda_invocations"], major=major, sessions=RSS_TARGET_SIZE)
        ]
        name = f"peak RSS of a Lambda pass over {RSS_TARGET_SIZE:,} sessions < {RSS_LIMIT_MIB} MiB"
        detail = f"{rss[0]:.1f} MiB" if rss else ""
        targets.append(_target(name, label, RSS_LIMIT_MIB, rss[0] if rss else None, detail))
        targets.append(_learning_target(results, major, label))
    # The fan-out: all its servers in one invocation against the slowest of them alone.
    alone = [row for row in results["fanout"] if len(row["targets"]) == 1]
    slowest: dict[str, Any] = max(alone, key=lambda row: row["median"], default={})
    together: dict[str, Any] = next((r for r in results["fanout"] if len(r["targets"]) > 1), {})
    ratio, detail = _ratio(together.get("median"), slowest.get("median"))
    if ratio:
        cpu = together["medians"]["reaper_cpu"] / len(alone)
        detail += f" (slowest: {slowest['targets'][0]}; {len(alone)} servers x"
        detail += f" {together['sessions']} sessions; reaper CPU {_ms(cpu)} per target)"
    name = f"one invocation over all fan-out servers within {FANOUT_LIMIT}x the slowest alone"
    return [*targets, _target(name, together.get("server"), FANOUT_LIMIT, ratio, detail)]


def _learning_target(results: dict[str, Any], major: int, label: str) -> dict[str, Any]:
    """Remembering sessions (the learn step) as a share of the whole pass, real mode; the dry
    run's share (the same work in a much shorter pass) goes in the detail."""
    shares: dict[str, tuple[float, float, float]] = {}
    for row in _rows(results["learning"], major=major, sessions=LEARNING_TARGET_SIZE):
        learn = row["medians"].get("learn")
        if learn and row["median"]:
            shares[row["mode"]] = (learn / row["median"], learn, row["median"])
    detail = "; ".join(
        f"{mode}: learn {_ms(learn)} of a {_ms(whole)} pass = {share:.1%}"
        for mode, (share, learn, whole) in sorted(shares.items(), reverse=True)
    )
    name = (
        f"remembering sessions at most {LEARNING_SHARE_LIMIT:.0%} of a pass at "
        f"{LEARNING_TARGET_SIZE:,} sessions"
    )
    real = shares.get("real")
    target: dict[str, Any] = _target(
        name, label, LEARNING_SHARE_LIMIT, None if real is None else real[0], detail
    )
    return target


def read_handler_output(output: str) -> dict[str, Any]:
    """The distinct EMF metrics (name and dimensions) and the log bytes by kind, from the log."""
    metrics: set[str] = set()
    sizes = {"audit_bytes": 0, "other_bytes": 0}
    for line in output.splitlines():
        try:
            document = json.loads(line)
        except json.JSONDecodeError:
            document = {}
        document = document if isinstance(document, dict) else {}
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
        sizes = sorted({row["sessions"] for row in _rows(results["measurements"], major=major)})
        for size in sizes:
            for mode in ("dry", "real"):
                cells = [f"PG {major} {size:>6,} {mode:<4}"]
                for reaper, bare in PAIRS:
                    a, b = (_median(results, k, mode, major, size) for k in (reaper, bare))
                    ratio = f"{a / b:5.2f}x" if a and b else "  n/a"
                    cells.append(f"{_ms(a):>10} {_ms(b):>10} {ratio}")
                lines.append("   ".join(cells))
            wanted = {"kind": "reaper_pass", "mode": "real", "major": major, "sessions": size}
            for steps in _rows(results["measurements"], **wanted):
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
    for row in results.get("planner", []):
        lines.append(
            f"plan() alone, {row['rules']} rules over {row['sessions']:,} sessions: "
            f"{_ms(row['median'])} (median)"
        )
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
                wanted = _rows(results["measurements"], kind=kind, mode=mode, major=major)
                rows = sorted((row["sessions"], row["median"]) for row in wanted)
                if rows:
                    sizes, medians = zip(*rows, strict=True)
                    label = f"PG {major} {kind}"
                    axis.plot(sizes, medians, style, marker="o", color=f"C{colour}", label=label)
        title = "real mode (terminates)" if mode == "real" else "dry run"
        axis.set(xscale="log", yscale="log", title=title, xlabel="idle Lambda sessions")
        ticks = sorted({r["sessions"] for r in results["measurements"]})
        axis.set_xticks(ticks, [f"{size:,}" for size in ticks])
        axis.minorticks_off()
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
