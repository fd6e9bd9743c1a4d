"""The benchmark's outputs: targets met or missed, the printed tables, JSON, the plot, Markdown.

Pure functions of the results dict that `bench.suite.run_suite` returns, except the two writers.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from bench.cost import lambda_cost, observability_cost

if TYPE_CHECKING:
    from pathlib import Path

RATIO_LIMIT = 1.2
RSS_LIMIT_MIB = 128  # the smallest Lambda memory size (MB in Lambda's console are MiB)
PASS_TARGET_SIZES = (1_000, 4_000)
RSS_TARGET_SIZE = 4_000

_COLUMNS = (
    ("reaper_pass", "bare_sql", "reaper pass", "bare SQL"),
    ("reaper_cli", "psql", "reaper run", "psql -c"),
)


# -- targets -----------------------------------------------------------------------------------


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target, per server where it applies: the numbers and whether it is met.

    `met` is None when the run did not measure it (e.g. --quick leaves out 4,000 sessions).
    """
    targets: list[dict[str, Any]] = []
    for server in results["servers"]:
        by_size = {entry["sessions"]: entry for entry in server["sizes"]}
        for size in PASS_TARGET_SIZES:
            name = f"pass at {size:,} sessions within {RATIO_LIMIT}x the bare statement"
            entry = by_size.get(size)
            if entry is None:
                targets.append(_unmeasured(name, server))
                continue
            real = _ratio(entry, "reaper_pass", "bare_sql", "real")
            dry = _ratio(entry, "reaper_pass", "bare_sql", "dry")
            work = cpu_work(entry, "real")
            work_note = (
                ""
                if work is None
                else f"; CPU work, client + server: {_ms(work['reaper_pass'])} vs "
                f"{_ms(work['bare_sql'])} = {work['ratio']:.2f}x"
            )
            targets.append(
                {
                    "name": name,
                    "server": server["label"],
                    "met": real["ratio"] <= RATIO_LIMIT,
                    "detail": (
                        f"real {_ms(real['reaper'])} vs {_ms(real['bare'])} = "
                        f"{real['ratio']:.2f}x (dry run, not a target: {_ms(dry['reaper'])} vs "
                        f"{_ms(dry['bare'])} = {dry['ratio']:.2f}x){work_note}"
                    ),
                    "value": real["ratio"],
                    "limit": RATIO_LIMIT,
                }
            )
        name = f"peak RSS of a Lambda pass over {RSS_TARGET_SIZE:,} sessions < {RSS_LIMIT_MIB} MiB"
        entry = by_size.get(RSS_TARGET_SIZE)
        if entry is None:
            targets.append(_unmeasured(name, server))
        else:
            invocation = entry["lambda_invocation"]
            rss_mib = invocation["peak_rss_kib"] / 1024
            targets.append(
                {
                    "name": name,
                    "server": server["label"],
                    "met": rss_mib < RSS_LIMIT_MIB,
                    "detail": f"{rss_mib:.1f} MiB (via {invocation['mode']})",
                    "value": rss_mib,
                    "limit": RSS_LIMIT_MIB,
                }
            )
    cold = results["cold_start"]["median"]
    ratio = cold["handler"] / cold["floor"]
    targets.insert(
        0,
        {
            "name": f"handler cold import within {RATIO_LIMIT}x of importing psycopg + boto3",
            "server": None,
            "met": ratio <= RATIO_LIMIT,
            "detail": (
                f"import {results['cold_start']['handler_module']} {_ms(cold['handler'])} vs "
                f"{_ms(cold['floor'])} = {ratio:.2f}x"
            ),
            "value": ratio,
            "limit": RATIO_LIMIT,
        },
    )
    return targets


def _unmeasured(name: str, server: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "server": server["label"],
        "met": None,
        "detail": "not measured in this run",
        "value": None,
        "limit": None,
    }


