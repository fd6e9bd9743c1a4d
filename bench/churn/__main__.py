"""`python -m bench.churn` (`make bench-churn`): the churn benchmark, then its report.

Every scenario runs on a server of its own, at the same time as the others, on the same seeded
traffic: first the learning run (`reaper observe` on the learning seed, twice as long as a
round) beside the rounds of every scenario that does not need it; then the rounds of the
learned thresholds. Writes churn-results.json and churn-connections.png to bench/ (or
--output-dir) and prints each goal as MET or MISSED. Exit codes: 0 done (a missed goal is
reported, not a failure), 1 a run failed, 130 interrupted.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import signal
import sys
import time
from pathlib import Path
from typing import Any

from bench.churn.pgbouncer import pgbouncer_binary
from bench.churn.report import build_results, format_report, plot_connections
from bench.churn.scenarios import COMPARED, USABLE_SLOTS, Job, load_average, run_job

BENCH_DIR = Path(__file__).resolve().parent.parent
# The learning run is this many times as long as a round: a sporadic application needs time to
# show enough idle periods.
LEARN_FACTOR = 2


def main(argv: list[str]) -> int:
    """Run the benchmark; returns the exit code."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    options = _parser().parse_args(argv)
    scenarios = [name for name in options.scenarios.split(",") if name]
    unknown = set(scenarios) - set(COMPARED)
    if unknown:
        print(f"unknown scenario(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    skipped = {}
    if "pgbouncer" in scenarios and pgbouncer_binary() is None:
        scenarios.remove("pgbouncer")
        skipped["pgbouncer"] = "pgbouncer is not installed (apt-get install -y pgbouncer)"
    started, load_before = time.monotonic(), load_average()
    try:
        runs = _run_phases(options, scenarios)
    except KeyboardInterrupt:
        return 130
    meta = {
        "seconds": options.seconds,
        "seed": options.seed,
        "learn_seed": options.learn_seed,
        "learn_seconds": options.learn_seconds or LEARN_FACTOR * options.seconds,
        "rounds": options.rounds,
        "usable_slots": USABLE_SLOTS,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_average()],
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    results = build_results(runs, skipped=skipped, meta=meta)
    output_dir: Path = options.output_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path = output_dir / "churn-results.json"
    plot_path = output_dir / "churn-connections.png"
    json_path.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    plot_connections(results, plot_path)
    print(f"{format_report(results)}\n\nwrote {json_path} and {plot_path}")
    return 0


def _run_phases(options: argparse.Namespace, scenarios: list[str]) -> list[dict[str, Any]]:
    """The learning run beside the other scenarios' rounds, then the learned rounds."""
    seconds, seed, rounds = options.seconds, options.seed, options.rounds
    others = [name for name in scenarios if name != "learned"]
    first = [Job(name, seed, r, seconds) for r in range(1, rounds + 1) for name in others]
    if "learned" in scenarios:
        learn_seconds = options.learn_seconds or LEARN_FACTOR * seconds
        first.insert(0, Job("learn", options.learn_seed, 0, learn_seconds))
    # One worker for the learning run, one per scenario: each scenario's rounds in turn.
    runs = _run_all(first, options.workers or len(others) + 1)
    learn = next((run for run in runs if run["scenario"] == "learn"), None)
    if learn is None:
        return runs
    # The history goes to the learned rounds, not into the results.
    history = learn.pop("history")
    second = [Job("learned", seed, r, seconds, history=history) for r in range(1, rounds + 1)]
    return runs + _run_all(second, options.workers or len(second))


def _run_all(jobs: list[Job], workers: int) -> list[dict[str, Any]]:
    # spawn: each job starts its own server and event loop in a clean interpreter.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return list(pool.map(run_job, jobs))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.churn", description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0, help="traffic per run (default 60)")
    parser.add_argument("--seed", type=int, default=2, help="the compared traffic (default 2)")
    parser.add_argument(
        "--learn-seed", type=int, default=1, help="the traffic learned from (default 1)"
    )
    parser.add_argument(
        "--learn-seconds", type=float, help="traffic learned from (default 2 x --seconds)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds per scenario (default 2)")
    parser.add_argument(
        "--scenarios",
        default=",".join(COMPARED),
        help=f"comma-separated, among {', '.join(COMPARED)} (default all)",
    )
    parser.add_argument(
        "--workers", type=int, help="runs at once (default: every run of a phase at once)"
    )
    parser.add_argument("--output-dir", type=Path, default=BENCH_DIR)
    return parser


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
