"""`python -m bench` (`make bench`): run the benchmark, print the tables, write JSON and a plot.

Exit codes: 0 done (targets missed are reported, not failures), 1 the benchmark could not
measure (a server did not start, a run acted on the wrong sessions), 130 interrupted.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

DEFAULT_SIZES = (100, 1_000, 4_000)
QUICK_SIZES = (100, 1_000)
DEFAULT_MAJORS = (18, 15)
OUTPUT_DIR = Path(__file__).resolve().parent


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the flags, run the suite, report; returns the exit code."""
    args = _parser().parse_args(argv)
    # Imported after parsing, so --help answers without loading psycopg and the product.
    from bench import report
    from bench.errors import BenchError
    from bench.suite import BenchOptions, run_suite
    from reaper.errors import LocalPostgresError

    options = BenchOptions(
        sizes=QUICK_SIZES if args.quick else tuple(args.sizes),
        majors=tuple(args.majors),
        repetitions=args.repetitions,
        concurrency=args.concurrency,
        cold_start_runs=args.cold_start_runs,
        output_dir=args.output_dir,
        pin_cpus=args.pin_cpus,
    )
    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C: servers stopped, workers ended.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        results = run_suite(options)
    except KeyboardInterrupt:
        print("\nbench: interrupted; servers stopped and sessions closed", file=sys.stderr)
        return 130
    except (BenchError, LocalPostgresError) as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 1
    results["targets"] = report.evaluate_targets(results)
    results["costs"] = report.monthly_costs(results)
    options.output_dir.mkdir(parents=True, exist_ok=True)
    json_path = options.output_dir / "results.json"
    plot_path = options.output_dir / "pass_time.png"
    report.write_json(results, json_path)
    report.plot_pass_time(results, plot_path)
    print("\n" + report.format_results(results))
    if args.markdown:
        print("\n" + report.markdown_tables(results))
    print(f"\nwrote {json_path} and {plot_path} in {results['total_seconds']:.0f} s")
    return 0


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("sizes must be positive integers, e.g. 100,1000")
    return sizes


def _majors(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of majors: {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Time idle-reaper against the bare SQL statement on throwaway PostgreSQL "
        "servers; writes bench/results.json and bench/pass_time.png.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="100 and 1,000 sessions only (overrides --sizes)"
    )
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=list(DEFAULT_SIZES),
        metavar="N,N",
        help="fleet sizes (default 100,1000,4000)",
    )
    parser.add_argument(
        "--majors",
        type=_majors,
        default=list(DEFAULT_MAJORS),
        metavar="M,M",
        help="PostgreSQL majors, skipped when not installed (default 18,15)",
    )
    parser.add_argument(
        "--repetitions",
        type=int,
        default=None,
        metavar="N",
        help="repetitions per measurement (default 5 up to 1,000 sessions, 3 above)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=64,
        metavar="N",
        help="sessions opened at once (default 64)",
    )
    parser.add_argument(
        "--cold-start-runs",
        type=int,
        default=7,
        metavar="N",
        help="fresh interpreters per import measured (default 7)",
    )
    parser.add_argument(
        "--pin-cpus",
        action="store_true",
        help="server on CPU 0, the benchmark and its clients on CPU 1 (the reaper then does not "
        "compete with the backends it terminates, as in Lambda)",
    )
    parser.add_argument(
        "--output-dir", type=Path, default=OUTPUT_DIR, metavar="DIR", help="default: bench/"
    )
    parser.add_argument(
        "--markdown", action="store_true", help="also print the tables as Markdown (for docs/)"
    )
    return parser


if __name__ == "__main__":
    sys.exit(main())