def _ratio(entry: dict[str, Any], reaper: str, bare: str, mode: str) -> dict[str, float]:
    measurements = entry["measurements"]
    reaper_seconds = measurements[f"{reaper}_{mode}"]["median"]
    bare_seconds = measurements[f"{bare}_{mode}"]["median"]
    return {"reaper": reaper_seconds, "bare": bare_seconds, "ratio": reaper_seconds / bare_seconds}


# -- costs -------------------------------------------------------------------------------------


def monthly_costs(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Lambda and CloudWatch cost per month per server and fleet size, from the invocations."""
    costs = []
    for server in results["servers"]:
        for entry in server["sizes"]:
            invocation = entry["lambda_invocation"]
            log = invocation["log"]
            costs.append(
                {
                    "server": server["label"],
                    "sessions": entry["sessions"],
                    "peak_rss_mib": invocation["peak_rss_kib"] / 1024,
                    "lambda": lambda_cost(
                        invoke_seconds=invocation["invoke_seconds"],
                        invoke_cpu_seconds=invocation["invoke_cpu_seconds"],
                        init_seconds=invocation["init_seconds"],
                    ),
                    # Worst case: every pass terminates the whole fleet and logs each session.
                    "observability_every_pass_reaps_all": observability_cost(
                        len(log["metrics"]), log["session_audit_bytes"] + log["other_bytes"]
                    ),
                    "observability_nothing_to_reap": observability_cost(
                        len(log["metrics"]), log["other_bytes"]
                    ),
                }
            )
    return costs


# -- text --------------------------------------------------------------------------------------


def format_results(results: dict[str, Any]) -> str:
    """The whole printed report: time tables, pass steps, cold start, targets, costs."""
    parts = [
        format_time_table(results),
        format_steps(results),
        format_cpu_work(results),
        format_cold_start(results),
    ]
    parts.append(format_targets(results["targets"]))
    parts.append(format_costs(results["costs"]))
    return "\n\n".join(parts)


def format_time_table(results: dict[str, Any]) -> str:
    """Medians per server, size and mode; ratio = reaper / bare (lower is better)."""
    headers = ["server", "sessions", "mode"]
    for _reaper, _bare, reaper_label, bare_label in _COLUMNS:
        headers += [reaper_label, bare_label, "ratio"]
    headers.append("open fleet")
    rows = []
    for server in results["servers"]:
        for entry in server["sizes"]:
            for mode in ("dry", "real"):
                row = [f"PG {server['major']}", f"{entry['sessions']:,}", mode]
                for reaper, bare, _reaper_label, _bare_label in _COLUMNS:
                    ratio = _ratio(entry, reaper, bare, mode)
                    row += [_ms(ratio["reaper"]), _ms(ratio["bare"]), f"{ratio['ratio']:.2f}x"]
                opening = entry["open_seconds"]
                row.append(f"{sum(opening) / len(opening):.1f} s")
                rows.append(row)
    title = (
        "Time of one reap (median; in-process = fresh connection + statement(s) + close, "
        "process = program start to exit)"
    )
    return title + "\n" + _table(headers, rows)


def format_steps(results: dict[str, Any]) -> str:
    """Where the reaper's pass spends its time, real mode, next to the bare statement's parts."""
    step_names: list[str] = []
    for server in results["servers"]:
        for entry in server["sizes"]:
            for name in entry["measurements"]["reaper_pass_real"].get("steps_median", {}):
                if name not in step_names:
                    step_names.append(name)
    headers = ["server", "sessions", *step_names, "| bare: connect", "statement", "close"]
    rows = []
    for server in results["servers"]:
        for entry in server["sizes"]:
            steps = entry["measurements"]["reaper_pass_real"].get("steps_median", {})
            bare = entry["measurements"]["bare_sql_real"].get("steps_median", {})
            rows.append(
                [
                    f"PG {server['major']}",
                    f"{entry['sessions']:,}",
                    *(_ms(steps.get(name, 0.0)) for name in step_names),
                    "| " + _ms(bare.get("connect", 0.0)),
                    _ms(bare.get("statement", 0.0)),
                    _ms(bare.get("close", 0.0)),
                ]
            )
    return "Reaper pass by step, real mode (median ms)\n" + _table(headers, rows)


def cpu_work(entry: dict[str, Any], mode: str) -> dict[str, float] | None:
    """Median CPU seconds of one reap, client + server backend, reaper vs bare; None if unknown."""
    work = {}
    for kind in ("reaper_pass", "bare_sql"):
        summary = entry["measurements"][f"{kind}_{mode}"]
        if "server_cpu_median" not in summary:
            return None
        work[kind] = summary["client_cpu_median"] + summary["server_cpu_median"]
    return {**work, "ratio": work["reaper_pass"] / work["bare_sql"]}


def format_cpu_work(results: dict[str, Any]) -> str:
    """CPU work of each side (client process + server backend) and the backend's queueing."""
    headers = [
        "server",
        "sessions",
        "mode",
        "reaper: client CPU",
        "server CPU",
        "server queued",
        "| bare: client CPU",
        "server CPU",
        "server queued",
        "work ratio",
    ]
    rows = []
    for server in results["servers"]:
        for entry in server["sizes"]:
            for mode in ("dry", "real"):
                reaper = entry["measurements"][f"reaper_pass_{mode}"]
                bare = entry["measurements"][f"bare_sql_{mode}"]
                work = cpu_work(entry, mode)
                rows.append(
                    [
                        f"PG {server['major']}",
                        f"{entry['sessions']:,}",
                        mode,
                        _ms(reaper.get("client_cpu_median", 0.0)),
                        _ms(reaper.get("server_cpu_median", 0.0)),
                        _ms(reaper.get("server_runqueue_median", 0.0)),
                        "| " + _ms(bare.get("client_cpu_median", 0.0)),
                        _ms(bare.get("server_cpu_median", 0.0)),
                        _ms(bare.get("server_runqueue_median", 0.0)),
                        f"{work['ratio']:.2f}x" if work else "n/a",
                    ]
                )
    return (
        "CPU work per reap (median ms; server = the session's backend after login, from "
        "/proc/<pid>/schedstat;\nqueued = waiting for a CPU, mostly behind the terminated "
        "backends' exits)\n" + _table(headers, rows)
    )


def format_cold_start(results: dict[str, Any]) -> str:
    """Cold import medians, the no-bytecode variant, and the slowest imports."""
    cold = results["cold_start"]
    median = cold["median"]
    uncached = cold["without_bytecode"]["median"]
    lines = [
        f"Cold start (median of {cold['runs']} fresh interpreters)",
        f"  import {cold['handler_module']}: {_ms(median['handler'])}   "
        f"import psycopg, boto3 (floor): {_ms(median['floor'])}   python -c pass: "
        f"{_ms(median['interpreter'])}",
        f"  + pydantic, pydantic-settings, Powertools Logger/Metrics/parameters (the handler's "
        f"libraries, reference): {_ms(median['libraries'])} = "
        f"{median['libraries'] / median['floor']:.2f}x the floor",
        f"  without any .pyc (upper bound for a package built --no-compile): handler "
        f"{_ms(uncached['handler'])}, floor {_ms(uncached['floor'])}",
        "  slowest imports (cumulative, nested):",
    ]
    lines += [
        f"    {'  ' * item['depth']}{item['module']}: {_ms(item['cumulative_seconds'])}"
        for item in cold["handler_profile"]["slowest_imports"][:10]
    ]
    return "\n".join(lines)


def format_targets(targets: list[dict[str, Any]]) -> str:
    """One line per target: MET / MISSED / NOT MEASURED, what, where, the numbers."""
    lines = ["Targets"]
    for target in targets:
        status = {True: "MET", False: "MISSED", None: "NOT MEASURED"}[target["met"]]
        where = f" [{target['server']}]" if target["server"] else ""
        lines.append(f"  {status:<12} {target['name']}{where}: {target['detail']}")
    return "\n".join(lines)


def format_costs(costs: list[dict[str, Any]]) -> str:
    """Monthly cost per server and size at rate(5 minutes)."""
    headers = [
        "server",
        "sessions",
        "handler",
        "peak RSS",
        "Lambda/month",
        "CPU-scaled",
        "+all cold",
        "metrics",
        "metrics/month",
        "logs/month (reap all)",
    ]
    rows = []
    for cost in costs:
        lam = cost["lambda"]
        obs = cost["observability_every_pass_reaps_all"]
        rows.append(
            [
                cost["server"].removeprefix("embedded ").removeprefix("Debian "),
                f"{cost['sessions']:,}",
                _ms(lam["duration_seconds_measured"]),
                f"{cost['peak_rss_mib']:.0f} MiB",
                f"${lam['total_usd_measured']:.4f}",
                f"${lam['requests_usd'] + lam['compute_usd_cpu_scaled']:.4f}",
                f"${lam['total_usd_upper']:.4f}",
                str(obs["distinct_metrics"]),
                f"${obs['metrics_usd']:.2f}",
                f"${obs['logs_usd']:.2f}",
            ]
        )
    return (
        "Cost per month at rate(5 minutes) = 8,640 invocations, arm64, 256 MB, us-east-1 "
        "(one target)\n" + _table(headers, rows)
    )


def markdown_tables(results: dict[str, Any]) -> str:
    """The time table and the targets as Markdown, for docs/benchmarks.md."""
    lines = [
        "| PG | sessions | mode | reaper pass | bare SQL | ratio | reaper run | psql -c | ratio |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for server in results["servers"]:
        for entry in server["sizes"]:
            for mode in ("dry", "real"):
                cells = [str(server["major"]), f"{entry['sessions']:,}", mode]
                for reaper, bare, _reaper_label, _bare_label in _COLUMNS:
                    ratio = _ratio(entry, reaper, bare, mode)
                    cells += [_ms(ratio["reaper"]), _ms(ratio["bare"]), f"{ratio['ratio']:.2f}x"]
                lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| target | server | result | numbers |", "|---|---|---|---|"]
    for target in results["targets"]:
        status = {True: "**met**", False: "**missed**", None: "not measured"}[target["met"]]
        lines.append(
            f"| {target['name']} | {target['server'] or '-'} | {status} | {target['detail']} |"
        )
    return "\n".join(lines)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def _ms(seconds: float) -> str:
    milliseconds = seconds * 1000
    if milliseconds >= 100:
        return f"{milliseconds:,.0f} ms"
    return f"{milliseconds:.1f} ms"


# -- files -------------------------------------------------------------------------------------


def write_json(results: dict[str, Any], path: Path) -> None:
    """Write the results, indented, to `path`."""
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


def plot_pass_time(results: dict[str, Any], path: Path) -> None:
    """A log-log PNG of pass time against sessions: reaper vs bare SQL, per major and mode."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed, and none is touched
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for axis, mode, title in zip(
        axes, ("real", "dry"), ("real mode (terminates)", "dry run"), strict=True
    ):
        for colour, server in zip(colours, results["servers"], strict=False):
            sizes = [entry["sessions"] for entry in server["sizes"]]
            for kind, style, label in (
                ("reaper_pass", "-", "reaper pass"),
                ("bare_sql", "--", "bare SQL"),
            ):
                medians = [
                    entry["measurements"][f"{kind}_{mode}"]["median"] for entry in server["sizes"]
                ]
                axis.plot(
                    sizes,
                    medians,
                    linestyle=style,
                    marker="o",
                    color=colour,
                    label=f"PG {server['major']} {label}",
                )
        axis.set_xscale("log")
        axis.set_yscale("log")
        sizes = sorted({e["sessions"] for server in results["servers"] for e in server["sizes"]})
        axis.set_xticks(sizes, [f"{size:,}" for size in sizes])
        axis.minorticks_off()
        axis.set_title(title)
        axis.set_xlabel("idle Lambda sessions")
        axis.grid(visible=True, which="both", alpha=0.3)
    axes[0].set_ylabel("seconds (median, incl. connect)")
    axes[0].legend(fontsize="small")
    figure.suptitle("idle-reaper pass vs the bare SQL statement")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
