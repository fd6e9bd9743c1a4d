"""From the churn runs to the results document, its printed report, its goals and its plot."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

from bench.churn.traffic import HABITS, TIME_SCALE
from reaper.cli.render import table

if TYPE_CHECKING:
    from pathlib import Path

# The numbers compared, per scenario and per application (mean over rounds).
MEASURES = (
    "requests",
    "failed",
    "reconnects",
    "terminated_dead",
    "terminated_live",
    "dead_slot_seconds",
)
RECONNECT_SHARE_LIMIT = 0.10
ORACLE_FACTOR_LIMIT = 2.0


def build_results(
    runs: list[dict[str, Any]], *, skipped: dict[str, str], meta: dict[str, Any]
) -> dict[str, Any]:
    """The results document: every run, each scenario's means and spreads, and the goals."""
    scenarios: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(run["scenario"] for run in runs if run["scenario"] != "learn"):
        rounds = sorted((r for r in runs if r["scenario"] == name), key=lambda r: r["round"])
        scenarios[name] = {
            "rounds": len(rounds),
            "mean": {m: _mean(r["totals"][m] for r in rounds) for m in MEASURES},
            "spread": {m: _spread([r["totals"][m] for r in rounds]) for m in MEASURES},
            "per_round": {m: [r["totals"][m] for r in rounds] for m in MEASURES},
            "applications": {
                habit.application: {
                    m: _mean(r["applications"][habit.application][m] for r in rounds)
                    for m in MEASURES
                }
                for habit in HABITS
            },
            "peak_connections": max(r["peak_connections"] for r in rounds),
            "pass_median_ms": _median_of(r["pass_median_ms"] for r in rounds),
            "pass_cpu_median_ms": _median_of(r["pass_cpu_median_ms"] for r in rounds),
            "passes": sum(r["passes"] for r in rounds),
        }
    learn = next((run for run in runs if run["scenario"] == "learn"), None)
    results: dict[str, Any] = {
        **meta,
        "skipped": skipped,
        "scenarios": scenarios,
        "learned_thresholds": None if learn is None else learn["learned_thresholds"],
        "runs": runs,
    }
    results["goals"] = evaluate_goals(scenarios)
    return results


