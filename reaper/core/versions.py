"""The PostgreSQL majors the reaper supports, and the version facts its decisions depend on.

One source for the supported range: the doctor's version check, the test suite's servers
(`make test-matrix`) and the README name these.
"""

from __future__ import annotations

# The majors the project is tested on, oldest to newest.
SUPPORTED_MAJORS: tuple[int, ...] = (13, 14, 15, 16, 17, 18)
OLDEST_MAJOR = SUPPORTED_MAJORS[0]
NEWEST_MAJOR = SUPPORTED_MAJORS[-1]
# reserved_connections and the pg_use_reserved_connections role exist from this major.
RESERVED_CONNECTIONS_MAJOR = 16


def major_of(server_version_num: int) -> int:
    """The major of a server_version_num (180001 -> 18)."""
    return server_version_num // 10_000
