"""The one path of a census (`reaper report`): connect -> snapshot -> visibility -> census.

The CLI's `report` command and the demo both call `take_report`; `reaper budget` and
`reaper observe` read the same snapshot (`read_snapshot`). None ever terminates anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from reaper.core.census import take_census
from reaper.core.planning import check_visibility
from reaper.pg import gateway
from reaper.pg.timeouts import DEFAULT_TIMEOUTS

if TYPE_CHECKING:
    from reaper.core.census import Census
    from reaper.core.snapshot import Snapshot
    from reaper.pg.conninfo import ConnInfo
    from reaper.pg.timeouts import Timeouts


@dataclass(frozen=True, slots=True)
class Report:
    """The census of one target, and the target's printable name."""

    target: str
    census: Census

    def to_dict(self) -> dict[str, Any]:
        """The document of `reaper report --json`: the target, then the census."""
        return {"target": self.target, **self.census.to_dict()}


def take_report(target: ConnInfo, *, timeouts: Timeouts = DEFAULT_TIMEOUTS) -> Report:
    """Who holds the target's connections, grouped by application, user, database and state.

    Raises:
        TargetUnreachableError, VisibilityError, PassAbortedError: see `read_snapshot`.
    """
    return Report(target.name, take_census(read_snapshot(target, timeouts=timeouts)))


def read_snapshot(target: ConnInfo, *, timeouts: Timeouts = DEFAULT_TIMEOUTS) -> Snapshot:
    """Every session of the target and its connection limits, seen by a role that sees all.

    Raises:
        TargetUnreachableError: the database cannot be reached or refused the login.
        VisibilityError: the role cannot see other roles' sessions, so any count would lie.
        PassAbortedError: the database failed while the snapshot was read.
    """
    with gateway.connect(target, timeouts) as conn:
        snapshot = gateway.take_snapshot(conn)
    check_visibility(snapshot)
    return snapshot
