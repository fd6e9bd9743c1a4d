"""Throwaway local PostgreSQL clusters for the demo, the tests and the benchmarks.

One job: start a disposable cluster on 127.0.0.1 and a free port with chosen settings (initdb,
postgresql.conf, a retry when another process takes the port first), and stop it again, leaving
nothing behind. Which binaries to run comes from `reaper.local.binaries`; which OS user runs
them when this process is root, from `reaper.local._server_user`.

The superuser password reaches initdb only through a file readable by the server's OS user
and is never printed, logged or put in an error message.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode

from reaper.errors import LocalPostgresError
from reaper.local._server_user import hand_over, run_program, server_user_for

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Mapping, Sequence
    from types import TracebackType

    from reaper.local._server_user import ServerUser
    from reaper.local.binaries import PostgresBinaries


_HOST = "127.0.0.1"

# A throwaway cluster trades durability for speed: nothing in it must survive an OS crash.
_DEFAULT_SETTINGS: dict[str, str | int] = {
    "max_connections": 100,
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    # Spelled out because --auth-host=scram-sha-256 only verifies SCRAM secrets.
    "password_encryption": "scram-sha-256",
}

# Settings the module manages itself; a caller overriding them would break start() or dsn().
_RESERVED_SETTINGS = frozenset({"listen_addresses", "port", "unix_socket_directories"})

_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")

# sun_path holds 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH = 107

_PORT_ATTEMPTS = 3
_START_TIMEOUT_SECONDS = 60
STOP_TIMEOUT_SECONDS = 30
_LOG_TAIL_LINES = 25


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago.

    Another process may take it before the caller binds it: a caller retries with a fresh one
    (`LocalPostgres.start()` does when the server log says so).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((_HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def _conf_value(value: str | int) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


class LocalPostgres:
    """A disposable PostgreSQL cluster on 127.0.0.1, usable as a context manager.

    `start()` runs initdb and starts the server on a free port; `stop()` stops it and deletes
    every file it made. Local (socket) connections are trusted; TCP connections need the
    superuser's password (SCRAM), which is random unless given.
    """

    def __init__(
        self,
        binaries: PostgresBinaries,
        *,
        settings: Mapping[str, str | int] | None = None,
        superuser: str = "postgres",
        password: str | None = None,
        base_dir: Path | None = None,
    ) -> None:
        """Describe a cluster; nothing happens until `start()`.

        Args:
            binaries: The PostgreSQL installation to run.
            settings: postgresql.conf settings laid over the defaults (max_connections=100,
                fsync, synchronous_commit and full_page_writes off).
            superuser: Name of the bootstrap superuser.
            password: The superuser's password; a random one when None.
            base_dir: Directory in which the cluster's own working directory is created;
                the system temporary directory when None. Only that working directory is
                removed by `stop()`.

        Raises:
            LocalPostgresError: A setting name is invalid or managed by this class.
        """
        merged = dict(_DEFAULT_SETTINGS)
        for name, value in (settings or {}).items():
            if not _SETTING_NAME.match(name):
                raise LocalPostgresError(f"invalid setting name {name!r}")
            if name in _RESERVED_SETTINGS:
                raise LocalPostgresError(f"setting {name!r} is managed by LocalPostgres")
            merged[name] = value
        self.binaries = binaries
        self.settings: Mapping[str, str | int] = merged
        self.host = _HOST
        self.superuser = superuser
        self.password = secrets.token_urlsafe(24) if password is None else password
        self._base_dir = base_dir
        self._port: int | None = None
        self._workdir: Path | None = None
        self._socket_dir: Path | None = None
        self._os_user: ServerUser | None = None

    def __repr__(self) -> str:
        # Deliberately without the password.
        return f"LocalPostgres({self.binaries.label!r}, host={self.host!r}, port={self._port})"

    @property
    def major(self) -> int:
        """The server's major version, e.g. 18."""
        return self.binaries.major

    @property
    def port(self) -> int:
        """The TCP port the server listens on.

        Raises:
            LocalPostgresError: The cluster has not been started.
        """
        if self._port is None:
            raise LocalPostgresError(f"{self.binaries.label} cluster has not been started")
        return self._port

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory (exists between `start()` and `stop()`)."""
        return self._require_workdir() / "data"

    @property
    def log_file(self) -> Path:
        """The server log (exists between `start()` and `stop()`; never holds the password)."""
        return self._require_workdir() / "server.log"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> LocalPostgres:
        """Create the cluster and start the server; return self once it accepts connections.

        Raises:
            LocalPostgresError: initdb or the server failed; the message carries the tail of
                their output. Everything created so far has been removed again.
        """
        if self._workdir is not None:
            raise LocalPostgresError(f"{self.binaries.label} cluster is already started")
        self._os_user = server_user_for(self.binaries)
        self._workdir = Path(tempfile.mkdtemp(prefix="idle-reaper-pg", dir=self._base_dir))
        atexit.register(self.stop)
        try:
            self._prepare_workdir()
            self._initdb()
            self._write_settings()
            self._start_on_free_port()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server and delete the cluster's files.

        Tries `pg_ctl stop -m fast`, then `-m immediate`, then SIGKILL. Never raises for a
        server that is already gone; safe to call twice, before `start()`, from atexit and
        from signal handlers (every step is idempotent).
        """
        workdir = self._workdir
        if workdir is None:
            return
        try:
            self._stop_server()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
            if self._socket_dir is not None:
                shutil.rmtree(self._socket_dir, ignore_errors=True)
                self._socket_dir = None
            self._workdir = None
            self._port = None
            atexit.unregister(self.stop)

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- connection strings ------------------------------------------------------------------

    def dsn(
        self,
        *,
        user: str | None = None,
        password: str | None = None,
        dbname: str = "postgres",
        **extra: str,
    ) -> str:
        """Return a libpq URI `postgresql://user:password@127.0.0.1:port/dbname?extra...`.

        With `user` None the superuser and, unless `password` is given, its password are used;
        for another user the URI carries only the `password` given (none when None). The
        password is URL-quoted.
        """
        params = self.conninfo(user=user, password=password, dbname=dbname)
        userinfo = quote(params["user"], safe="")
        if "password" in params:
            userinfo += ":" + quote(params["password"], safe="")
        uri = f"postgresql://{userinfo}@{self.host}:{self.port}/{quote(dbname, safe='')}"
        if extra:
            uri += "?" + urlencode(extra)
        return uri

    def conninfo(
        self,
        *,
        user: str | None = None,
        password: str | None = None,
        dbname: str = "postgres",
        **extra: str,
    ) -> dict[str, str]:
        """Return the same connection as `dsn()` as psycopg keyword arguments.

        Keys: host, port, user, dbname, password (left out when there is none) and `extra`.
        """
        if user is None:
            user = self.superuser
            if password is None:
                password = self.password
        params = {"host": self.host, "port": str(self.port), "user": user, "dbname": dbname}
        if password is not None:
            params["password"] = password
        params.update(extra)
        return params

    # -- internals ---------------------------------------------------------------------------

    def _require_workdir(self) -> Path:
        if self._workdir is None:
            raise LocalPostgresError(f"{self.binaries.label} cluster has not been started")
        return self._workdir

    def _chown_to_server_user(self, path: Path) -> None:
        if self._os_user is not None:
            self._os_user.give(path)

    def _prepare_workdir(self) -> None:
        workdir = self._require_workdir()
        workdir.chmod(0o700)
        if self._os_user is not None:
            hand_over(workdir, self._os_user, self.binaries)

    def _run(self, args: Sequence[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
        return run_program(args, user=self._os_user, cwd=self._require_workdir(), timeout=timeout)

    def _pg_ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self._run(
            [str(self.binaries.bindir / "pg_ctl"), "-D", str(self.data_dir), *args],
            timeout=_START_TIMEOUT_SECONDS + 30,
        )

    def _initdb(self) -> None:
        workdir = self._require_workdir()
        pwfile = workdir / "pwfile"
        # Created 0600 before the password is written, so no other user ever can read it.
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(self.password + "\n")
            self._chown_to_server_user(pwfile)
            args = [
                str(self.binaries.bindir / "initdb"),
                "-D",
                str(workdir / "data"),
                "-U",
                self.superuser,
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--no-locale",
                # Throwaway cluster: no need to wait for the disk.
                "--no-sync",
            ]
            if self.major >= 14:
                args.append("--no-instructions")
            result = self._run(args, timeout=120)
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise LocalPostgresError(
                f"initdb of {self.binaries.label} failed:\n{_tail(result.stdout)}"
            )

    def _write_settings(self) -> None:
        workdir = self._require_workdir()
        socket_dir = workdir / "data"
        if len(os.fsencode(socket_dir / ".s.PGSQL.65535")) > _MAX_SOCKET_PATH:
            # A deep base_dir would make the socket path too long for the kernel.
            self._socket_dir = Path(tempfile.mkdtemp(prefix="idle-reaper-sock", dir="/tmp"))
            self._chown_to_server_user(self._socket_dir)
            socket_dir = self._socket_dir
        lines = [
            "",
            "# Added by reaper.local.cluster for a throwaway cluster.",
            f"listen_addresses = {_conf_value(self.host)}",
            f"unix_socket_directories = {_conf_value(str(socket_dir))}",
        ]
        lines += [f"{name} = {_conf_value(value)}" for name, value in self.settings.items()]
        # Appended last so these win over initdb's own values; root may write the file.
        with (workdir / "data" / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n".join(lines) + "\n")

    def _start_server(self, port: int) -> subprocess.CompletedProcess[str]:
        return self._pg_ctl(
            "start",
            "-w",
            "-t",
            str(_START_TIMEOUT_SECONDS),
            "-l",
            str(self.log_file),
            "-o",
            f"-p {port}",
        )

    def _start_on_free_port(self) -> None:
        for _attempt in range(_PORT_ATTEMPTS):
            port = free_port()
            log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
            result = self._start_server(port)
            if result.returncode == 0:
                self._port = port
                return
            new_log = self._read_log(log_offset)
            if "could not bind" not in new_log:
                raise LocalPostgresError(self._start_failure_message(result.stdout, new_log))
            # Lost the port race to another process; a crashed postmaster may linger briefly.
            self._stop_server()
        raise LocalPostgresError(
            f"{self.binaries.label} found no free port in {_PORT_ATTEMPTS} attempts"
        )

    def _read_log(self, offset: int = 0) -> str:
        try:
            with self.log_file.open("r", encoding="utf-8", errors="replace") as log:
                log.seek(offset)
                return log.read()
        except OSError:
            return ""

    def _start_failure_message(self, pg_ctl_output: str, log_text: str) -> str:
        log_text = log_text or self._read_log()
        return (
            f"{self.binaries.label} did not start:\n{_tail(pg_ctl_output)}\n"
            f"--- server log (tail) ---\n{_tail(log_text)}"
        )

    def _postmaster_pid(self) -> int | None:
        try:
            first_line = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first_line)
        except (OSError, ValueError):
            return None

    def _server_running(self) -> bool:
        pid = self._postmaster_pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _stop_server(self) -> None:
        if self._workdir is None or not self._server_running():
            return
        for mode in ("fast", "immediate"):
            self._pg_ctl("stop", "-m", mode, "-w", "-t", str(STOP_TIMEOUT_SECONDS))
            if not self._server_running():
                return
        pid = self._postmaster_pid()
        if pid is not None:
            # Last resort; orphaned backends exit on their own once the postmaster is gone.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _tail(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
