"""What `pip wheel .` ships: the product and the demo's throwaway server, no test harness."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import pytest

from tests.commands import run_command

REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_wheel_holds_the_demo_but_no_test_harness(tmp_path: Path) -> None:
    done = run_command(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path),
            str(REPOSITORY),
        ],
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("idle_reaper-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    modules = {name for name in names if name.endswith(".py")}

    # the demo's cluster, sessions and roles ship: `reaper demo` needs them
    assert {"reaper/local/cluster.py", "reaper/local/binaries.py", "reaper/cli/demo.py"} <= modules
    # the npm fetcher, Debian's servers and the crashable cluster do not; nor do the tests
    assert not [name for name in names if name.startswith(("tests/", "bench/"))]
    assert not [name for name in modules if name.endswith("majors.py")]
    for test_only in ("available_binaries", "debian_binaries", "shutdown_now", "npm pack"):
        shipped = [name for name in modules if test_only in wheel_text(wheel, name)]
        assert shipped == [], f"{test_only} is in {shipped}"


def wheel_text(wheel: Path, name: str) -> str:
    return zipfile.ZipFile(wheel).read(name).decode()
