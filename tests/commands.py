"""Running a program the way the tests that drive a real process do."""

from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path


def run_command(
    command: list[str],
    *,
    timeout: float,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `command` to its end, its output captured as text; the test reads the exit code."""
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def cfn_lint(template: Path) -> subprocess.CompletedProcess[str]:
    """cfn-lint on `template` (it has no `python -m` entry point: its script sits beside the
    interpreter); skips the test where the dev extra is not installed."""
    import sys
    from pathlib import Path

    import pytest

    program = Path(sys.executable).with_name("cfn-lint")
    if not program.is_file():
        pytest.skip(f"cfn-lint is not installed beside {sys.executable} (the dev extra has it)")
    return run_command([str(program), str(template)], cwd=template.parent, timeout=300)
