"""A throwaway cluster the fault tests can crash and bring back."""

from __future__ import annotations

from reaper.errors import LocalPostgresError
from reaper.local.cluster import STOP_TIMEOUT_SECONDS, LocalPostgres


class CrashablePostgres(LocalPostgres):
    """A `LocalPostgres` that can be killed like a crash and started again on its port."""

    def shutdown_now(self) -> None:
        """Kill the server like a crash (`pg_ctl stop -m immediate`) but keep its data.

        As after a real crash, commits of the last moments may be lost: the default
        synchronous_commit=off leaves them in WAL buffers that an immediate stop discards.

        Raises:
            LocalPostgresError: The cluster was not started or the server did not stop.
        """
        self._require_workdir()
        result = self._pg_ctl("stop", "-m", "immediate", "-w", "-t", str(STOP_TIMEOUT_SECONDS))
        if result.returncode != 0 and self._server_running():
            raise LocalPostgresError(
                f"{self.binaries.label} on port {self.port} did not shut down:\n{result.stdout}"
            )

    def restart(self) -> None:
        """Start the server again on the same port, e.g. after `shutdown_now()`.

        A server that is still running is first stopped with `-m fast`.

        Raises:
            LocalPostgresError: The cluster was not started or the server did not come back.
        """
        self._require_workdir()
        if self._server_running():
            self._pg_ctl("stop", "-m", "fast", "-w", "-t", str(STOP_TIMEOUT_SECONDS))
        result = self._start_server(self.port)
        if result.returncode != 0:
            raise LocalPostgresError(self._start_failure_message(result.stdout, ""))
