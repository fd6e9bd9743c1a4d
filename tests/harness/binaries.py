"""The PostgreSQL installations of this machine the tests and the bench use beside the demo's."""

from __future__ import annotations

import contextlib
import functools

from reaper.errors import LocalPostgresError
from reaper.local.binaries import DEBIAN_ROOT, PostgresBinaries, embedded_binaries


@functools.cache
def debian_binaries(major: int = 15) -> PostgresBinaries | None:
    """Return Debian's packaged PostgreSQL `major`, or None when it is not installed."""
    bindir = DEBIAN_ROOT / str(major) / "bin"
    if not (bindir / "postgres").is_file():
        return None
    return PostgresBinaries(bindir=bindir, label=f"Debian PostgreSQL {major}")


def available_binaries() -> list[PostgresBinaries]:
    """Return every usable installation: the embedded one first, then Debian's 15 if present."""
    found: list[PostgresBinaries] = []
    with contextlib.suppress(LocalPostgresError):
        found.append(embedded_binaries())
    debian = debian_binaries(15)
    if debian is not None:
        found.append(debian)
    return found
