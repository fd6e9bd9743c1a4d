"""The Lambda handler's cold import against its floor, each in a fresh interpreter.

A cold start imports the handler module in a new Python process. Its floor is importing the two
libraries it cannot do without, psycopg and boto3 (boto3 is in the Lambda runtime anyway); both
are timed in the same run, interleaved, from spawn to exit, so interpreter start-up is in both.
`-X importtime` of one extra run says where the handler's time goes, by top-level package.

A variant without bytecode caches shows what a package built without .pyc files pays
(scripts/build_lambda.sh installs with --no-compile, and /var/task is read-only, so Lambda
compiles those modules on every cold start). It is an upper bound: it also recompiles the
standard library, which the Lambda runtime ships compiled.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from typing import TYPE_CHECKING, Any

from bench.errors import BenchError
from bench.measure import run_timed_process

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

FLOOR_STATEMENT = "import psycopg, boto3"
# The libraries the handler is built on, for reference (not a target): what is left above this
# is the reaper's own modules, most of it pydantic building their model classes.
LIBRARIES_STATEMENT = (
    "import psycopg, boto3, pydantic, pydantic_settings; "
    "from aws_lambda_powertools import Logger, Metrics; "
    "import aws_lambda_powertools.utilities.parameters"
)
_SHOWN = 15
# Imports cheaper than this (cumulative) are left out of the profile.
_SLOW_IMPORT_US = 10_000


def measure_cold_start(
    python: Path,
    *,
    handler_module: str,
    runs: int,
    repo_root: Path,
    uncached_runs: int = 3,
) -> dict[str, Any]:
    """Time `import <handler_module>`, the floor and a bare interpreter; profile the handler.

    Returns:
        A JSON-ready dict: samples and medians (seconds), the import profile by package.

    Raises:
        BenchError: an import failed.
    """
    statements = {
        "handler": f"import {handler_module}",
        "floor": FLOOR_STATEMENT,
        "libraries": LIBRARIES_STATEMENT,
        "interpreter": "pass",
    }
    env = _environment()
    # One untimed run each: fills the page cache and writes any missing .pyc files.
    for statement in statements.values():
        _import_once(python, statement, env, repo_root)
    samples: dict[str, list[float]] = {name: [] for name in statements}
    names = list(statements)
    for run in range(runs):
        # Alternate the order so neither side always runs right after the other.
        for name in names if run % 2 == 0 else reversed(names):
            samples[name].append(_import_once(python, statements[name], env, repo_root))

    uncached: dict[str, list[float]] = {"handler": [], "floor": []}
    with tempfile.TemporaryDirectory(prefix="bench-no-pyc-") as empty_prefix:
        # An empty pycache_prefix hides every .pyc; PYTHONDONTWRITEBYTECODE keeps it empty.
        flags = ("-X", f"pycache_prefix={empty_prefix}")
        no_pyc_env = {**env, "PYTHONDONTWRITEBYTECODE": "1"}
        for _ in range(uncached_runs):
            for name, values in uncached.items():
                values.append(_import_once(python, statements[name], no_pyc_env, repo_root, flags))

    profile = _import_profile(python, statements["handler"], env, repo_root)
    return {
        "handler_module": handler_module,
        "runs": runs,
        "samples": samples,
        "median": {name: statistics.median(values) for name, values in samples.items()},
        "without_bytecode": {
            "samples": uncached,
            "median": {name: statistics.median(values) for name, values in uncached.items()},
        },
        "handler_profile": profile,
    }


def _environment() -> dict[str, str]:
    # No PYTHON* variables from the caller's shell (PYTHONPATH, PYTHONDONTWRITEBYTECODE...).
    return {name: value for name, value in os.environ.items() if not name.startswith("PYTHON")}


def _import_once(
    python: Path,
    statement: str,
    env: Mapping[str, str],
    cwd: Path,
    flags: tuple[str, ...] = (),
) -> float:
    run = run_timed_process([str(python), *flags, "-c", statement], env=env, cwd=cwd)
    if run.returncode != 0:
        raise BenchError(f"`python -c {statement!r}` failed: {run.output.strip()[-500:]}")
    return run.seconds


def _import_profile(
    python: Path, statement: str, env: Mapping[str, str], cwd: Path
) -> dict[str, Any]:
    """`-X importtime`: the slowest imports (cumulative) and self time summed per package."""
    run = run_timed_process([str(python), "-X", "importtime", "-c", statement], env=env, cwd=cwd)
    slow: list[tuple[int, str, int]] = []
    by_package: dict[str, int] = {}
    for line in run.output.splitlines():
        if not line.startswith("import time:") or line.count("|") != 2:
            continue
        self_us, cumulative_us, name_field = line.removeprefix("import time:").split("|")
        if not self_us.strip().isdigit():
            continue  # the header line
        name = name_field.strip()
        package = name.split(".")[0]
        by_package[package] = by_package.get(package, 0) + int(self_us)
        # Nesting is shown by two more spaces per level after the one that follows "|".
        depth = (len(name_field) - len(name_field.lstrip(" ")) - 1) // 2
        if int(cumulative_us) >= _SLOW_IMPORT_US:
            slow.append((depth, name, int(cumulative_us)))
    slow.sort(key=lambda item: -item[2])
    packages = sorted(by_package.items(), key=lambda item: -item[1])
    return {
        "total_seconds": sum(by_package.values()) / 1e6,
        # Nested: a module's cumulative time includes the modules it imported.
        "slowest_imports": [
            {"depth": depth, "module": name, "cumulative_seconds": us / 1e6}
            for depth, name, us in slow[:_SHOWN]
        ],
        "self_seconds_by_package": {name: us / 1e6 for name, us in packages[:_SHOWN]},
    }