def evaluate_goals(scenarios: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each goal of the learned thresholds, met or missed (None: a scenario is missing)."""
    goals = []

    def mean(name: str, measure: str) -> float | None:
        scenario = scenarios.get(name)
        return None if scenario is None else float(scenario["mean"][measure])

    learned_reconnects = mean("learned", "reconnects")
    for baseline in ("idle_session_timeout", "one_threshold"):
        other = mean(baseline, "reconnects")
        limit = None if other is None else RECONNECT_SHARE_LIMIT * other
        goals.append(
            _goal(
                f"reconnects at most 10% of {baseline}'s",
                learned_reconnects,
                limit,
                other,
            )
        )
    learned_dead = mean("learned", "dead_slot_seconds")
    one = mean("one_threshold", "dead_slot_seconds")
    goals.append(
        _goal("dead sessions' slot-seconds at most one_threshold's", learned_dead, one, one)
    )
    oracle = mean("oracle", "dead_slot_seconds")
    goals.append(
        _goal(
            "dead sessions' slot-seconds within 2x the oracle's",
            learned_dead,
            None if oracle is None else ORACLE_FACTOR_LIMIT * oracle,
            oracle,
        )
    )
    learned = scenarios.get("learned")
    timeout = scenarios.get("idle_session_timeout")
    limit = None
    if learned is not None and timeout is not None:
        spread = max(learned["spread"]["failed"], timeout["spread"]["failed"])
        limit = timeout["mean"]["failed"] + spread
    goals.append(
        _goal(
            "failed requests no more than idle_session_timeout's (within the rounds' spread)",
            mean("learned", "failed"),
            limit,
            mean("idle_session_timeout", "failed"),
        )
    )
    return goals


def _goal(
    name: str, measured: float | None, limit: float | None, baseline: float | None
) -> dict[str, Any]:
    met = None if measured is None or limit is None else measured <= limit + 1e-9
    return {"name": name, "measured": measured, "limit": limit, "baseline": baseline, "met": met}


def format_report(results: dict[str, Any]) -> str:
    """The report printed at the end of a run."""
    scenarios = results["scenarios"]
    seconds = results["seconds"]
    lines = [
        f"Churn benchmark: {seconds:g} s of traffic per run ({seconds * TIME_SCALE / 60:.0f} "
        f"minutes of a fleet at {TIME_SCALE}x), seed {results['seed']} "
        f"(learned on seed {results['learn_seed']}), {results['rounds']} round(s); "
        f"{results['usable_slots']} usable slots; load average {results['load_average_before']}"
        f" -> {results['load_average_after']}",
        "",
        table(
            (
                "scenario",
                "failed",
                "reconnects",
                "term. dead",
                "term. live",
                "dead slot-s",
                "peak conns",
                "pass ms",
            ),
            [
                (
                    name,
                    _rounds(s, "failed"),
                    _rounds(s, "reconnects"),
                    f"{s['mean']['terminated_dead']:.1f}",
                    f"{s['mean']['terminated_live']:.1f}",
                    _rounds(s, "dead_slot_seconds"),
                    s["peak_connections"],
                    "" if s["pass_median_ms"] is None else f"{s['pass_median_ms']:.1f}",
                )
                for name, s in scenarios.items()
            ],
        ),
        "",
        "per application (mean over rounds): failed / reconnects / dead slot-seconds",
        table(
            ("scenario", *(h.application for h in HABITS)),
            [
                (
                    name,
                    *(
                        f"{a['failed']:.1f} / {a['reconnects']:.1f} / {a['dead_slot_seconds']:.0f}"
                        for a in (s["applications"][h.application] for h in HABITS)
                    ),
                )
                for name, s in scenarios.items()
            ],
        ),
    ]
    if results.get("learned_thresholds"):
        lines += [
            "",
            "thresholds learned from the learning seed's traffic (idle, seconds): "
            + ", ".join(
                f"{app} {'static' if value is None else f'{value:.1f}'}"
                for app, value in sorted(results["learned_thresholds"].items())
            ),
        ]
    for name, reason in results["skipped"].items():
        lines.append(f"SKIPPED {name}: {reason}")
    lines += ["", "Goals of the learned thresholds:"]
    for goal in results["goals"]:
        verdict = {True: "MET", False: "MISSED", None: "NOT MEASURED"}[goal["met"]]
        measured = "n/a" if goal["measured"] is None else f"{goal['measured']:.1f}"
        limit = "n/a" if goal["limit"] is None else f"{goal['limit']:.1f}"
        lines.append(f"  {verdict:<12} {goal['name']}: {measured} (limit {limit})")
    return "\n".join(lines)


def plot_connections(results: dict[str, Any], path: Path) -> None:
    """A PNG of the fleet's connections over time, one line per scenario (first round)."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed, and none is touched
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(11, 5))
    for index, name in enumerate(results["scenarios"]):
        run = next(r for r in results["runs"] if r["scenario"] == name and r["round"] == 1)
        if run["timeline"]:
            times, counts = zip(*run["timeline"], strict=True)
            axis.plot(times, counts, label=name, color=f"C{index}", linewidth=1)
    axis.axhline(results["usable_slots"], color="black", linestyle="--", linewidth=0.8)
    axis.text(0, results["usable_slots"] + 0.5, "usable slots", fontsize="small")
    axis.set(
        xlabel=f"seconds (1 s = {TIME_SCALE} s of a real fleet)",
        ylabel="connections of the applications' role",
        title="Churn benchmark: connections over time, same traffic",
    )
    axis.grid(visible=True, alpha=0.3)
    axis.legend(fontsize="small", ncols=2, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _rounds(scenario: dict[str, Any], measure: str) -> str:
    values = scenario["per_round"][measure]
    shown = "/".join(f"{v:.0f}" for v in values)
    return f"{scenario['mean'][measure]:.1f} ({shown})" if len(values) > 1 else shown


def _mean(values: Any) -> float:
    found = list(values)
    return float(statistics.fmean(found)) if found else 0.0


def _spread(values: list[float]) -> float:
    return float(max(values) - min(values)) if values else 0.0


def _median_of(values: Any) -> float | None:
    found = [v for v in values if v is not None]
    return float(statistics.median(found)) if found else None
