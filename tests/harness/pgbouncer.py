"""A throwaway PgBouncer in transaction mode in front of a test server, for the pooler tests.

Runs the `pgbouncer` of this machine (Debian's package: `apt-get install pgbouncer`); the tests
skip, saying so, where there is none. PgBouncer refuses to run as root, so root starts it with
`-u nobody` and hands it its working directory. It listens on 127.0.0.1 only, logs to a file in
that directory, and is stopped, and the directory removed, on the way out.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
from psycopg.conninfo import make_conninfo

from reaper.local.binaries import CHILD_ENV
from reaper.local.cluster import free_port

if TYPE_CHECKING:
    from collections.abc import Mapping

HOST = "127.0.0.1"
# Debian installs it in /usr/sbin, which is not on every user's PATH.
_SEARCH_PATH = f"{os.environ.get('PATH', '')}:/usr/sbin"
_USER_AS_ROOT = "nobody"
_CONSOLE_USER = "pooler_console"
_START_TIMEOUT_SECONDS = 30
_STOP_TIMEOUT_SECONDS = 10
_PORT_ATTEMPTS = 3
_LOG_TAIL_LINES = 20


def find_pgbouncer() -> Path | None:
    """The `pgbouncer` program of this machine, or None when it is not installed."""
    found = shutil.which("pgbouncer", path=_SEARCH_PATH)
    return Path(found) if found else None


class PgBouncer:
    """PgBouncer in transaction mode on 127.0.0.1 in front of one server: `start()`, `stop()`.

    Each login in `logins` may connect through it (SCRAM) and is the login it uses towards the
    server: it keeps their passwords in its auth file, which only its OS user can read.
    """

    def __init__(
        self,
        program: Path,
        *,
        server_host: str,
        server_port: int,
        logins: Mapping[str, str],
        dbname: str = "postgres",
        pool_size: int = 1,
    ) -> None:
        """Describe a pooler; nothing runs until `start()`.

        Args:
            program: the pgbouncer executable.
            server_host, server_port: the PostgreSQL server it pools connections to.
            logins: user name -> password of each login it accepts and uses.
            dbname: the one database it serves, under the same name.
            pool_size: server connections per user and database (default_pool_size).
        """
        self.program = program
        self.server_host = server_host
        self.server_port = server_port
        self.logins = dict(logins)
        self.dbname = dbname
        self.pool_size = pool_size
        self._console_password = secrets.token_urlsafe(16)
        self._port: int | None = None
        self._workdir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"PgBouncer({str(self.program)!r}, port={self._port})"

    @property
    def port(self) -> int:
        """The port it listens on (once started)."""
        if self._port is None:
            raise RuntimeError("PgBouncer has not been started")
        return self._port

    def dsn(self, user: str, password: str) -> str:
        """A conninfo string for `user` through the pooler."""
        return make_conninfo(
            host=HOST, port=self.port, user=user, password=password, dbname=self.dbname
        )

    def server_pids(self) -> set[int]:
        """The backend pids of the server connections the pooler holds now (`SHOW SERVERS`)."""
        console = make_conninfo(
            host=HOST,
            port=self.port,
            user=_CONSOLE_USER,
            password=self._console_password,
            dbname="pgbouncer",
        )
        # The admin console speaks only the simple query protocol, which ClientCursor uses.
        with psycopg.connect(console, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
            cursor = conn.execute("SHOW SERVERS")
            columns = [column.name for column in cursor.description or ()]
            return {row[columns.index("remote_pid")] for row in cursor.fetchall()}

    def start(self) -> PgBouncer:
        """Write its configuration and start it; return once it accepts connections.

        Raises:
            RuntimeError: it exited or did not listen in time; the message has its log's tail.
        """
        self._workdir = Path(tempfile.mkdtemp(prefix="idle-reaper-pgbouncer"))
        try:
            self._write_auth_file()
            for _attempt in range(_PORT_ATTEMPTS):
                self._port = free_port()
                self._write_config()
                if self._started():
                    return self
                if "Address already in use" not in self._log_tail():
                    raise RuntimeError(f"pgbouncer did not start:\n{self._log_tail()}")
            raise RuntimeError(f"pgbouncer found no free port in {_PORT_ATTEMPTS} attempts")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL) and remove its files; safe to call twice."""
        self._stop_process()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        self._port = None

    # -- internals ---------------------------------------------------------------------------

    def _path(self, name: str) -> Path:
        if self._workdir is None:
            raise RuntimeError("PgBouncer has not been started")
        return self._workdir / name

    def _write_auth_file(self) -> None:
        logins = {**self.logins, _CONSOLE_USER: self._console_password}
        # Created 0600 before a password is written into it.
        fd = os.open(self._path("userlist.txt"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            for user, password in logins.items():
                handle.write(f"{_quoted(user)} {_quoted(password)}\n")

    def _write_config(self) -> None:
        lines = [
            "[databases]",
            f"{self.dbname} = host={self.server_host} port={self.server_port} dbname={self.dbname}",
            "[pgbouncer]",
            f"listen_addr = {HOST}",
            f"listen_port = {self.port}",
            # TCP only: no socket file to place, and the tests connect to 127.0.0.1 anyway.
            "unix_socket_dir =",
            "auth_type = scram-sha-256",
            f"auth_file = {self._path('userlist.txt')}",
            "pool_mode = transaction",
            f"default_pool_size = {self.pool_size}",
            f"admin_users = {_CONSOLE_USER}",
            # Logged to stderr, which goes to pgbouncer.log; no pidfile: this process owns it.
            "logfile =",
            "pidfile =",
        ]
        self._path("pgbouncer.ini").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def _command(self) -> list[str]:
        command = [str(self.program), str(self._path("pgbouncer.ini"))]
        if os.geteuid() != 0:
            return command
        user = pwd.getpwnam(_USER_AS_ROOT)
        for name in ("", "userlist.txt", "pgbouncer.ini"):
            os.chown(self._path(name), user.pw_uid, user.pw_gid)
        return [command[0], "-u", _USER_AS_ROOT, command[1]]

    def _started(self) -> bool:
        """Start the process; True once it listens, False if it exits first."""
        with self._path("pgbouncer.log").open("ab") as log:
            self._process = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._path(""),
                env=CHILD_ENV,
            )
        deadline = time.monotonic() + _START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
            except OSError:
                time.sleep(0.05)
                continue
            return True
        self._stop_process()
        raise RuntimeError(
            f"pgbouncer did not listen within {_START_TIMEOUT_SECONDS} s:\n{self._log_tail()}"
        )

    def _stop_process(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(_STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _log_tail(self) -> str:
        try:
            text = self._path("pgbouncer.log").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-_LOG_TAIL_LINES:])


def _quoted(value: str) -> str:
    # The auth file's syntax: a double-quoted string, a double quote inside it doubled.
    return '"' + value.replace('"', '""') + '"'
