"""`python -m bench` (`make bench`): run the measurements, then write JSON, a plot and verdicts.

The measurements are pytest-benchmark tests (bench/test_reaping.py, bench/pytest.ini); every
argument goes to pytest, e.g. `--bench-sizes 100,1000 --bench-majors 18 --bench-rounds 3` or
`-k cold_import` (`--help` lists them). pytest-benchmark's JSON then becomes results.json and
pass_time.png in bench/ (or --bench-output-dir), and each target is printed as met or missed.
Exit codes: 0 done (a missed target is reported, not a failure), 1 the benchmark could not
measure (a server did not start, a run acted on other sessions than the fleet), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
from pathlib import Path

import pytest

from bench.report import build_results, format_report, plot_pass_time

BENCH_DIR = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    """Run pytest on the bench, then report; returns the exit code."""
    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C: servers stopped, the fleet ended.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    # The one bench option this process needs; pytest (bench/conftest.py) declares them all.
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--bench-output-dir", type=Path, default=BENCH_DIR)
    output_dir = options.parse_known_args(argv)[0].bench_output_dir
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        raw_path = Path(scratch) / "pytest-benchmark.json"
        config = [str(BENCH_DIR), "-c", str(BENCH_DIR / "pytest.ini")]
        code = pytest.main([*config, f"--benchmark-json={raw_path}", *argv])
        if code == pytest.ExitCode.INTERRUPTED:
            return 130
        if code != pytest.ExitCode.OK or not raw_path.exists():
            return 0 if "--help" in argv else 1
        raw = json.loads(raw_path.read_text(encoding="utf-8"))
    results = build_results(raw)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, plot_path = output_dir / "results.json", output_dir / "pass_time.png"
    json_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    plot_pass_time(results, plot_path)
    print(f"\n{format_report(results)}\n\nwrote {json_path} and {plot_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
