"""PgBouncer in transaction mode in front of a throwaway server, for the churn benchmark.

PgBouncer refuses to run as root: as root it runs as `nobody`, in a private directory of its
own. Its configuration holds the applications' password, so the directory and file are that
user's alone (0700, 0600) and removed on the way out.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

_HOST = "127.0.0.1"
_START_TIMEOUT_SECONDS = 15.0
_UNPRIVILEGED_USER = "nobody"


def pgbouncer_binary() -> str | None:
    """The pgbouncer program, or None when it is not installed."""
    # Debian installs it in /usr/sbin, which an ordinary user's PATH may leave out.
    return shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")


@contextlib.contextmanager
def pgbouncer(
    *, server_port: int, user: str, password: str, pool_size: int
) -> Iterator[dict[str, str]]:
    """Run PgBouncer (transaction pooling, at most `pool_size` server connections) for the
    `postgres` database of the server on `server_port`, logging in as `user`; yield the
    psycopg keyword arguments that reach it.

    Raises:
        RuntimeError: PgBouncer is not installed or did not start.
    """
    binary = pgbouncer_binary()
    if binary is None:
        raise RuntimeError("pgbouncer is not installed (apt-get install -y pgbouncer)")
    port = _free_port()
    workdir = Path(tempfile.mkdtemp(prefix="churn-pgbouncer-"))
    owner = pwd.getpwnam(_UNPRIVILEGED_USER) if os.geteuid() == 0 else None
    config = workdir / "pgbouncer.ini"
    config.write_text(
        "\n".join(
            (
                "[databases]",
                f"postgres = host={_HOST} port={server_port} dbname=postgres "
                f"user={user} password={password}",
                "[pgbouncer]",
                f"listen_addr = {_HOST}",
                f"listen_port = {port}",
                "unix_socket_dir =",
                # Clients are the benchmark's own containers: the server checks the password.
                "auth_type = any",
                "pool_mode = transaction",
                f"default_pool_size = {pool_size}",
                f"max_db_connections = {pool_size}",
                "max_client_conn = 2000",
                f"logfile = {workdir / 'pgbouncer.log'}",
                "",
            )
        ),
        encoding="utf-8",
    )
    config.chmod(0o600)
    if owner is not None:
        for path in (workdir, config):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    process = subprocess.Popen(
        [binary, str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        user=None if owner is None else owner.pw_uid,
        group=None if owner is None else owner.pw_gid,
        extra_groups=None if owner is None else [],
    )
    try:
        _wait_for(port, process, workdir)
        yield {"host": _HOST, "port": str(port), "dbname": "postgres", "user": user}
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_for(port: int, process: subprocess.Popen[bytes], workdir: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        with contextlib.suppress(OSError), socket.create_connection((_HOST, port), timeout=1):
            return
        time.sleep(0.05)
    log = workdir / "pgbouncer.log"
    tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
    raise RuntimeError(f"pgbouncer did not start on port {port}: {tail}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((_HOST, 0))
        port: int = probe.getsockname()[1]
        return port
