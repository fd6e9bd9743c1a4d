"""One snapshot of a target, for the use cases that only look (a census, an observation)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from reaper.core.planning import check_visibility
from reaper.pg import gateway

if TYPE_CHECKING:
    from reaper.core.snapshot import Snapshot
    from reaper.pg.conninfo import ConnInfo
    from reaper.pg.timeouts import Timeouts


def visible_snapshot(target: ConnInfo, timeouts: Timeouts) -> Snapshot:
    """Connect, read every session in one statement, and make sure the role saw them all.

    Raises:
        TargetUnreachableError: the database cannot be reached or refused the login.
        VisibilityError: the role cannot see other roles' sessions, so what it saw would lie.
        PassAbortedError: the database failed while the snapshot was read.
    """
    with gateway.connect(target, timeouts) as conn:
        snapshot = gateway.take_snapshot(conn)
    check_visibility(snapshot)
    return snapshot
